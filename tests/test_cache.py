"""The response cache (`spacy_giellm.cache`, the component's `cache`
setting): a re-run is served from it with identical results, and anything
that decides a response (model file, settings, task, scoring) misses.

A counting backend logs every prompt it answers to a file, so calls are
counted across processes too; the real llama.cpp backend is used for the
changed-model-file case and the `evaluate-model --cache` command.
"""
import json
import multiprocessing
import os
import pickle
import shutil
import sqlite3
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import spacy
from typer.testing import CliRunner

from spacy_giellm import cache as cache_module
from spacy_giellm.cache import CacheError, ResponseCache
from spacy_giellm.registry import giellm_backends

TEXTS = ["松友美佐紀は、日本のバドミントン選手。", "トヨタは東京に本社を置く。", "花子は大阪で働いている。",
         "松友美佐紀は、日本のバドミントン選手。"]  # a repeat: one model call for both


class CountingBackend:
    """Answers from the model file's bytes and its settings; appends each
    prompt it answers to `log` (one line a prompt)."""

    def __init__(self, model_file: str, log: str, max_new_tokens: int = 8, constrained: bool = False) -> None:
        self.model_file, self.log = model_file, log
        self.max_new_tokens, self.constrained = max_new_tokens, constrained

    def _record(self, prompts: List[str]) -> None:
        with open(self.log, "a", encoding="utf8") as f:
            f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts)

    def generate(self, prompts: List[str]) -> List[str]:
        self._record(prompts)
        weights = Path(self.model_file).read_text(encoding="utf8")
        return [f"{weights}|{self.max_new_tokens}|{self.constrained}|{len(p)}" for p in prompts]

    def label_scores(self, prompts, candidates) -> List[Dict[str, float]]:
        # thirds and sevenths: floats that must come back from the store bit for bit
        return [{c: (len(p) % 7 + i + 1) / 21 for i, c in enumerate(candidates)} for p in prompts]

    def model_identity(self, hash_path) -> Dict[str, str]:
        return {"sha256": hash_path(self.model_file)}

    def generation_settings(self) -> Dict[str, object]:
        return {"max_new_tokens": self.max_new_tokens, "constrained": self.constrained}


class UnidentifiedBackend(CountingBackend):
    """Like a server: cannot say which model it runs."""

    def model_identity(self, hash_path) -> None:
        return None


class PlainBackend:
    def __init__(self, model_file: str, log: str) -> None:
        pass

    def generate(self, prompts: List[str]) -> List[str]:
        return ["" for _ in prompts]


giellm_backends.register("test.CacheCounting.v1", func=CountingBackend)
giellm_backends.register("test.CacheUnidentified.v1", func=UnidentifiedBackend)
giellm_backends.register("test.CachePlain.v1", func=PlainBackend)


@pytest.fixture()
def files(tmp_path):
    model = tmp_path / "weights.bin"
    model.write_text("model-A", encoding="utf8")
    return {"model": model, "log": tmp_path / "calls.log", "db": tmp_path / "cache" / "responses.sqlite"}


def _calls(files) -> int:
    log = files["log"]
    return len(log.read_text(encoding="utf8").splitlines()) if log.exists() else 0


def _nlp(files, *, backend: str = "test.CacheCounting.v1", task: str = "scnm", cache: Optional[dict] = None,
         **settings):
    nlp = spacy.blank("ja")
    score_cats = settings.pop("score_cats", True)
    backend_cfg = {"@giellm_backends": backend, "model_file": str(files["model"]), "log": str(files["log"]), **settings}
    cache_cfg = {"@misc": "giellm.cache.v1", "path": str(files["db"])} if cache is None else cache
    nlp.add_pipe("giellm", config={"task": task, "backend": backend_cfg, "store_output": True, "cache": cache_cfg,
                                   "score_cats": score_cats})
    return nlp


def _results(nlp, texts=TEXTS, **kwargs):
    return [(doc._.giellm_output["outputs"], dict(doc.cats), [(e.text, e.label_) for e in doc.ents])
            for doc in nlp.pipe(texts, **kwargs)]


def test_a_second_run_is_served_from_the_cache_with_identical_results(files):
    nlp = _nlp(files)
    first = _results(nlp)
    assert _calls(files) == 3  # the repeated text is answered once
    assert nlp.get_pipe("giellm").stats["cache_misses"] == 3
    assert nlp.get_pipe("giellm").stats["cache_hits"] == 1
    assert all(out[0].startswith("model-A|") for out, _, _ in first)
    assert all(cats and all(0 < v < 1 for v in cats.values()) for _, cats, _ in first)

    again = _nlp(files)  # a new pipeline and backend: only the database is shared
    assert _results(again) == first
    assert _calls(files) == 3
    assert again.get_pipe("giellm").stats["cache_hits"] == len(TEXTS)
    assert again.get_pipe("giellm").stats["cache_misses"] == 0


@pytest.mark.parametrize("change", [
    {"max_new_tokens": 9},
    {"constrained": True},
    {"task": "ner-ja"},
    {"score_cats": False},
])
def test_a_changed_setting_task_or_scoring_misses(files, change):
    _results(_nlp(files))
    assert _calls(files) == 3
    changed = _nlp(files, **change)
    results = _results(changed)
    assert _calls(files) == 6
    assert changed.get_pipe("giellm").stats["cache_hits"] == 1  # only the repeat within the run
    if "max_new_tokens" in change:
        assert all("|9|" in out[0] for out, _, _ in results)


def test_a_changed_model_file_misses_even_at_the_same_size_and_path(files):
    _results(_nlp(files))
    files["model"].write_text("model-B", encoding="utf8")  # same size, rewritten in place
    st = files["model"].stat()
    os.utime(files["model"], ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # in case the clock did not move
    results = _results(_nlp(files))
    assert _calls(files) == 6
    assert all(out[0].startswith("model-B|") for out, _, _ in results)


def test_a_file_is_hashed_once_not_on_every_run(files, monkeypatch):
    _results(_nlp(files))
    hashed = []
    original = cache_module.file_sha256
    monkeypatch.setattr(cache_module, "file_sha256", lambda path: hashed.append(path) or original(path))
    _results(_nlp(files))  # a new ResponseCache: the memo comes from the database
    assert hashed == []
    files["model"].write_text("model-Bigger", encoding="utf8")
    _results(_nlp(files))
    assert len(hashed) == 1


def test_a_backend_that_cannot_identify_its_model_needs_a_declared_identity(files):
    with pytest.raises(CacheError, match="cannot say which model"):
        _nlp(files, backend="test.CachePlain.v1")
    nlp = _nlp(files, backend="test.CacheUnidentified.v1")
    with pytest.raises(CacheError, match="model_identity"):
        _results(nlp)
    assert _calls(files) == 0

    declared = {"@misc": "giellm.cache.v1", "path": str(files["db"]), "model_identity": "served-model@1"}
    first = _results(_nlp(files, backend="test.CacheUnidentified.v1", cache=declared))
    assert _calls(files) == 3
    assert _results(_nlp(files, backend="test.CacheUnidentified.v1", cache=declared)) == first
    assert _calls(files) == 3
    _results(_nlp(files, backend="test.CacheUnidentified.v1", cache={**declared, "model_identity": "served-model@2"}))
    assert _calls(files) == 6


def test_the_cache_setting_survives_to_disk_and_spacy_load(files, tmp_path):
    nlp = _nlp(files)
    first = _results(nlp)
    nlp.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    cache = loaded.get_pipe("giellm").cache
    assert isinstance(cache, ResponseCache) and cache.path == files["db"]
    assert _results(loaded) == first
    assert _calls(files) == 3


def test_two_processes_share_the_cache(files):
    texts = [f"{name}は東京で{i}年働いている。" for i in range(24) for name in ("花子",)]
    nlp = _nlp(files)
    first = _results(nlp, texts, n_process=2, batch_size=4)
    assert _calls(files) == len(texts)
    assert len(ResponseCache(files["db"])) == len(texts)
    assert _results(_nlp(files), texts, n_process=2, batch_size=4) == first
    assert _calls(files) == len(texts)


def _writer(parent: ResponseCache, worker: int, rounds: int) -> None:
    # odd workers use the parent's cache as fork left it (its connection
    # open), even ones a copy as a spawned process gets it
    cache = parent if worker % 2 else pickle.loads(pickle.dumps(parent))
    inherited = parent._conn
    for r in range(rounds):
        # keys of its own and keys every worker writes
        cache.put_many({f"w{worker}-{r}": (f"out {worker} {r}", None), f"shared-{r}": ("same", {"a": 0.5})})
        assert cache.get_many([f"shared-{r}"])[f"shared-{r}"] == ("same", {"a": 0.5})
    # sqlite: a connection must not be used across fork
    assert inherited is not None and cache._conn is not inherited


def test_concurrent_writers_do_not_corrupt_the_store(tmp_path):
    db = tmp_path / "responses.sqlite"
    parent = ResponseCache(db)
    parent.put_many({"before": ("x", None)})  # the parent's connection is open when it forks
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(parent, w, 60)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert len(parent) == 1 + 4 * 60 + 60
    assert parent.get_many(["w3-59", "before"]) == {"w3-59": ("out 3 59", None), "before": ("x", None)}
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_an_unreadable_row_is_generated_again(files):
    first = _results(_nlp(files))
    with sqlite3.connect(files["db"]) as conn:
        conn.execute("UPDATE responses SET value = 'not json'")
    assert _results(_nlp(files)) == first
    assert _calls(files) == 6


def test_a_cache_path_that_is_a_directory_is_refused(tmp_path):
    with pytest.raises(CacheError, match="is a directory"):
        ResponseCache(tmp_path)


# ------------------------------------------------------------- real backends


def test_a_changed_gguf_misses_and_an_unchanged_one_skips_generation(tiny_gguf, tiny_gemma_gguf, tmp_path):
    model = tmp_path / "model.gguf"
    shutil.copyfile(tiny_gguf, model)
    db = tmp_path / "responses.sqlite"

    def run(path=model, cache=True):
        nlp = spacy.blank("ja")
        pipe = nlp.add_pipe("giellm", config={
            "task": "scnm", "store_output": True,
            "backend": {"@giellm_backends": "giellm.LlamaCpp.v1", "model_path": str(path), "max_new_tokens": 8,
                        "n_threads": 1},
            "cache": {"@misc": "giellm.cache.v1", "path": str(db)} if cache else None,
        })
        generated = []
        generate, generate_scored = pipe.backend.generate, pipe.backend.generate_scored
        pipe.backend.generate = lambda prompts: generated.extend(prompts) or generate(prompts)
        pipe.backend.generate_scored = lambda prompts, c: generated.extend(prompts) or generate_scored(prompts, c)
        results = [(d._.giellm_output["outputs"], dict(d.cats)) for d in nlp.pipe(TEXTS[:3])]
        loaded = pipe.backend.is_loaded
        pipe.backend.close()
        return results, len(generated), loaded

    first, n, loaded = run()
    assert n == 3 and loaded
    # prompt token counts come from the cache too: the model is not even loaded
    assert run() == (first, 0, False)
    shutil.copyfile(tiny_gemma_gguf, model)  # another model at the same path
    gemma, n, _ = run()
    assert n == 3
    assert gemma == run(tiny_gemma_gguf, cache=False)[0]
    assert gemma != first


def test_evaluate_model_with_cache_reruns_from_it(tiny_gguf, tmp_path):
    from spacy_giellm.cli import app

    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"text": t, "task": "scnm", "label": "社会", "entities": []},
                                       ensure_ascii=False) + "\n" for t in TEXTS[:3]), encoding="utf8")
    runs = []
    # an output-changing setting from the command line (`--setting`) is a new key
    for out, more in (("first", []), ("second", []), ("one-at-a-time", ["-s", "n_parallel=1"])):
        result = CliRunner().invoke(app, ["evaluate-model", str(tiny_gguf), str(gold), "-o", str(tmp_path / out),
                                          "--max-new-tokens", "8", "--cache", str(tmp_path / "responses.sqlite"),
                                          *more])
        assert result.exit_code == 0, result.output
        runs.append(json.loads((tmp_path / out / "metrics.json").read_text(encoding="utf8"))["cache"])
    assert (runs[0]["hits"], runs[0]["misses"]) == (0, 3)
    assert (runs[1]["hits"], runs[1]["misses"]) == (3, 0)
    assert (runs[2]["hits"], runs[2]["misses"]) == (0, 3)
    metrics = json.loads((tmp_path / "one-at-a-time" / "metrics.json").read_text(encoding="utf8"))
    assert metrics["backend"]["n_parallel"] == 1
    assert (tmp_path / "first" / "predictions.jsonl").read_bytes() == (tmp_path / "second" / "predictions.jsonl").read_bytes()


def test_hf_identity_follows_local_files_and_hub_commits(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants

    from spacy_giellm.backends.hf import HFBackend

    cache = ResponseCache(tmp_path / "responses.sqlite")
    local = tmp_path / "model"
    shutil.copytree(tiny_model_dir, local)
    before = HFBackend(str(local)).model_identity(cache.hash_path)
    (local / "generation_config.json").write_text('{"max_length": 7}', encoding="utf8")
    assert HFBackend(str(local)).model_identity(cache.hash_path) != before
    assert HFBackend(str(local), dtype="float32").generation_settings() != \
        HFBackend(str(local), dtype="bfloat16").generation_settings()

    # a hub id: the commit the local hub cache's `main` points at, read after loading
    hub = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(HFBackend, "load", lambda self: self)
    repo = hub / "models--org--tiny"

    def publish(commit: str) -> None:
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}", encoding="utf8")
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit, encoding="utf8")

    publish("a" * 40)
    assert HFBackend("org/tiny").model_identity(cache.hash_path)["model"] == {"hub_id": "org/tiny", "revision": "a" * 40}
    publish("b" * 40)
    assert HFBackend("org/tiny").model_identity(cache.hash_path)["model"]["revision"] == "b" * 40
    with pytest.raises(ValueError, match="cannot tell which commit"):
        HFBackend("org/absent").model_identity(cache.hash_path)


# A valid value other than the default, per settings field that needs one
# (bool and int fields: `not` and +1). A new field without one fails below.
_OTHER_VALUES = {"dtype": "bfloat16", "device": "cuda", "server_kind": "vllm", "model": "other-model",
                 "stop": ("\n\n",), "extra_body": {"top_k": 1}, "n_threads": 2, "api_key": "secret-key"}


def _other_value(name, value):
    if name in _OTHER_VALUES:
        return _OTHER_VALUES[name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    raise AssertionError(f"no other value known for the setting {name!r}: add one to _OTHER_VALUES")


def _settings_backend(kind, tiny_model_dir, tiny_gguf):
    from spacy_giellm.backends.hf import HFBackend
    from spacy_giellm.backends.llamacpp import LlamaCppBackend
    from spacy_giellm.backends.server import ServerBackend

    if kind == "hf":
        return HFBackend(str(tiny_model_dir), device="cpu", dtype="float32")
    if kind == "llamacpp":
        return LlamaCppBackend(str(tiny_gguf), n_threads=1)
    return ServerBackend("http://127.0.0.1:9")


@pytest.mark.parametrize("kind", ["hf", "llamacpp", "server"])
def test_every_output_changing_setting_reaches_the_cache_key(kind, tiny_model_dir, tiny_gguf, tmp_path):
    """Each setting marked OUTPUTS (`backends.settings`) changes the key the
    component caches under; one marked SPEED does not, and a MODEL one
    (the model's place) counts by the model's content only. n_parallel,
    prompt_lookup, jump_forward and HF's batch_size were left out once: a
    hit could return an answer made under other settings."""
    from dataclasses import fields, replace

    from spacy_giellm.backends.settings import MODEL, OUTPUTS, SPEED, HFSettings, LlamaCppSettings, output_fields
    from spacy_giellm.cache import context_digest
    from spacy_giellm.component import GiellmComponent

    assert {"n_parallel", "prompt_lookup", "jump_forward", "max_new_tokens", "constrained"} <= set(
        output_fields(LlamaCppSettings))
    assert {"batch_size", "jump_forward", "max_new_tokens", "constrained", "dtype"} <= set(output_fields(HFSettings))
    cache = ResponseCache(tmp_path / "responses.sqlite", model_identity="served-model" if kind == "server" else None)
    vocab = spacy.blank("ja").vocab
    base = _settings_backend(kind, tiny_model_dir, tiny_gguf)

    def context(settings):
        backend = type(base).from_settings(settings)
        return GiellmComponent(vocab, task="scnm", backend=backend, cache=cache)._cache_context()

    base_key = context_digest(context(base.settings))
    checked = {OUTPUTS: 0, SPEED: 0, MODEL: 0}
    for f in fields(base.settings):
        value = getattr(base.settings, f.name)
        effect = f.metadata["effect"]
        if effect == MODEL:
            if value is None or kind == "server":  # no adapter; a server's model is the declared identity
                other = "http://127.0.0.1:10" if kind == "server" else None
            elif Path(value).is_dir():
                other = shutil.copytree(value, tmp_path / "moved-model")
            else:
                other = shutil.copyfile(value, tmp_path / "moved.gguf")
            if other is None:
                continue
            # the same model elsewhere: the same key (a moved pipeline keeps its cache)
            assert context_digest(context(replace(base.settings, **{f.name: str(other)}))) == base_key, f.name
        else:
            changed = context(replace(base.settings, **{f.name: _other_value(f.name, value)}))
            assert (context_digest(changed) != base_key) == (effect == OUTPUTS), (f.name, effect)
            assert "secret-key" not in json.dumps(changed, default=str)
        checked[effect] += 1
    assert checked[OUTPUTS] >= 5 and checked[MODEL] >= 1 and (checked[SPEED] >= 1 or kind == "hf"), checked
