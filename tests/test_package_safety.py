"""`python -m spacy_giellm package` never deletes what it did not write: a
non-empty OUT needs --force, and --force replaces only a pipeline that
`package` wrote. (It used to empty OUT first: with OUT = "." the current
directory's files, input data included.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import spacy
from typer.testing import CliRunner

from spacy_giellm.cli import app

pytestmark = pytest.mark.slow

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def setup(package_inputs):
    """The tiny GGUF, a blank base and TCREE data (two giellm pipes)."""
    return package_inputs


def package(setup, out, *extra):
    return run("package", setup["gguf"], out, "--data", setup["data"], "--base", setup["base"], *extra)


def test_new_dir_then_force_replaces_only_our_pipeline(setup, tmp_path):
    out = tmp_path / "pipeline"
    assert package(setup, out).exit_code == 0
    meta = json.loads((out / "meta.json").read_text(encoding="utf8"))
    assert meta["giellm_package"]["written_by"] == "spacy_giellm package"
    assert sorted(p for p in spacy.load(out).pipe_names if p.startswith("giellm")) == [
        "giellm_tcree_event", "giellm_tcree_relation"
    ]

    result = package(setup, out)  # again, without --force
    assert result.exit_code == 1 and "not empty" in result.output and "--force" in result.output
    written = (out / "config.cfg").read_text(encoding="utf8")
    assert package(setup, out, "--force").exit_code == 0
    assert (out / "config.cfg").read_text(encoding="utf8") == written  # replaced by the same
    assert [p.name for p in tmp_path.iterdir()] == ["pipeline"]  # no temp dirs left beside it
    (out / "config.cfg").write_text("marker", encoding="utf8")  # edited by the user: kept
    result = package(setup, out, "--force")
    assert result.exit_code == 1 and "config.cfg (changed)" in result.output
    assert (out / "config.cfg").read_text(encoding="utf8") == "marker"
    (out / "config.cfg").write_text(written, encoding="utf8")

    (out / "notes.txt").write_text("mine", encoding="utf8")  # a user file inside our pipeline
    result = package(setup, out, "--force")
    assert result.exit_code == 1 and "notes.txt" in result.output
    assert (out / "notes.txt").read_text(encoding="utf8") == "mine"


def test_a_directory_with_user_files_survives_even_with_force(setup, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work", encoding="utf8")
    for extra in ((), ("--force",)):
        result = package(setup, out, *extra)
        assert result.exit_code == 1, result.output
        assert str(out) in result.output
        assert [p.name for p in out.iterdir()] == ["thesis.txt"]
        assert (out / "thesis.txt").read_text(encoding="utf8") == "years of work"


def test_current_directory_is_refused(setup, tmp_path, monkeypatch):
    """The reported case: OUT = "." with the input data in it."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "D.jsonl"
    data.write_bytes(Path(setup["data"]).read_bytes())
    for extra in ((), ("--force",)):
        result = run("package", setup["gguf"], ".", "--data", "D.jsonl", "--base", setup["base"], *extra)
        assert result.exit_code == 1, result.output
        assert [p.name for p in tmp_path.iterdir()] == ["D.jsonl"]
