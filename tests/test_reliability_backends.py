"""Bad inputs to the in-process backends: a doc whose prompt does not fit the
model's context (split by token count, or skipped and reported, never the
whole batch lost), and corrupt model files (named, with what to do)."""
from __future__ import annotations

import shutil

import pytest
import spacy
from spacy.tokens import Doc

pytestmark = pytest.mark.slow

TEXTS = [
    "松友美佐紀は、日本のバドミントン選手。",
    "東京は日本の首都",
    "猫",
    "富士山は静岡県と山梨県にまたがる活火山である。",
    "高橋礼華は、奈良県出身のバドミントン選手である。",
    "人工知能の技術は急速に進歩している。",
    "京都には多くの寺院や神社がある。",
    "北海道は日本の最北端に位置する。",
    "夏目漱石は明治時代の小説家である。",
    "彼は毎朝七時に起きて、駅まで歩く。",
]
EMOJI = "😀" * 1000  # about 4,000 tokens with byte fallback, under max_chars


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    torch = pytest.importorskip("torch")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _backend_config(kind, tiny_model_dir, tiny_gguf):
    if kind == "llamacpp":
        return {"@giellm_backends": "giellm.LlamaCpp.v1", "model_path": str(tiny_gguf), "n_ctx": 256,
                "max_new_tokens": 8, "n_threads": 1}
    return {"@giellm_backends": "giellm.HF.v1", "model": str(tiny_model_dir), "device": "cpu", "max_new_tokens": 8}


@pytest.fixture(params=["llamacpp", "hf"])
def fitted_pipe(request, tiny_model_dir):
    # the GGUF fixture only where it is used: it needs llama.cpp
    tiny_gguf = request.getfixturevalue("tiny_gguf") if request.param == "llamacpp" else None
    nlp = spacy.blank("xx")
    pipe = nlp.add_pipe("giellm", config={
        "task": "scnm", "store_output": True,
        "backend": _backend_config(request.param, tiny_model_dir, tiny_gguf),
    })
    yield nlp, pipe
    close = getattr(pipe.backend, "close", None)
    if close:
        close()


def test_a_doc_too_long_for_the_context_is_skipped_not_the_batch(fitted_pipe):
    nlp, pipe = fitted_pipe
    backend = pipe.backend
    one_token = Doc(nlp.vocab, words=[EMOJI])  # no sentence or token end to cut at
    prompt_tokens = pipe._prompt_tokens([EMOJI])[0]
    assert prompt_tokens > backend.max_prompt_tokens()  # the premise: it cannot fit whole
    docs = [nlp.make_doc(t) for t in TEXTS[:5]] + [one_token] + [nlp.make_doc(t) for t in TEXTS[5:]]

    out = list(nlp.pipe(docs, batch_size=16))

    assert [d.text for d in out] == [d.text for d in docs]
    skipped = [d for d in out if d._.giellm_output.get("skipped")]
    assert skipped == [out[5]]
    assert str(backend.max_prompt_tokens()) in out[5]._.giellm_output["skipped"]
    assert out[5].cats == {} and list(out[5].ents) == []
    annotated = [d for d in out if d._.giellm_output["outputs"]]
    assert len(annotated) == 10 and all(d.cats for d in annotated)
    assert pipe.stats["skipped_docs"] == 1


def test_a_long_prompt_is_split_by_token_count(fitted_pipe):
    """1,000 emoji are under max_chars but ~4,000 tokens: cut at token ends
    into parts whose prompts fit, and annotated."""
    nlp, pipe = fitted_pipe
    doc = Doc(nlp.vocab, words=list(EMOJI), spaces=[False] * len(EMOJI))
    [out] = list(nlp.pipe([doc]))
    parts = out._.giellm_output["outputs"]
    assert "skipped" not in out._.giellm_output and len(parts) > 1
    assert pipe.stats["token_splits"] == 1 and pipe.stats["skipped_docs"] == 0
    assert out.cats


def test_llamacpp_refuses_a_prompt_without_room_for_max_new_tokens(tiny_gguf):
    """A prompt 1 token under n_ctx used to yield 1 new token, silently."""
    from spacy_giellm.backends.llamacpp import make_llamacpp_backend

    backend = make_llamacpp_backend(model_path=str(tiny_gguf), n_ctx=64, max_new_tokens=16, n_threads=1)
    try:
        # a prompt that fits n_ctx but leaves less than max_new_tokens
        prompt = next(p for p in ("猫" * k for k in range(1, 200)) if 48 < backend.count_prompt_tokens([p])[0] < 64)
        with pytest.raises(ValueError, match="max_new_tokens=16"):
            backend.generate([prompt])
    finally:
        backend.close()


# ------------------------------------------------------------ model files


@pytest.mark.parametrize("damage", ["safetensors-header", "safetensors-truncated", "tokenizer-json"])
def test_corrupt_model_file_is_named(tiny_model_dir, tmp_path, damage):
    from spacy_giellm.backends.hf import make_hf_backend

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    if damage.startswith("safetensors"):
        bad = model / "model.safetensors"
        data = bad.read_bytes()
        bad.write_bytes(b"\xff" * 16 + data[16:] if damage == "safetensors-header" else data[: len(data) // 2])
    else:
        bad = model / "tokenizer.json"
        bad.write_text('{"version": "1.0", oops', encoding="utf-8")
    with pytest.raises(ValueError) as err:
        make_hf_backend(model=str(model), device="cpu").load()
    assert str(bad) in str(err.value) and "download it again" in str(err.value)
