"""`python -m spacy_giellm convert / evaluate` through typer's CliRunner."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spacy_giellm.cli import app

ASSETS = Path(__file__).parent.parent / "assets"
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def ner_jsonl(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "ner.jsonl"
    result = run("convert", "stockmark-ner", ASSETS / "stockmark-ner-sample.json", out)
    assert result.exit_code == 0, result.output
    assert "600 records in = 600 out + 0 skipped" in result.output
    return out


def test_convert_each_asset(tmp_path, ner_jsonl):
    assert len(ner_jsonl.read_text(encoding="utf8").splitlines()) == 600
    result = run("convert", "jrte-pn", ASSETS / "sentiment-sample.tsv", tmp_path / "pn.jsonl", "--split", "dev")
    assert result.exit_code == 0, result.output
    assert "180 records in = 12 out + 0 skipped + 168 filtered" in result.output
    result = run("convert", "pairs", ASSETS / "tcree-sample.jsonl", tmp_path / "tcree.spacy", "--task", "tcree")
    assert result.exit_code == 0, result.output
    assert "30 records in = 30 out + 0 skipped" in result.output
    result = run("convert", "docbin", tmp_path / "tcree.spacy", tmp_path / "tcree.jsonl")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "tcree.jsonl").read_text(encoding="utf8").splitlines()[0])
    assert record["output"] == "<IT>Relation Extraction:トヨタ;提携;日産:"


def test_convert_bad_input_exits_cleanly(tmp_path):
    bad = tmp_path / "pn.tsv"
    bad.write_text('a\t1\tok\t{"1": 3}\ttrain\nb\t7\tbad\t{}\ttrain\n', encoding="utf8")
    result = run("convert", "jrte-pn", bad, tmp_path / "out.jsonl")
    assert result.exit_code == 1
    assert f"error: {bad}:2: label must be 1, 0 or -1" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out.jsonl").exists()
    result = run("convert", "jrte-pn", bad, tmp_path / "out.jsonl", "--skip-errors")
    assert result.exit_code == 0 and "2 records in = 1 out + 1 skipped" in result.output
    for args in (("nope", bad), ("jrte-pn", tmp_path / "missing.tsv"), ("jrte-pn", bad, "--input-col", "x")):
        result = run("convert", args[0], args[1], tmp_path / "o.jsonl", *args[2:])
        assert result.exit_code == 1 and result.output.startswith("error: "), result.output


def test_evaluate_gold_against_itself(ner_jsonl):
    result = run("evaluate", ner_jsonl, ner_jsonl, "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert scores["wl_acc"] == scores["all_acc"] == scores["wl_f"] == 1.0
    result = run("evaluate", ner_jsonl, ner_jsonl)
    assert "100.00" in result.output and "TL" in result.output


def test_evaluate_raw_outputs(tmp_path):
    gold = tmp_path / "gold.jsonl"
    run("convert", "jrte-pn", ASSETS / "sentiment-sample.tsv", gold)
    records = [json.loads(line) for line in gold.read_text(encoding="utf8").splitlines()]
    pred = tmp_path / "pred.jsonl"
    lines = [json.dumps(r["output"]) for r in records]
    lines[0] = json.dumps({"output": "<negative>Sentiment Classification", "text": records[0]["text"]})
    lines[1] = json.dumps("garbage")
    pred.write_text("\n".join(lines) + "\n", encoding="utf8")
    result = run("evaluate", gold, pred, "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert scores["tl_acc"] == pytest.approx((len(records) - 2) / len(records))
    assert scores["counts"]["pred_parse_problems"] == 1


def test_evaluate_mismatch_names_the_line(tmp_path, ner_jsonl):
    lines = ner_jsonl.read_text(encoding="utf8").splitlines()
    record = json.loads(lines[2])
    record["text"] = "別の文"
    pred = tmp_path / "pred.jsonl"
    pred.write_text("\n".join(lines[:2] + [json.dumps(record, ensure_ascii=False)] + lines[3:]) + "\n", encoding="utf8")
    result = run("evaluate", ner_jsonl, pred)
    assert result.exit_code == 1 and f"error: {pred}:3: text differs" in result.output
    pred.write_text("\n".join(lines[:10]) + "\n", encoding="utf8")
    result = run("evaluate", ner_jsonl, pred)
    assert result.exit_code == 1 and "has 600 records but" in result.output


def test_python_dash_m(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "spacy_giellm", "convert", "jrte-pn", str(tmp_path / "none.tsv"), str(tmp_path / "o.jsonl")],
        capture_output=True, text=True,
    )
    assert result.returncode == 1 and "error: no such file" in result.stderr and "Traceback" not in result.stderr
