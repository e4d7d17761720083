"""The bench runs and reports every figure. Timings are not checked against
values (they depend on the machine), but the figures derived from the same
timings must agree with each other, and the counts must be the inputs'."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from spacy_giellm.bench import FIELDS, BenchConfig, format_table, load_texts, run_bench
from spacy_giellm.bench.measure import quality, shared_tokens
from spacy_giellm.tasks import get_task

pytestmark = pytest.mark.slow


def test_load_texts(tmp_path):
    records = load_texts(None, 5)
    assert len(records) == 5 and all(r["text"] for r in records)
    assert "entities" in records[0]
    txt = tmp_path / "t.txt"
    txt.write_text("一つ目\n\n二つ目\n", encoding="utf-8")
    assert [r["text"] for r in load_texts(str(txt), 3)] == ["一つ目", "二つ目", "一つ目"]
    with pytest.raises(FileNotFoundError):
        load_texts(str(tmp_path / "none.json"))


def test_shared_tokens():
    assert shared_tokens([[1, 2, 3], [1, 2, 4], [5]]) == pytest.approx((2 + 2 + 0) / 3)
    # each list's longest prefix shared with any other, whatever the order
    assert shared_tokens([[1, 5], [1, 2, 3, 4], [1, 2, 9]]) == pytest.approx((1 + 2 + 2) / 3)
    assert shared_tokens([[1, 2], [1, 2]]) == 2.0
    assert shared_tokens([[1]]) == 0.0 and shared_tokens([]) == 0.0


def test_quality_counts_malformed_outputs_label_agreement_and_entity_f1():
    task = get_task("scnm")
    records = [{"text": "東京に行く", "entities": [["地名", "東京"]]},
               {"text": "大阪の会社", "entities": [["地名", "大阪"]]},
               {"text": "日本", "entities": []}]
    outputs = ["<社会>Named Entity Recognition:地名;東京",
               "<学問>Named Entity Recognition:地名;京都",  # a span not in the text: malformed
               "<自然>Named Entity Recognition"]
    scores = [{"<社会>": 0.9, "<学問>": 0.1}, {"<社会>": 0.6, "<学問>": 0.4}, None]
    got = quality(task, records, outputs, scores)
    assert got["malformed_rate"] == pytest.approx(1 / 3)
    assert got["label_argmax_agreement"] == pytest.approx(1 / 2)  # of the 2 with scores, 1 agrees
    assert got["entity_f1"] == pytest.approx(2 * 1 / (2 + 2))  # 1 right of 2 predicted, 2 gold
    no_gold = quality(task, [{"text": r["text"]} for r in records], outputs, None)
    assert no_gold["entity_f1"] is None and no_gold["label_argmax_agreement"] is None


def test_bench_reports_all_fields(tiny_model_dir, tiny_gguf):
    cfg = BenchConfig(model=str(tiny_model_dir), gguf=str(tiny_gguf), n=4, batch_size=4, max_new_tokens=4, repeat=1)
    results = run_bench(cfg)
    assert set(results["backends"]) == {"hf", "gguf"}
    # llama.cpp's default n_parallel (32) within the component's batches of 4:
    # 4 decode together, and that is what is reported
    assert results["backends"]["gguf"]["parallel"] == 4
    assert results["backends"]["hf"]["parallel"] == 4  # the HF batch: the component's
    assert {f["batch_size"] for f in results["backends"].values()} == {4}
    assert all(f["docs_per_s_parallel_8"] is None for f in results["backends"].values())  # not 8 at a time
    texts = load_texts(None, 4)
    for figures in results["backends"].values():
        # the counts are the inputs'
        assert figures["docs"] == 4 and figures["threads"] == cfg.threads
        assert figures["chars_per_doc"] == pytest.approx(sum(len(r["text"]) for r in texts) / 4)
        assert 0 < figures["new_tokens_per_doc"] <= cfg.max_new_tokens
        assert 0 <= figures["shared_prefix_tokens"] <= figures["prompt_tokens_mean"]
        # ratios are the ratios of the rates they come from
        assert figures["component_efficiency"] == pytest.approx(
            figures["component_docs_per_s"] / figures["backend_docs_per_s"])
        assert figures["batch_speedup"] == pytest.approx(
            figures["generate_docs_per_s"] / figures["one_at_a_time_docs_per_s"])
        assert figures["constrained_speed_ratio"] == pytest.approx(
            figures["constrained_docs_per_s"] / figures["generate_docs_per_s"])
        for key in ("compute", "bandwidth"):
            assert figures[f"share_of_{key}_limit"] == pytest.approx(
                figures["component_docs_per_s"] / figures[f"{key}_limit_docs_per_s"])
        for key in ("malformed_rate_unconstrained", "malformed_rate_constrained", "label_scores_share"):
            assert 0 <= figures[key] <= 1, key
    for kind, figures in results["backends"].items():
        for key, _ in FIELDS:
            assert key in figures, (kind, key)
        for key in ("component_docs_per_s", "backend_docs_per_s", "outside_model_ms_per_doc", "peak_rss_mb",
                    "batch_speedup", "constrained_speed_ratio", "prompt_tokens_per_s",
                    "malformed_rate_unconstrained", "malformed_rate_constrained"):
            assert isinstance(figures[key], float) and figures[key] >= 0, (kind, key)
        assert figures["malformed_rate_constrained"] <= 1.0
        for key in ("docs_per_s_parallel_1", "docs_per_s_parallel_4", "matmul_gflops", "memory_gb_per_s",
                    "compute_limit_docs_per_s", "bandwidth_limit_docs_per_s", "new_tokens_per_doc"):
            assert isinstance(figures[key], float) and figures[key] > 0, (kind, key)
    gguf = results["backends"]["gguf"]
    assert gguf["kernel_ms_per_prompt_token"] > 0 and gguf["kernel_ms_per_generated_token"] > 0
    assert gguf["kernel_limit_docs_per_s"] > 0
    assert gguf["share_of_kernel_limit"] == pytest.approx(gguf["component_docs_per_s"] / gguf["kernel_limit_docs_per_s"])
    assert results["backends"]["hf"]["kernel_limit_docs_per_s"] is None  # llama.cpp only
    assert gguf["prompt_lookup_outputs_equal"] == 1.0 and gguf["prompt_lookup_outputs_equal_1"] == 1.0
    assert gguf["tokens_per_step"] >= 1.0
    for figures in results["backends"].values():  # both backends jump forward
        assert figures["jump_forward_outputs_equal"] == 1.0 and figures["jumped_tokens_per_doc"] >= 0
        assert figures["jump_forward_speedup"] > 0
    assert results["backends"]["hf"]["prompt_lookup_speedup"] is None  # llama.cpp only
    table = format_table(results)
    assert "component_efficiency" in table and "machine:" in table
    json.dumps(results)


def test_bench_command_builds_the_tiny_model(tmp_path):
    from typer.testing import CliRunner

    from spacy_giellm.cli import app

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--n", "2", "--batch-size", "2", "--max-new-tokens", "2",
                                      "--repeat", "1", "--backend", "gguf", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text(encoding="utf-8"))
    assert list(data["backends"]) == ["gguf"]
    assert "component_efficiency" in result.output
    only = CliRunner().invoke(app, ["bench", "--n", "2", "--batch-size", "2", "--max-new-tokens", "2", "--repeat", "1",
                                    "--backend", "gguf", "--step", "limits", "--json", str(out)])
    assert only.exit_code == 0, only.output
    figures = json.loads(out.read_text(encoding="utf-8"))["backends"]["gguf"]
    assert figures["compute_limit_docs_per_s"] > 0 and figures["docs_per_s_parallel_4"] is None
    set_parallel = CliRunner().invoke(app, ["bench", "--n", "2", "--batch-size", "4", "--max-new-tokens", "2",
                                            "--repeat", "1", "--backend", "gguf", "--parallel", "3", "--step", "limits",
                                            "--json", str(out)])
    assert set_parallel.exit_code == 0, set_parallel.output
    assert json.loads(out.read_text(encoding="utf-8"))["backends"]["gguf"]["parallel"] == 3
    # more than a batch never decode together: an error, not a figure that claims it
    above = CliRunner().invoke(app, ["bench", "--n", "2", "--batch-size", "2", "--parallel", "3", "--backend", "gguf"])
    assert above.exit_code == 1 and "--parallel 3 is above --batch-size 2" in above.output
    assert CliRunner().invoke(app, ["bench", "--step", "nap"]).exit_code == 1
    bad = CliRunner().invoke(app, ["bench", "--backend", "tpu"])
    assert bad.exit_code == 1 and "unknown --backend" in bad.output


def test_each_setting_is_shown_as_a_share_of_the_kernel_ceiling():
    from spacy_giellm.bench.measure import kernel_shares
    from spacy_giellm.bench.run import format_table

    figures = {"kernel_limit_docs_per_s": 10.0, "component_docs_per_s": 5.0, "docs_per_s_parallel_1": 2.0,
               "compute_limit_docs_per_s": 20.0, "ginza_full_docs_per_s": 3.0, "batch_speedup": 2.0,
               "constrained_docs_per_s": None}
    shares = kernel_shares(figures)
    assert shares == {"component_docs_per_s": 0.5, "docs_per_s_parallel_1": 0.2}
    assert kernel_shares({"component_docs_per_s": 5.0}) is None
    table = format_table({"backends": {"gguf": {**figures, "share_of_kernel_limit_by_figure": shares}},
                          "machine": {"cpu": "x", "cpus": 2}})
    line = next(row for row in table.splitlines() if row.startswith("component_docs_per_s "))
    assert "5 (50%)" in line and "share of the kernel ceiling" in line
    assert "%" not in next(row for row in table.splitlines() if row.startswith("batch_speedup "))
