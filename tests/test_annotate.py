"""`annotate`: a file of texts through a pipeline with giellm components into
JSONL, a DocBin or an HTML page (a scripted backend stands in for the model)."""
import json

import pytest
import spacy
from spacy.tokens import DocBin
from typer.testing import CliRunner

import spacy_giellm.component  # noqa: F401  (registers the factory)
from annotated_docs import CAR, HOTEL, SCRIPT, build_pipeline, check_markup
from spacy_giellm.annotate import annotate_file, doc_problems
from spacy_giellm.cli import app
from spacy_giellm.corpora.report import CorpusError
from spacy_giellm.docs import SENTIMENT_GROUP, install_extensions

BROKEN = "壊れた出力の文。"


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """A saved pipeline; its backend gives BROKEN a malformed relation."""
    path = tmp_path_factory.mktemp("pipeline") / "pipeline"
    build_pipeline({"giellm_relations": {BROKEN: "<IT>Relation Extraction:壊れた;だけ:"}}).to_disk(path)
    return path


@pytest.fixture()
def texts(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text(f"{CAR}\n\n{HOTEL}\n{SCRIPT}\n{BROKEN}\n", encoding="utf8")
    return path


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf8").splitlines()]


def test_a_text_file_becomes_jsonl_rows_with_offsets_and_problems(pipeline_dir, texts, tmp_path):
    out = tmp_path / "out.jsonl"
    summary = annotate_file(pipeline_dir, texts, out, batch_size=2)
    assert summary["read"] == summary["annotated"] == 4 and summary["skipped"] == 0
    rows = _rows(out)
    assert [r["line"] for r in rows] == [1, 3, 4, 5]  # the blank line 2 is not a text
    car = rows[0]
    assert car["text"] == CAR and car["cats"]["技術"] == 1.0
    assert car["entities"] == [{"label": "法人名", "text": "トヨタ", "start": 0, "end": 3},
                               {"label": "法人名", "text": "日産", "start": 4, "end": 6}]
    assert car["relations"] == [{"label": "提携", "args": ["トヨタ", "日産"], "offsets": [[0, 3], [4, 6]]}]
    assert car["events"] == [{"label": "提携", "args": ["トヨタ", "電池の共同開発", "ホンダ"],
                              "offsets": [[0, 3], [7, 14], None]}]
    # each giellm pipe's own problems, not only the last pipe's
    assert car["problems"] == {"giellm_events": {"not_found": ["ホンダ"]}}
    assert rows[1]["sentiments"] == [{"label": "positive", "text": "広く", "start": 3, "end": 5},
                                     {"label": "positive", "text": "丁寧", "start": 14, "end": 16}]
    assert rows[2]["text"] == SCRIPT
    assert rows[3]["relations"] == [] and list(rows[3]["problems"]) == ["giellm_relations"]
    assert rows[3]["problems"]["giellm_relations"]["problems"]
    assert summary["docs_with_problems"] == 2


def test_the_docbin_keeps_the_extensions(pipeline_dir, texts, tmp_path):
    out = tmp_path / "out.spacy"
    annotate_file(pipeline_dir, texts, out)
    install_extensions()
    docs = list(DocBin().from_disk(out).get_docs(spacy.blank("ja").vocab))
    assert [d.text for d in docs] == [CAR, HOTEL, SCRIPT, BROKEN]
    car, hotel = docs[0], docs[1]
    assert [(str(a), type(a).__name__) for a in car._.events[0].args] == [
        ("トヨタ", "Span"), ("電池の共同開発", "Span"), ("ホンダ", "str")]
    assert [(r.label, str(r.head), str(r.tail)) for r in car._.relations] == [("提携", "トヨタ", "日産")]
    assert [(s.text, s.label_) for s in hotel.spans[SENTIMENT_GROUP]] == [("広く", "positive"), ("丁寧", "positive")]
    assert car.cats["技術"] == 1.0 and [e.text for e in car.ents] == ["トヨタ", "日産"]
    assert doc_problems(car) == {"giellm_events": {"not_found": ["ホンダ"]}}


def test_the_html_page_shows_every_text_escaped(pipeline_dir, texts, tmp_path):
    page = tmp_path / "page.html"
    annotate_file(pipeline_dir, texts, html=page)
    markup = page.read_text(encoding="utf8")
    check = check_markup(markup)
    assert "script" not in check.tags
    text = "".join(check.text)
    assert all(t in text for t in (CAR, HOTEL, SCRIPT, BROKEN))
    assert markup.count('<section class="doc">') == 4 and markup.count("<svg") == 3  # CAR's relation and event, SCRIPT's relation
    assert "giellm_events: not found: ホンダ" in text


def _records(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join([
        json.dumps({"text": CAR, "id": "a"}, ensure_ascii=False),
        "{not json",
        json.dumps({"id": "no text"}),
        json.dumps({"text": HOTEL}, ensure_ascii=False),
    ]) + "\n", encoding="utf8")
    return path


def test_a_bad_line_stops_the_run_by_its_line_number_and_writes_nothing(pipeline_dir, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n", encoding="utf8")
    with pytest.raises(CorpusError, match=r"records.jsonl:2: invalid JSON"):
        annotate_file(pipeline_dir, _records(tmp_path), out)
    assert out.read_text(encoding="utf8") == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "records.jsonl"]


def test_bad_lines_skipped_are_counted_and_named(pipeline_dir, tmp_path):
    out = tmp_path / "out.jsonl"
    summary = annotate_file(pipeline_dir, _records(tmp_path), out, skip_errors=True)
    assert summary["read"] == 4 and summary["annotated"] == 2 and summary["skipped"] == 2
    assert [r.split(":")[1] for r in summary["skipped_lines"]] == ["2", "3"]
    assert 'needs a non-empty "text"' in summary["skipped_lines"][1]
    assert [(r["line"], r["text"]) for r in _rows(out)] == [(1, CAR), (4, HOTEL)]


def test_a_text_file_line_that_is_not_utf8_is_named(pipeline_dir, tmp_path):
    path = tmp_path / "texts.txt"
    path.write_bytes(CAR.encode() + b"\n\xff\xfe\n" + HOTEL.encode() + b"\n")
    with pytest.raises(CorpusError, match=r"texts.txt:2: not UTF-8"):
        annotate_file(pipeline_dir, path, tmp_path / "out.jsonl")
    summary = annotate_file(pipeline_dir, path, tmp_path / "out.jsonl", skip_errors=True)
    assert summary["skipped"] == 1 and summary["annotated"] == 2


@spacy.Language.component("test_fails_on_hotel")
def fail_on_hotel(doc):
    if doc.text == HOTEL:
        raise RuntimeError("model died")
    return doc


def test_a_failure_midway_leaves_the_outputs_as_they_were(texts, tmp_path):
    nlp = build_pipeline()
    nlp.add_pipe("test_fails_on_hotel")
    out, page = tmp_path / "out.jsonl", tmp_path / "page.html"
    with pytest.raises(RuntimeError, match="model died"):
        annotate_file(nlp, texts, out, html=page, batch_size=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.txt"]


def test_progress_bar_on_request_and_off_when_not_a_terminal(pipeline_dir, texts, tmp_path, capsys):
    annotate_file(pipeline_dir, texts, tmp_path / "b.jsonl", progress=True)
    err = capsys.readouterr().err
    assert "annotate: 100%" in err and "4/4" in err
    annotate_file(pipeline_dir, texts, tmp_path / "c.jsonl")  # stderr is not a terminal here
    assert "annotate:" not in capsys.readouterr().err


def test_n_process_gives_the_same_rows(pipeline_dir, texts, tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    annotate_file(pipeline_dir, texts, one)
    annotate_file(pipeline_dir, texts, two, n_process=2, batch_size=1)
    assert _rows(one) == _rows(two)


def test_outputs_are_checked_before_the_pipeline_loads(texts, tmp_path):
    missing = tmp_path / "no-pipeline"
    with pytest.raises(ValueError, match="must end in one of .jsonl, .spacy"):
        annotate_file(missing, texts, tmp_path / "out.csv")
    with pytest.raises(ValueError, match="give an output file"):
        annotate_file(missing, texts)


def test_cli_writes_jsonl_and_html_and_reports_skips(pipeline_dir, tmp_path):
    out, page = tmp_path / "out.jsonl", tmp_path / "page.html"
    args = ["annotate", str(pipeline_dir), "--input", str(_records(tmp_path)), "--output", str(out),
            "--html", str(page), "--batch-size", "2", "--n-process", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "records.jsonl:2: invalid JSON" in result.output and not out.exists()
    result = CliRunner().invoke(app, args + ["--on-error", "skip"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["annotated"] == 2 and summary["skipped"] == 2
    assert len(_rows(out)) == 2 and page.exists()


def test_cli_prints_texts_given_as_arguments(pipeline_dir):
    result = CliRunner().invoke(app, ["annotate", str(pipeline_dir), CAR, HOTEL])
    assert result.exit_code == 0, result.output
    assert CAR in result.stdout and "cats:" in result.stdout
    assert '  relations: [["提携", ["トヨタ", "日産"]]]' in result.stdout
    assert '  sentiments: [["広く", "positive"], ["丁寧", "positive"]]' in result.stdout


@pytest.mark.slow
def test_a_gguf_pipeline_annotates_a_file_through_llama_cpp(tiny_gguf, tmp_path):
    """The real GGUF backend (a tiny random model: its outputs are noise,
    which the rows must report as problems, not lose)."""
    nlp = spacy.blank("ja")
    nlp.add_pipe("giellm", config={"task": "scnm", "backend": {
        "@giellm_backends": "giellm.LlamaCpp.v1", "model_path": str(tiny_gguf), "max_new_tokens": 12,
        "n_threads": 1}})
    nlp.to_disk(tmp_path / "pipeline")
    texts = tmp_path / "texts.txt"
    texts.write_text(f"{CAR}\n{SCRIPT}\n", encoding="utf8")
    out, page = tmp_path / "out.jsonl", tmp_path / "page.html"
    summary = annotate_file(tmp_path / "pipeline", texts, out, html=page, batch_size=2)
    rows = _rows(out)
    assert summary["annotated"] == 2 and [r["text"] for r in rows] == [CAR, SCRIPT]
    assert all(set(r["cats"]) == {"社会", "文芸", "学問", "技術", "自然"} for r in rows)
    # whatever the noise held, each row says what was dropped, per pipe
    for row in rows:
        assert set(row["problems"]) <= {"giellm"}
    assert summary["docs_with_problems"] == sum(bool(r["problems"]) for r in rows)
    check = check_markup(page.read_text(encoding="utf8"))
    assert "script" not in check.tags and SCRIPT in "".join(check.text)
