"""Shared pytest fixtures.

The tiny model fixtures build everything offline from tests/data/tiny_texts.txt:
a SentencePiece tokenizer, a random-weight Llama (transformers), and its GGUF
conversion made with llama.cpp's own converter. They are session-scoped, so
the build (a few seconds) and the conversion happen once per test session.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI (CI=true) draws the same property-test examples every run, so that
# whether a submission lands does not depend on chance; a local run draws new
# ones each time and so keeps exploring.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI", "").lower() == "true":
    settings.load_profile("ci")

DATA_DIR = Path(__file__).parent / "data"

# Short Japanese sentences plus GIELLM-format strings (input + task markers,
# output with type:value pairs) to train the tiny tokenizer on.
TINY_TEXTS = [
    line
    for line in (DATA_DIR / "tiny_texts.txt").read_text(encoding="utf-8").splitlines()
    if line.strip()
]

# GIELLM format markers kept as single tokenizer pieces.
GIELLM_USER_SYMBOLS = [
    "<社会>",
    "<文芸>",
    "<学問>",
    "<技術>",
    "<自然>",
    "Named Entity Recognition",
    "Relation Extraction",
    "Text Classification",
    ":人名;",
    ":地名;",
    ":法人名;",
]

TINY_MODEL_KWARGS = dict(
    vocab_size=1000,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    intermediate_size=128,
    max_position_embeddings=512,
    seed=0,
)


@pytest.fixture(scope="session")
def tiny_texts():
    return list(TINY_TEXTS)


def _tiny_model(builder: str, out, **kwargs):
    """A tiny random model + tokenizer from `training.tiny.<builder>`."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("sentencepiece")
    from spacy_giellm.training import tiny

    return getattr(tiny, builder)(out, TINY_TEXTS, user_symbols=GIELLM_USER_SYMBOLS, **kwargs)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Directory with a tiny random Llama + tokenizer, loadable by transformers."""
    return _tiny_model("build_tiny_llama", tmp_path_factory.mktemp("tiny-llama"), **TINY_MODEL_KWARGS)


def _gguf_or_skip(model_dir, out):
    """`model_dir` converted to an f32 GGUF with llama.cpp's converter."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    from spacy_giellm.training.gguf_export import ConverterNotFoundError, convert_to_gguf

    try:
        return convert_to_gguf(model_dir, out, outtype="f32")
    except ConverterNotFoundError as e:  # offline and nothing cached
        pytest.skip(f"llama.cpp converter unavailable: {e}")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir, tmp_path_factory):
    """The tiny model converted to an f32 GGUF with llama.cpp's converter."""
    return _gguf_or_skip(tiny_model_dir, tmp_path_factory.mktemp("tiny-gguf") / "tiny-f32.gguf")


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory):
    """A tiny random Gemma 3 (the pretrained base's architecture) + tokenizer."""
    return _tiny_model("build_tiny_gemma3", tmp_path_factory.mktemp("tiny-gemma3"), vocab_size=1000, seed=0)


@pytest.fixture(scope="session")
def tiny_gemma_gguf(tiny_gemma_dir, tmp_path_factory):
    """The tiny Gemma 3 as a GGUF, the form the real base model comes in."""
    return _gguf_or_skip(tiny_gemma_dir, tmp_path_factory.mktemp("tiny-gemma3-gguf") / "tiny-gemma3-f32.gguf")


@pytest.fixture(scope="session")
def package_inputs(tiny_gguf, tmp_path_factory):
    """What `package` needs, small: the tiny GGUF, a blank base pipeline (no
    GiNZA: fast) and TCREE data, whose two instruction words make two giellm
    pipes on one GGUF."""
    import spacy
    from typer.testing import CliRunner

    from spacy_giellm.cli import app

    d = tmp_path_factory.mktemp("package-inputs")
    base = d / "base"
    spacy.blank("xx").to_disk(base)
    data = d / "tcree.jsonl"
    assets = Path(__file__).parent.parent / "assets"
    result = CliRunner().invoke(app, ["convert", "pairs", str(assets / "tcree-sample.jsonl"), str(data), "--task", "tcree"])
    assert result.exit_code == 0, result.output
    return {"gguf": Path(tiny_gguf), "base": base, "data": data}
