"""The whole pipeline on GiNZA docs with the real backends and a tiny local model.

The tiny model has random weights, so its generations are nonsense: these
tests check the plumbing (prompts from the core format, batched generation,
parsing, alignment, serialization, evaluation), and that both backends give
the component the same outputs.
"""
import spacy
import pytest
from spacy.training import Example

from spacy_giellm import build_input, get_task

TEXTS = ["松友美佐紀は、日本のバドミントン選手。", "", "トヨタは東京に本社を置く。", "花子は大阪で働いている。"]


@pytest.fixture(scope="module")
def ginza():
    return spacy.load("ja_ginza")


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
        nlp = spacy.load("ja_ginza")
        pipe = nlp.add_pipe("giellm", config={"task": "scnm", "backend": backend, "store_output": True,
                                               "batch_size": 2})
        docs = list(nlp.pipe(TEXTS))
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
                assert sum(doc.cats.values()) == pytest.approx(1.0) or sum(doc.cats.values()) == 0.0
                assert all(e.label_ in task.word_levels[0].labels for e in doc.ents)
    assert outputs["hf"] == outputs["gguf"]


def test_pipeline_round_trip_and_evaluate(ginza, tiny_model_dir, tmp_path):
    backend = {"@giellm_backends": "giellm.HF.v1", "model": str(tiny_model_dir), "max_new_tokens": 8}
    nlp = spacy.load("ja_ginza")
    nlp.add_pipe("giellm", config={"task": "ner-ja", "backend": backend, "store_output": True})
    before = [d._.giellm_output["outputs"] for d in nlp.pipe(TEXTS[:1])]
    nlp.to_disk(tmp_path / "pipe")
    weights = [p for p in (tmp_path / "pipe" / "giellm").rglob("*") if p.suffix in (".safetensors", ".bin", ".gguf")]
    assert weights == []  # the pipeline refers to the model, it does not copy it
    loaded = spacy.load(tmp_path / "pipe")
    assert loaded.config["components"]["giellm"]["backend"]["model"] == str(tiny_model_dir)
    assert [d._.giellm_output["outputs"] for d in loaded.pipe(TEXTS[:1])] == before
    examples = [Example.from_dict(loaded.make_doc(TEXTS[0]), {"entities": [(0, 5, "人名"), (7, 9, "地名")]})]
    scores = loaded.evaluate(examples)
    assert {"giellm_wl_acc", "giellm_wl_p", "giellm_wl_r", "giellm_wl_f", "giellm_all_acc"} <= set(scores)
    assert 0.0 <= scores["giellm_wl_acc"] <= 1.0


def test_missing_model_is_a_clear_error(ginza, tmp_path):
    nlp = spacy.load("ja_ginza")
    missing = tmp_path / "no-such-model.gguf"
    nlp.add_pipe("giellm", config={"task": "scnm", "backend": {
        "@giellm_backends": "giellm.LlamaCpp.v1", "model_path": str(missing)}})
    with pytest.raises(FileNotFoundError, match="no-such-model.gguf"):
        nlp("東京に行く。")


def test_score_cats_switch(ginza, tiny_model_dir):
    backend = {"@giellm_backends": "giellm.HF.v1", "model": str(tiny_model_dir), "max_new_tokens": 6}
    cats = {}
    for score in (True, False):
        nlp = spacy.load("ja_ginza")
        nlp.add_pipe("giellm", config={"task": "scnm", "backend": backend, "score_cats": score})
        cats[score] = nlp(TEXTS[0]).cats
    assert sum(cats[True].values()) == pytest.approx(1.0)
    assert 0.0 < max(cats[True].values()) < 1.0  # real probabilities, not one-hot
    assert set(cats[False].values()) <= {0.0, 1.0}  # the generated label only
