"""The whole pipeline on GiNZA docs with the real backends and a tiny local model.

The tiny model has random weights, so its generations are nonsense: these
tests check the plumbing (prompts from the core format, batched generation,
parsing, alignment, serialization, evaluation), and that both backends give
the component the same outputs.
"""
from collections import Counter

import spacy
import pytest
from spacy.training import Example

from spacy_giellm import build_input, get_task

TEXTS = ["松友美佐紀は、日本のバドミントン選手。", "", "トヨタは東京に本社を置く。", "花子は大阪で働いている。"]


@pytest.fixture(scope="module")
def ginza_once():
    return spacy.load("ja_ginza")


@pytest.fixture()
def ginza(ginza_once):
    """ja_ginza, loaded once per module; the giellm pipes a test adds are
    removed afterwards."""
    yield ginza_once
    for name in [n for n in ginza_once.pipe_names if n.startswith("giellm")]:
        ginza_once.remove_pipe(name)


def _backends(tiny_model_dir, tiny_gguf):
    return {
        "hf": {"@giellm_backends": "giellm.HF.v1", "model": str(tiny_model_dir), "max_new_tokens": 12,
               "batch_size": 2},
        "gguf": {"@giellm_backends": "giellm.LlamaCpp.v1", "model_path": str(tiny_gguf), "max_new_tokens": 12,
                 "n_threads": 1},
    }


def test_component_runs_both_backends_identically(ginza, tiny_model_dir, tiny_gguf):
    import torch

    torch.set_num_threads(1)
    task = get_task("scnm")
    outputs = {}
    for name, backend in _backends(tiny_model_dir, tiny_gguf).items():
        pipe = ginza.add_pipe("giellm", name=f"giellm_{name}", config={
            "task": "scnm", "backend": backend, "store_output": True, "batch_size": 2})
        docs = list(ginza.pipe(TEXTS))
        ginza.remove_pipe(f"giellm_{name}")
        assert [d.text for d in docs] == TEXTS  # order kept
        assert docs[1]._.giellm_output is None or docs[1]._.giellm_output["outputs"] == []
        outputs[name] = [d._.giellm_output["outputs"] for d in docs if d.text]
        # The component's prompts are the core format's, and it returns what
        # the bare backend generates for them.
        direct = pipe.backend.generate([build_input(t, task) for t in TEXTS if t])
        assert [o[0] for o in outputs[name]] == direct
        for doc in docs:
            if doc.text:
                assert set(doc.cats) == set(task.text_labels)
                assert sum(doc.cats.values()) == pytest.approx(1.0)  # both backends score labels
                assert all(e.label_ in task.word_levels[0].labels for e in doc.ents)
    assert outputs["hf"] == outputs["gguf"]


def test_pipeline_round_trip_and_evaluate(ginza, tiny_model_dir, tmp_path):
    backend = {"@giellm_backends": "giellm.HF.v1", "model": str(tiny_model_dir), "max_new_tokens": 8}
    ginza.add_pipe("giellm", config={"task": "ner-ja", "backend": backend, "store_output": True})
    before = [d._.giellm_output["outputs"] for d in ginza.pipe(TEXTS[:1])]
    ginza.to_disk(tmp_path / "pipe")
    weights = [p for p in (tmp_path / "pipe" / "giellm").rglob("*") if p.suffix in (".safetensors", ".bin", ".gguf")]
    assert weights == []  # the pipeline refers to the model, it does not copy it
    loaded = spacy.load(tmp_path / "pipe")
    assert loaded.config["components"]["giellm"]["backend"]["model"] == str(tiny_model_dir)
    assert [d._.giellm_output["outputs"] for d in loaded.pipe(TEXTS[:1])] == before
    examples = [Example.from_dict(loaded.make_doc(TEXTS[0]), {"entities": [(0, 5, "人名"), (7, 9, "地名")]})]
    scores = loaded.evaluate(examples)
    assert {"giellm_wl_acc", "giellm_wl_p", "giellm_wl_r", "giellm_wl_f", "giellm_all_acc"} <= set(scores)
    # the same scores counted here from the entities the pipeline predicts
    gold = Counter([("人名", "松友美佐紀"), ("地名", "日本")])
    labels = set(get_task("ner-ja").word_levels[0].labels)
    pred = Counter((e.label_, e.text) for e in loaded(TEXTS[0]).ents if e.label_ in labels)
    matched = sum((gold & pred).values())
    assert scores["giellm_wl_acc"] == matched / 2
    assert scores["giellm_wl_p"] == (matched / sum(pred.values()) if pred else 0.0)
    assert scores["giellm_all_acc"] == float(matched == 2)


def test_missing_model_is_a_clear_error(ginza, tmp_path):
    missing = tmp_path / "no-such-model.gguf"
    ginza.add_pipe("giellm", config={"task": "scnm", "backend": {
        "@giellm_backends": "giellm.LlamaCpp.v1", "model_path": str(missing)}})
    with pytest.raises(FileNotFoundError, match="no-such-model.gguf"):
        ginza("東京に行く。")


def test_score_cats_switch(ginza, tiny_model_dir):
    backend = {"@giellm_backends": "giellm.HF.v1", "model": str(tiny_model_dir), "max_new_tokens": 6}
    cats = {}
    for score in (True, False):
        ginza.add_pipe("giellm", config={"task": "scnm", "backend": backend, "score_cats": score})
        cats[score] = ginza(TEXTS[0]).cats
        ginza.remove_pipe("giellm")
    assert sum(cats[True].values()) == pytest.approx(1.0)
    assert 0.0 < max(cats[True].values()) < 1.0  # real probabilities, not one-hot
    assert set(cats[False].values()) <= {0.0, 1.0}  # the generated label only
