"""Reliability, second round (issue 27): hostile inputs to the newer
surfaces get a clear error naming the file, line or field, or a counted
skip; nothing outside OUT is written, nothing `package` did not write is
deleted, no input file is overwritten."""
import json

import pytest

from spacy_giellm.tasks import Task, read_tasks_json, tasks_to_json

ENTITY_LEVEL = {"kind": "entities", "instruction": "Named Entity Recognition", "labels": ["人名"]}
GOOD = {"name": "recipe", "text_labels": ["和食", "洋食"], "word_levels": [ENTITY_LEVEL]}


# --- 5. task definitions are checked field by field ---------------------------


@pytest.mark.parametrize(
    "change, field",
    [
        ({"text_labels": "社会文芸"}, "text_labels"),  # a string is not four labels
        ({"text_labels": ["和食", 3]}, r"text_labels\[1\]"),
        ({"word_levels": [dict(ENTITY_LEVEL, labels=["人名", ""])]}, r"word_levels\[0\]\.labels\[1\]"),
        ({"word_levels": [dict(ENTITY_LEVEL, labels=[1, 2])]}, r"word_levels\[0\]\.labels\[0\]"),
        ({"word_levels": [dict(ENTITY_LEVEL, instruction=5)]}, r"word_levels\[0\]\.instruction"),
        ({"word_levels": [dict(ENTITY_LEVEL, arity="2")]}, r"word_levels\[0\]\.arity"),
        ({"word_levels": [dict(ENTITY_LEVEL, colour="red")]}, r"word_levels\[0\]"),
        ({"word_levels": {"kind": "entities"}}, "word_levels"),
        ({"instruction": 7, "word_levels": []}, "instruction"),
        ({"word_levels": [dict(ENTITY_LEVEL, kind="entity")]}, r"word_levels\[0\]\.kind"),
        ({"word_levels": [{"kind": "entities"}]}, r"word_levels\[0\]\.instruction"),
        ({"separator": 0}, "separator"),
        ({"null_marker": ["なし"]}, "null_marker"),
        ({"fullwidth_delimiters": "false"}, "fullwidth_delimiters"),  # not True
        ({"name": 12}, "name"),
        ({"name": "x/../../../PWNED"}, "name"),
        ({"name": ".."}, "name"),
    ],
)
def test_a_wrong_field_is_an_error_naming_the_source_and_field(change, field):
    with pytest.raises(ValueError, match=rf"^my-source: invalid task definition: field '{field}'"):
        Task.from_dict(dict(GOOD, **change), source="my-source")


def test_a_valid_definition_reads_as_before():
    task = Task.from_dict(dict(GOOD, separator="、", null_marker="なし", fullwidth_delimiters=True))
    assert task.text_labels == ("和食", "洋食") and task.word_levels[0].labels == ("人名",)
    assert task.fullwidth_delimiters is True and task.separator == "、" and task.null_marker == "なし"
    assert Task.from_dict(task.to_dict()) == task
    assert Task.from_dict({"name": "recipe.v2", "text_labels": ["A"]}).name == "recipe.v2"


def test_task_files_sidecars_and_component_files_are_checked(tmp_path):
    from spacy_giellm.tasks import load_task_file

    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(dict(GOOD, fullwidth_delimiters="false")), encoding="utf8")
    with pytest.raises(ValueError, match=rf"{task_file}: invalid task definition: field 'fullwidth_delimiters'"):
        load_task_file(task_file)
    sidecar = tmp_path / "d.tasks.json"
    bad = tasks_to_json([Task.from_dict(GOOD)])
    bad["tasks"][0]["text_labels"] = "社会文芸"
    sidecar.write_text(json.dumps(bad), encoding="utf8")
    with pytest.raises(ValueError, match=rf"{sidecar}: tasks\[0\]: invalid task definition: field 'text_labels'"):
        read_tasks_json(sidecar)


def test_deeply_nested_task_json_is_an_error_naming_the_file(tmp_path):
    deep = tmp_path / "giellm_tasks.json"
    deep.write_text('{"giellm_tasks": 1, "tasks": ' + "[" * 100_000 + "]" * 100_000 + "}", encoding="utf8")
    with pytest.raises(ValueError, match=rf"{deep}: .*nested too deeply"):
        read_tasks_json(deep)
    task_file = tmp_path / "task.json"
    task_file.write_text("[" * 100_000 + "]" * 100_000, encoding="utf8")
    from spacy_giellm.tasks import load_task_file

    with pytest.raises(ValueError, match=rf"{task_file}: .*nested too deeply"):
        load_task_file(task_file)


def test_labels_built_in_code_must_be_strings_too():
    from spacy_giellm.tasks import WordLevel

    with pytest.raises(ValueError, match="label"):
        WordLevel("entities", "NER", ("人名", ""))
    with pytest.raises(ValueError, match="text label"):
        Task("t", (1, 2))


# --- 1, 2. package writes only inside OUT, deletes only what it wrote ---------


def _run(*args):
    from typer.testing import CliRunner

    from spacy_giellm.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _gguf_storing(tiny_gguf, path, tasks_json):
    """A copy of the tiny GGUF whose `giellm.tasks` holds `tasks_json` as it is."""
    import shutil

    from spacy_giellm.training.gguf_export import set_gguf_strings
    from spacy_giellm.model_tasks import GGUF_TASKS_KEY

    shutil.copy(tiny_gguf, path)
    set_gguf_strings(path, {GGUF_TASKS_KEY: json.dumps(tasks_json, ensure_ascii=False)})
    return path


@pytest.mark.slow
def test_a_stored_task_name_cannot_write_outside_out(package_inputs, tmp_path):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    evil = dict(GOOD, name="x/../../../PWNED")
    gguf = _gguf_storing(package_inputs["gguf"], work / "evil.gguf", {"giellm_tasks": 1, "tasks": [evil]})
    result = _run("package", gguf, work / "out", "--base", package_inputs["base"])
    assert result.exit_code == 1
    assert "field 'name'" in result.output and str(gguf) in result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "evil.gguf"]  # nothing written


@pytest.mark.slow
def test_a_task_name_with_a_dot_packages_into_a_loadable_pipeline(package_inputs, tmp_path):
    from spacy_giellm.annotate import load_pipeline

    tasks = {"giellm_tasks": 1, "tasks": [dict(GOOD, name="recipe.v2")]}
    gguf = _gguf_storing(package_inputs["gguf"], tmp_path / "m.gguf", tasks)
    out = tmp_path / "out"
    result = _run("package", gguf, out, "--base", package_inputs["base"])
    assert result.exit_code == 0, result.output
    nlp = load_pipeline(out, keep=False)
    assert nlp.pipe_names == ["giellm_recipe_v2"] and nlp.get_pipe("giellm_recipe_v2").task.name == "recipe.v2"


def test_pipe_names_keep_to_letters_digits_and_underscores():
    from spacy_giellm.packaging import pipe_name_for

    assert pipe_name_for("tcree", "Relation Extraction") == "giellm_tcree_relation"
    assert pipe_name_for("scpos-rw") == "giellm_scpos_rw"
    assert pipe_name_for("レシピ.v2", "a/b c") == "giellm_レシピ_v2_a_b"


@pytest.fixture()
def packaged(package_inputs, tmp_path):
    out = tmp_path / "pf"
    args = ("package", package_inputs["gguf"], out, "--data", package_inputs["data"], "--base", package_inputs["base"])
    assert _run(*args).exit_code == 0
    return out, args


@pytest.mark.slow
@pytest.mark.parametrize(
    "edit",
    [
        lambda out: (out / "giellm_model" / "NOTES.txt").write_text("x", encoding="utf8"),
        lambda out: (out / "giellm_tcree_event" / "task.json").write_text("{}", encoding="utf8"),
        lambda out: (out / "giellm_tcree_event" / "mine").mkdir(),
        lambda out: (out / "config.cfg").write_text("edited", encoding="utf8"),
        lambda out: (out / "meta.json").write_text(
            (out / "meta.json").read_text(encoding="utf8").replace('"0.0.0"', '"9.9.9"'), encoding="utf8"
        ),
    ],
    ids=["nested-file", "edited-json", "nested-dir", "edited-config", "edited-meta"],
)
def test_force_never_deletes_nested_or_edited_files(packaged, edit):
    out, args = packaged
    edit(out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = _run(*args, "--force")
    assert result.exit_code == 1 and "refusing to replace it" in result.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_force_replaces_an_untouched_pipeline(packaged):
    out, args = packaged
    assert _run(*args, "--force").exit_code == 0
    assert _run(*args, "--force").exit_code == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["pf"]


def test_force_refuses_a_pipeline_whose_mark_lists_only_top_level_entries(tmp_path):
    from spacy_giellm.packaging import _check_replaceable

    out = tmp_path / "old"
    (out / "giellm_model").mkdir(parents=True)
    (out / "giellm_model" / "NOTES.txt").write_text("x", encoding="utf8")
    mark = {"written_by": "spacy_giellm package", "files": ["giellm_model", "meta.json"]}
    (out / "meta.json").write_text(json.dumps({"giellm_package": mark}), encoding="utf8")
    with pytest.raises(FileExistsError, match="older `package`"):
        _check_replaceable(out, force=True)


# --- 3. annotate never overwrites its input, nor one output with another ------


@pytest.mark.parametrize(
    "output, html, message",
    [
        ("recs.jsonl", None, "--output 'recs.jsonl' is the input file"),
        (None, "recs.jsonl", "--html 'recs.jsonl' is the input file"),
        ("out.jsonl", "out.jsonl", "--output and --html are the same file"),
        ("./sub.jsonl/../recs.jsonl", None, "is the input file"),
        ("sub.jsonl", None, "--output 'sub.jsonl' is a directory"),
    ],
)
def test_annotate_refuses_outputs_that_are_the_input_or_each_other(tmp_path, monkeypatch, output, html, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub.jsonl").mkdir()
    recs = tmp_path / "recs.jsonl"
    original = '{"text": "トヨタと日産。", "gold": 1, "id": "a"}\n'
    recs.write_text(original, encoding="utf8")
    args = ["annotate", tmp_path / "no-such-pipeline", "--input", "recs.jsonl"]
    args += ["--output", output] if output else []
    args += ["--html", html] if html else []
    result = _run(*args)
    assert result.exit_code == 1 and message in result.output  # before the pipeline is even looked for
    assert recs.read_text(encoding="utf8") == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recs.jsonl", "sub.jsonl"]


def test_annotate_refuses_a_link_to_the_input(tmp_path):
    from spacy_giellm.annotate import check_output_paths

    recs = tmp_path / "recs.txt"
    recs.write_text("テキスト\n", encoding="utf8")
    (tmp_path / "link.html").symlink_to(recs)
    with pytest.raises(ValueError, match="is the input file"):
        check_output_paths(recs, {"--html": tmp_path / "link.html"})


# --- 4. one bad text does not kill the run -------------------------------------


@pytest.fixture(scope="module")
def ja_pipeline(tmp_path_factory):
    """A saved blank Japanese (Sudachi) pipeline with giellm pipes on a scripted backend."""
    from annotated_docs import build_pipeline

    path = tmp_path_factory.mktemp("ja-pipeline") / "pipeline"
    build_pipeline().to_disk(path)
    return path


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf8").splitlines()]


def test_a_text_longer_than_sudachi_takes_is_tokenized_in_pieces(ja_pipeline, tmp_path):
    from spacy_giellm.annotate import TOKENIZER_MAX_BYTES, annotate_file

    long_text = "トヨタと日産が電池を共同開発した。" * 1_200 + "終わり"  # ~61,000 bytes, over Sudachi's limit
    assert len(long_text.encode("utf8")) > TOKENIZER_MAX_BYTES
    texts = tmp_path / "texts.txt"
    texts.write_text(f"短い文。\n{long_text}\n最後の文。\n", encoding="utf8")
    out = tmp_path / "out.jsonl"
    summary = annotate_file(ja_pipeline, texts, out)
    assert summary["annotated"] == 3 and summary["skipped"] == 0
    rows = _rows(out)
    assert [r["line"] for r in rows] == [1, 2, 3] and rows[1]["text"] == long_text


def test_split_for_tokenizer_cuts_at_sentence_ends_within_the_limit():
    from spacy_giellm.annotate import split_for_tokenizer

    text = "あいう。" * 10 + "え" * 30
    pieces = split_for_tokenizer(text, max_bytes=40)
    assert "".join(pieces) == text
    assert all(len(p.encode("utf8")) <= 40 for p in pieces)
    assert pieces[0] == "あいう。" * 3  # 36 bytes: cut after the last sentence end that fits


def test_a_lone_surrogate_is_named_by_its_line_or_skipped(ja_pipeline, tmp_path):
    from spacy_giellm.annotate import annotate_file
    from spacy_giellm.corpora.report import CorpusError

    recs = tmp_path / "recs.jsonl"
    recs.write_text('{"text": "良い文。"}\n{"text": "壊れ\\ud800た"}\n{"text": "次の文。"}\n', encoding="utf8")
    out = tmp_path / "out.jsonl"
    with pytest.raises(CorpusError, match=rf"^{recs}:2: .*lone surrogate"):
        annotate_file(ja_pipeline, recs, out)
    assert not out.exists()
    summary = annotate_file(ja_pipeline, recs, out, skip_errors=True)
    assert summary["annotated"] == 2 and summary["skipped"] == 1 and f"{recs}:2" in summary["skipped_lines"][0]
    assert [r["line"] for r in _rows(out)] == [1, 3]


def test_a_text_the_tokenizer_fails_on_is_named_or_skipped(ja_pipeline, tmp_path, monkeypatch):
    from spacy_giellm import annotate as annotate_module
    from spacy_giellm.corpora.report import CorpusError

    real = annotate_module.make_doc

    def failing(nlp, text):
        if "爆発" in text:
            raise RuntimeError("tokenizer exploded")
        return real(nlp, text)

    monkeypatch.setattr(annotate_module, "make_doc", failing)
    texts = tmp_path / "texts.txt"
    texts.write_text("良い文。\n爆発する文。\n次の文。\n", encoding="utf8")
    out = tmp_path / "out.jsonl"
    with pytest.raises(CorpusError, match=rf"^{texts}:2: the tokenizer failed on this text: tokenizer exploded"):
        annotate_module.annotate_file(ja_pipeline, texts, out)
    assert not out.exists()
    summary = annotate_module.annotate_file(ja_pipeline, texts, out, skip_errors=True)
    assert summary["annotated"] == 2 and summary["skipped"] == 1
    assert [r["line"] for r in _rows(out)] == [1, 3]


def test_deeply_nested_jsonl_line_is_named(tmp_path):
    from spacy_giellm.annotate import read_texts
    from spacy_giellm.corpora.report import CorpusError, ReadReport

    recs = tmp_path / "recs.jsonl"
    recs.write_text('{"text": "良い文。"}\n' + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf8")
    with pytest.raises(CorpusError, match=rf"^{recs}:2: invalid JSON: nested too deeply"):
        list(read_texts(recs, ReadReport()))


# --- 6. train --processes: the workers die with the parent ---------------------

_PARENT = """
import sys
from spacy_giellm.training import parallel
sys.executable = sys.argv[1]  # the workers: a script that records its pid and sleeps
sys.exit(parallel.run_data_parallel(["train"], 2, 2))
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat", encoding="utf8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie has died
    except FileNotFoundError:
        return False


def _wait_for(condition, what, seconds=60):
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="/proc and prctl")
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT", "SIGHUP", "SIGKILL"])
def test_train_workers_die_with_the_parent(tmp_path, signame):
    import os
    import signal
    import subprocess
    import sys

    pids = tmp_path / "pids"
    worker = tmp_path / "worker.sh"
    worker.write_text(f"#!/bin/sh\necho $$ >> {pids}\nexec sleep 600\n", encoding="utf8")
    worker.chmod(0o755)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(worker)], env=dict(os.environ, TMPDIR=str(tmp)),
        start_new_session=True,  # a signal for the parent alone, not its process group
        # SIGINT as a terminal leaves it: a test run started in the background
        # (`&`, nohup) passes SIGINT on ignored, and the parent would never see it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        _wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, "the two workers")
        assert [p.name.startswith("giellm-rendezvous-") for p in tmp.iterdir()] == [True]
        workers = [int(pid) for pid in pids.read_text().split()]
        parent.send_signal(getattr(signal, signame))
        parent.wait(timeout=60)
        _wait_for(lambda: not any(_alive(pid) for pid in workers), "the workers to end")
        if signame != "SIGKILL":  # a killed parent cannot clean up; its workers still end
            assert list(tmp.iterdir()) == []
            assert parent.returncode != 0
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in (int(p) for p in pids.read_text().split()) if pids.exists() else ():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# --- 8. the response cache -----------------------------------------------------


def _respond(cache, prompts, calls):
    def run(missing):
        calls.extend(missing)
        return [f"out:{p}" for p in missing], [{"A": 0.25, "B": 0.75} for _ in missing]

    return cache.respond({"model": "m"}, prompts, run)


def test_a_cache_row_with_string_scores_is_a_miss(tmp_path):
    import sqlite3

    from spacy_giellm.cache import ResponseCache

    db = tmp_path / "c.sqlite"
    calls = []
    first = _respond(ResponseCache(db), ["p1", "p2"], calls)
    with sqlite3.connect(db) as conn:
        conn.execute("""UPDATE responses SET value = '{"output": "x", "scores": {"A": "high"}}'""")
    assert _respond(ResponseCache(db), ["p1", "p2"], calls) == (first[0], first[1], 2)  # computed again
    assert calls == ["p1", "p2", "p1", "p2"]


def test_cache_files_are_the_owners_alone(tmp_path):
    import os
    import stat

    from spacy_giellm.cache import ResponseCache

    old = os.umask(0o022)
    try:
        _respond(ResponseCache(tmp_path / "c.sqlite"), ["p"], [])
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes and all(mode == 0o600 for mode in modes.values()), modes


@pytest.mark.parametrize("damage", ["garbage", "readonly"])
def test_sqlite_errors_name_the_database_file(tmp_path, damage):
    import os
    import sqlite3

    from spacy_giellm.cache import CacheError, ResponseCache

    db = tmp_path / "c.sqlite"
    cache = ResponseCache(db)
    _respond(cache, ["p"], [])
    cache.close()
    with sqlite3.connect(db) as conn:  # everything into the one file
        conn.execute("PRAGMA journal_mode = DELETE")
    if damage == "garbage":  # the first page (the schema) survives, the tables' pages do not
        data = bytearray(db.read_bytes())
        data[4096:] = b"\xff" * (len(data) - 4096)
        db.write_bytes(bytes(data))
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes read-only files")
        db.chmod(0o400)
    with pytest.raises(CacheError, match=rf"giellm cache: '{db}': DatabaseError"):
        _respond(ResponseCache(db), ["p", "new"], [])


def test_a_lock_held_past_the_timeout_names_the_database_file(tmp_path):
    import sqlite3

    from spacy_giellm.cache import CacheError, ResponseCache

    db = tmp_path / "c.sqlite"
    _respond(ResponseCache(db), ["p"], [])
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(CacheError, match=rf"{db}.*locked"):
            _respond(ResponseCache(db, timeout=0.05), ["new"], [])
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# --- 8. outputs: SIGTERM leaves no temporary file, a file keeps its mode ------

_ANNOTATE_THEN_SIGTERM = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import annotated_docs
annotated_docs.build_pipeline()  # fills the scripted backend's tables
import spacy_giellm.annotate as annotate_module
from spacy_giellm.cli import app

real = annotate_module.doc_row

def doc_row(doc, line=None):
    if line == 2:  # midway through the run
        os.kill(os.getpid(), signal.SIGTERM)
    return real(doc, line)

annotate_module.doc_row = doc_row
app(sys.argv[2:])
"""


def test_sigterm_during_annotate_leaves_no_temporary_files(ja_pipeline, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    texts = tmp_path / "texts.txt"
    texts.write_text("一つ目の文。\n二つ目の文。\n三つ目の文。\n", encoding="utf8")
    args = ["annotate", ja_pipeline, "--input", texts, "--output", tmp_path / "out.jsonl", "--html", tmp_path / "o.html"]
    tests = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, "-c", _ANNOTATE_THEN_SIGTERM, str(tests), *map(str, args)], capture_output=True, timeout=300
    )
    assert done.returncode == 128 + 15, done.stderr.decode()[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.txt"]


def test_replacing_an_output_keeps_its_mode(tmp_path):
    import os
    import stat

    from spacy_giellm.util import atomic_write_text

    private = tmp_path / "private.jsonl"
    private.write_text("old", encoding="utf8")
    private.chmod(0o600)
    old = os.umask(0o022)
    try:
        atomic_write_text(private, "new")
        atomic_write_text(tmp_path / "fresh.jsonl", "new")
    finally:
        os.umask(old)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and private.read_text(encoding="utf8") == "new"
    assert stat.S_IMODE((tmp_path / "fresh.jsonl").stat().st_mode) == 0o644  # a new file: the umask's


# --- 8. trim-vocab and export-gguf fail early, naming the file -----------------


def test_trim_vocab_checks_data_before_the_base_and_never_asks_the_hub(tmp_path, monkeypatch):
    import transformers

    from spacy_giellm.training import base_model

    asked = []
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: asked.append(a))
    monkeypatch.setattr(base_model, "hf_dir_from_gguf", lambda *a, **k: asked.append(a))
    gguf = tmp_path / "base.gguf"
    gguf.write_bytes(b"GGUF")
    result = _run("trim-vocab", gguf, tmp_path / "out", "--data", tmp_path / "missing.jsonl")
    assert result.exit_code == 1 and "missing.jsonl" in result.output
    data = tmp_path / "train.jsonl"
    data.write_text('{"input": "a", "output": "b"}\n', encoding="utf8")
    result = _run("trim-vocab", "no-such-model", tmp_path / "out", "--data", data)
    assert result.exit_code == 1 and "'no-such-model' is neither a local directory" in result.output
    assert asked == []  # no dequantizing, no hub look-up
    assert not (tmp_path / "out").exists()


def test_export_gguf_names_a_corrupt_config_json(tiny_model_dir, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "config.json").write_text('{"model_type": "llama", ', encoding="utf8")
    result = _run("export-gguf", model, tmp_path / "m.gguf")
    assert result.exit_code == 1 and f"{model / 'config.json'}: not valid JSON" in result.output
    (model / "config.json").write_text("[1, 2]", encoding="utf8")
    result = _run("export-gguf", model, tmp_path / "m.gguf")
    assert result.exit_code == 1 and "not a transformers model config" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# --- 8. model.json cannot point outside the pipeline ---------------------------


@pytest.mark.slow
@pytest.mark.parametrize("where", ["../../etc/passwd", "other-gguf", "link-inside"])
def test_model_json_naming_a_file_outside_the_pipeline_is_refused(packaged, package_inputs, where, monkeypatch):
    import spacy

    out, _ = packaged
    secret = out.parent / "secret.txt"
    secret.write_text("TOPSECRET-9f3 and more", encoding="utf8")
    if where == "other-gguf":
        target = str(package_inputs["gguf"])
    elif where == "link-inside":  # inside by name, outside in fact
        (out / "giellm_model" / "link.gguf").symlink_to(secret)
        target = "../giellm_model/link.gguf"
    else:
        target = where
    ref = out / "giellm_tcree_event" / "model.json"
    ref.write_text(json.dumps({"model_path": target}), encoding="utf8")
    with pytest.raises(ValueError, match=rf"{ref} names the model file .*outside the pipeline directory") as err:
        spacy.load(out)
    assert "TOPSECRET" not in str(err.value)  # nothing of the file is quoted
    monkeypatch.setenv("SPACY_GIELLM_ALLOW_MODEL_OUTSIDE_PIPELINE", "1")
    if where == "other-gguf":
        assert spacy.load(out).get_pipe("giellm_tcree_event").backend.model_path == target


# --- 7. llama.cpp's default thread count leaves out the cores others keep busy -


@pytest.mark.parametrize(
    "cores, load, expected",
    [(2, 0.0, 2), (2, 1.0, 1), (2, 0.6, 1), (1, 0.0, 1), (8, 0.2, 8), (8, 3.4, 5), (8, 2.6, 5), (8, 20.0, 1),
     (16, None, 16)],
)
def test_default_threads_leave_out_the_busy_cores(monkeypatch, cores, load, expected):
    import os

    from spacy_giellm import util
    from spacy_giellm.backends import llamacpp

    monkeypatch.setattr(llamacpp, "physical_cores", lambda: cores)
    if load is None:  # neither /proc/stat nor a load average (Windows): no core is taken as busy
        def unreadable(*args, **kwargs):
            raise OSError("no /proc/stat")

        monkeypatch.setattr(util, "open", unreadable, raising=False)
        monkeypatch.delattr(os, "getloadavg", raising=False)
    else:
        monkeypatch.setattr(llamacpp, "busy_cores", lambda: load)
    llamacpp.default_threads.cache_clear()
    try:
        assert llamacpp.default_threads() == expected
    finally:
        llamacpp.default_threads.cache_clear()
