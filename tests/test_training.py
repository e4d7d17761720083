"""Training data, training runs (from scratch, LoRA, resume), evaluation and
export on tiny CPU models built from the shipped samples."""
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from spacy_giellm.training.data import (  # noqa: E402
    IGNORE_INDEX,
    PadCollator,
    TrainingDataError,
    encode_pair,
    read_records,
    split_and_mix,
    tokenize_records,
)
from spacy_giellm.training.train import (  # noqa: E402
    BaseModelNotFound,
    TinyModelConfig,
    TrainConfig,
    train,
)

ASSETS = Path(__file__).parent.parent / "assets"
TINY = TinyModelConfig(vocab_size=400, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def _write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf8")
    return path


@pytest.fixture(scope="module")
def sample_splits(tmp_path_factory):
    """The shipped stockmark + tcree samples, converted and split."""
    from spacy_giellm.corpora import read_corpus, write_jsonl

    root = tmp_path_factory.mktemp("corpus")
    ner, _ = read_corpus("stockmark-ner", ASSETS / "stockmark-ner-sample.json")
    tcree, _ = read_corpus("pairs", ASSETS / "tcree-sample.jsonl", task="tcree")
    write_jsonl(ner[:80], root / "ner.jsonl")
    write_jsonl(tcree, root / "tcree.jsonl")
    counts = split_and_mix(
        {"ner-ja": root / "ner.jsonl", "tcree": root / "tcree.jsonl"}, root, dev=4, test=4, seed=1
    )
    return root, counts


def test_split_and_mix_refuses_a_size_for_no_dataset(tmp_path, sample_splits):
    root, counts = sample_splits
    with pytest.raises(ValueError, match=r"unknown dataset\(s\) \['ner'\]"):
        split_and_mix({"ner-ja": root / "ner.jsonl"}, tmp_path / "out", sizes={"ner": 10}, dev=4, test=4)
    assert not (tmp_path / "out" / "train.jsonl").exists()
    assert counts["train"]  # the fixture's own mix went through


def test_encode_pair_masks_the_prompt(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prompt, output = "東京は日本の首都。Named Entity Recognition", "Named Entity Recognition:地名;東京"
    ex = encode_pair(tok, prompt, output)
    p = tok(prompt)["input_ids"]
    o = tok(output, add_special_tokens=False)["input_ids"]
    assert p[0] == tok.bos_token_id
    assert ex["input_ids"] == p + o + [tok.eos_token_id]
    assert ex["labels"] == [IGNORE_INDEX] * len(p) + o + [tok.eos_token_id]
    batch = PadCollator(tok.pad_token_id)([ex, encode_pair(tok, "京都", "x")])
    short = batch["labels"][1].tolist()
    assert short[-1] == IGNORE_INDEX and batch["attention_mask"][1].tolist()[-1] == 0
    assert batch["input_ids"].shape == batch["labels"].shape


def test_too_long_sequences_are_counted_not_truncated(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    recs = [
        {"task": "ner-ja", "input": "東京", "output": "x"},
        {"task": "ner-ja", "input": "東京" * 200, "output": "x"},
    ]
    data = tokenize_records(recs, tok, max_length=64)
    assert (len(data.examples), data.too_long, data.too_long_per_task) == (1, 1, {"ner-ja": 1})
    assert data.longest > 64
    with pytest.raises(TrainingDataError, match="longer than max_length"):
        tokenize_records(recs[1:], tok, max_length=64)


def test_clear_data_errors(tmp_path):
    with pytest.raises(TrainingDataError, match="not found"):
        read_records(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf8")
    with pytest.raises(TrainingDataError, match="no records"):
        read_records(tmp_path / "empty.jsonl")
    path = _write(tmp_path / "a.jsonl", [{"task": "ner-ja", "input": "a", "output": "b"}])
    with pytest.raises(TrainingDataError, match="no examples for task"):
        read_records(path, tasks=["tcree"])
    with pytest.raises(TrainingDataError, match="no records"):
        train(tmp_path / "empty.jsonl", None, tmp_path / "out", TrainConfig(from_scratch=True))


def test_missing_base_model_fails_before_training(tmp_path, sample_splits):
    root, _ = sample_splits
    with pytest.raises(BaseModelNotFound, match="not found"):
        train(root / "train.jsonl", None, tmp_path / "out", TrainConfig(base_model=str(tmp_path / "nope")))
    assert not (tmp_path / "out").exists()


def test_split_keeps_a_texts_records_together(sample_splits):
    root, counts = sample_splits
    assert counts["test"]["ner-ja"] == 4 and counts["test"]["tcree"] >= 4
    texts = {s: {r["text"] for r in read_records(root / f"{s}.jsonl")} for s in ("train", "dev", "test")}
    assert not texts["train"] & texts["test"] and not texts["dev"] & texts["test"]


@pytest.mark.slow
def test_train_from_scratch_resume_evaluate_export(tmp_path, sample_splits):
    from transformers import AutoModelForCausalLM

    root, _ = sample_splits
    out = tmp_path / "run"
    cfg = TrainConfig(
        from_scratch=True, max_steps=2, eval_steps=2, batch_size=8, learning_rate=1e-3,
        max_length=256, tiny=TINY, logging_steps=1,
    )
    first = train(root / "train.jsonl", root / "dev.jsonl", out, cfg)
    assert first["steps"] == 2 and first["resumed_from"] is None and first["dev_loss"] > 0
    assert first["dev_curve"] == [[2, first["dev_loss"]]]  # every evaluation: step, loss
    assert json.loads((out / "manifest.json").read_text())["data"]["train"]["examples"] > 0
    assert (out / "model" / "model.safetensors").is_file()
    AutoModelForCausalLM.from_pretrained(str(out / "model"))

    # A rerun with more steps resumes from the checkpoint, not from step 0.
    cfg.max_steps = 4
    second = train(root / "train.jsonl", root / "dev.jsonl", out, cfg)
    assert second["resumed_from"].endswith("checkpoint-2") and second["steps"] == 4

    from spacy_giellm.training.evaluate import evaluate

    metrics = evaluate(out / "model", root / "test.jsonl", tmp_path / "eval", max_new_tokens=8, limit=2)
    assert set(metrics["results"]) == {"ner-ja", "tcree (Event Extraction)", "tcree (Relation Extraction)", "ALL"}
    assert "| ner-ja | 2 |" in (tmp_path / "eval" / "metrics.md").read_text(encoding="utf8")

    pytest.importorskip("llama_cpp")
    from spacy_giellm.training.export import export_gguf, verify_gguf
    from spacy_giellm.training.gguf_export import ConverterNotFoundError

    try:
        export_gguf(out / "model", tmp_path / "m.gguf", "f32")
    except ConverterNotFoundError as err:
        pytest.skip(f"llama.cpp converter unavailable: {err}")
    report = verify_gguf(tmp_path / "m.gguf", out / "model", root / "test.jsonl", n=2, max_new_tokens=12)
    assert report["prompts"] == 6 and report["mismatches"] == []


@pytest.mark.slow
def test_lora_train_and_merge(tmp_path, sample_splits, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from spacy_giellm.training.export import merge

    root, _ = sample_splits
    cfg = TrainConfig(
        base_model=str(tiny_model_dir), max_steps=1, eval_steps=1, batch_size=4, max_length=256,
        lora_r=2, lora_alpha=4,
    )
    manifest = train(root / "train.jsonl", root / "dev.jsonl", tmp_path / "lora", cfg)
    assert manifest["kind"] == "lora-adapter" and manifest["trainable_parameters"] < manifest["parameters"]
    assert (tmp_path / "lora" / "model" / "adapter_model.safetensors").is_file()
    info = merge(tmp_path / "lora" / "model", tmp_path / "merged")
    assert info["merged"]
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert not any("lora" in name for name, _ in model.named_parameters())


@pytest.mark.slow
def test_time_budget_stops_training(tmp_path, sample_splits):
    root, _ = sample_splits
    cfg = TrainConfig(
        from_scratch=True, max_steps=1000, max_time=0.5, eval_steps=1000, batch_size=8,
        max_length=256, tiny=TINY,
    )
    manifest = train(root / "train.jsonl", root / "dev.jsonl", tmp_path / "t", cfg)
    assert 1 <= manifest["steps"] < 1000 and manifest["dev_loss"] is not None


@pytest.mark.slow
def test_ginza_vectors_initialise_embeddings(tmp_path, tiny_model_dir):
    pytest.importorskip("ja_ginza")
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from spacy_giellm.training.vectors import init_embeddings_from_vectors

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model_dir)
    before = AutoModelForCausalLM.from_pretrained(str(model_dir)).get_input_embeddings().weight.clone()
    info = init_embeddings_from_vectors(model_dir)
    after = AutoModelForCausalLM.from_pretrained(str(model_dir)).get_input_embeddings().weight
    changed = int((before != after).any(dim=1).sum())
    assert info["used"] and changed == info["pieces_with_vectors"] > 64
    assert torch.isfinite(after).all()


def test_bf16_base_only_for_cpu_lora():
    from spacy_giellm.training.train import _bf16_base

    assert _bf16_base("bf16", cuda=False, mode="lora")
    assert not _bf16_base("fp32", cuda=False, mode="lora")
    # Full / from-scratch training updates every weight: never bf16 weights.
    assert not _bf16_base("bf16", cuda=False, mode="full")
    with pytest.raises(ValueError, match="precision"):
        _bf16_base("fp16", cuda=False, mode="lora")
    with pytest.raises(ValueError, match="precision"):
        train(ASSETS / "tcree-sample.jsonl", None, "unused", TrainConfig(from_scratch=True, precision="half"))


def test_gradient_checkpointing_on_cpu_recomputes_and_gives_the_same_training(tmp_path, sample_splits, tiny_model_dir, monkeypatch):
    """`--gradient-checkpointing` on a CPU: each decoder layer runs again in
    the backward pass, and the run's losses are those of the plain run."""
    from transformers.models.llama import modeling_llama

    calls = []
    # The MLP inside each decoder layer: the layer's own forward is what
    # transformers wraps to checkpoint, so it must stay unpatched.
    forward = modeling_llama.LlamaMLP.forward

    def counting(self, *args, **kwargs):
        calls.append(self.training)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", counting)
    root, _ = sample_splits
    runs = {}
    for checkpointing in (False, True):
        calls.clear()
        cfg = TrainConfig(
            base_model=str(tiny_model_dir), max_steps=2, eval_steps=100, batch_size=4, max_length=256,
            lora_r=2, lora_alpha=4, patience=0, gradient_checkpointing=checkpointing,
        )
        manifest = train(root / "train.jsonl", None, tmp_path / f"ckpt{checkpointing}", cfg)
        runs[checkpointing] = (manifest, sum(calls))
    (plain, plain_calls), (ckpt, ckpt_calls) = runs[False], runs[True]
    assert not plain["gradient_checkpointing"] and ckpt["gradient_checkpointing"]
    assert plain_calls > 0 and ckpt_calls == 2 * plain_calls
    assert ckpt["train_loss"] == pytest.approx(plain["train_loss"], abs=1e-5)


def test_pack_rows_first_fit_longest_first():
    from spacy_giellm.training.data import pack_rows

    assert pack_rows([3, 5, 2], 0) == [[0, 1, 2]]
    assert pack_rows([3, 5, 2, 4], 8) == [[1, 0], [3, 2]]
    assert pack_rows([9, 2], 8) == [[0], [1]]  # too long for a row: a row alone
    assert pack_rows([], 8) == [] and pack_rows([], 0) == []


PACK_PAIRS = [
    # longer than the tiny Gemma 3's sliding window (32 tokens): a window
    # that reached into the previous packed sequence would change the loss
    ("松友美佐紀は、日本のバドミントン選手。" * 3 + "Named Entity Recognition", "Named Entity Recognition:人名;松友美佐紀:地名;日本"),
    ("部屋がとても清潔で快適に過ごせました。Sentiment Classification", "<positive>Sentiment Classification"),
    ("東京は日本の首都。Named Entity Recognition", "Named Entity Recognition:地名;東京:地名;日本"),
    ("トヨタは日産と電池の共同開発で提携した。" * 2 + "Relation Extraction", "Relation Extraction:トヨタ,提携,日産"),
]


@pytest.mark.parametrize("attention", ["masked", "per-sequence"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("row_tokens", [0, 60])
def test_packed_rows_give_the_padded_batchs_loss_and_gradients(arch, row_tokens, attention, tiny_model_dir,
                                                                tiny_gemma_dir):
    """The same sequences packed (attention inside each sequence, positions
    restarting; one row, or rows of at most 60 tokens with padding) and
    right-padded: the same output-token loss and LoRA gradients, whether
    the packed rows' attention is transformers' masked sdpa or ours, one
    sequence at a time (`packed_attention`)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spacy_giellm.training.data import PackCollator
    from spacy_giellm.training.loss import output_token_loss

    model_dir = tiny_model_dir if arch == "llama" else tiny_gemma_dir
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if arch == "gemma3":
        assert "sliding_attention" in model.config.layer_types and model.config.sliding_window == 32
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():  # a fresh LoRA B is zero: make the adapters matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    examples = [encode_pair(tok, i, o) for i, o in PACK_PAIRS]
    assert max(len(e["input_ids"]) for e in examples) > 40
    padded = PadCollator(tok.pad_token_id)(examples)
    packed = PackCollator(tok.pad_token_id, row_tokens)(examples)
    assert "attention_mask" not in packed
    n_labelled = int((padded["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert int((packed["labels"][:, 1:] != IGNORE_INDEX).sum()) == n_labelled
    if row_tokens:
        longest = max(len(e["input_ids"]) for e in examples)
        assert packed["input_ids"].shape[0] > 1 and packed["input_ids"].shape[1] <= max(row_tokens, longest)
        assert (packed["input_ids"] == tok.pad_token_id).any()  # a narrower row is padded
    else:
        assert packed["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in examples))
    model.train(False)
    results = []
    for batch in (padded, packed):
        if batch is packed and attention == "per-sequence":
            from spacy_giellm.training.packed_attention import use_packed_attention

            use_packed_attention(model)
        model.zero_grad()
        loss = output_token_loss(model, batch, torch.tensor(n_labelled))
        loss.backward()
        results.append((loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    (ref_loss, ref_grads), (loss, grads) = results
    assert abs(ref_loss - loss) < 1e-5
    assert ref_grads and set(grads) == set(ref_grads)
    for k in ref_grads:
        assert torch.allclose(ref_grads[k], grads[k], atol=1e-5, rtol=1e-4), k
    # Without position_ids, the packed row would be one long sequence.
    unpacked = {k: v for k, v in packed.items() if k != "position_ids"}
    if attention == "per-sequence":
        model.set_attn_implementation("sdpa")
    assert abs(float(output_token_loss(model, unpacked, torch.tensor(n_labelled))) - ref_loss) > 1e-3


def test_sequence_bounds_start_where_positions_restart():
    from spacy_giellm.training.packed_attention import sequence_bounds

    assert sequence_bounds([0, 1, 2, 0, 1, 0, 0, 1]) == [(0, 3), (3, 5), (5, 6), (6, 8)]
    assert sequence_bounds([5, 6, 7]) == [(0, 3)]  # a row may start anywhere
    assert sequence_bounds([3, 3]) == [(0, 1), (1, 2)]
    assert sequence_bounds([]) == []


def test_per_sequence_attention_refuses_what_it_cannot_honour():
    import torch

    from spacy_giellm.training.packed_attention import packed_attention_forward

    q = torch.zeros(1, 2, 4, 8)
    positions = torch.arange(4)[None]
    with pytest.raises(ValueError, match="a mask"):
        packed_attention_forward(None, q, q, q, torch.ones(1, 1, 4, 4, dtype=torch.bool), position_ids=positions)
    with pytest.raises(ValueError, match="no position_ids"):
        packed_attention_forward(None, q, q, q, None)
    with pytest.raises(ValueError, match="a cache"):
        packed_attention_forward(None, q[:, :, :1], q, q, None, position_ids=positions[:, :1])


def test_packed_training_runs_as_the_padded_one(tmp_path, sample_splits, tiny_gemma_dir):
    """`train` with packing (the default) and without: the same steps, the
    same sequences per step, the same losses up to float rounding."""
    root, _ = sample_splits
    runs = {}
    for packing in (False, True):
        cfg = TrainConfig(
            base_model=str(tiny_gemma_dir), max_steps=2, eval_steps=2, batch_size=4, max_length=256,
            lora_r=2, lora_alpha=4, lora_dropout=0.0, patience=0, packing=packing, precision="fp32",
            profile=packing,
        )
        runs[packing] = train(root / "train.jsonl", root / "dev.jsonl", tmp_path / f"pack{packing}", cfg)
    padded, packed = runs[False], runs[True]
    assert packed["packing"] and not padded["packing"] and packed["steps"] == padded["steps"] == 2
    assert packed["train_loss"] == pytest.approx(padded["train_loss"], abs=1e-4)
    assert packed["dev_loss"] == pytest.approx(padded["dev_loss"], abs=1e-4)
    profile = packed["profile"]
    assert profile["steps"] == 1 and profile["sequences_per_step"] == 4 and profile["padding_share"] == 0
    assert profile["real_tokens_per_s"] > 0 and profile["peak_rss_mb"] > 0
    assert set(profile["time_split"]) == {"data", "forward", "backward", "optimizer", "other"}


def test_cpu_autocast_follows_the_bf16_base_unless_asked():
    from spacy_giellm.training.train import _cpu_autocast

    assert _cpu_autocast(TrainConfig(), cuda=False, bf16_base=True)
    assert not _cpu_autocast(TrainConfig(), cuda=False, bf16_base=False)
    assert not _cpu_autocast(TrainConfig(autocast=False), cuda=False, bf16_base=True)
    assert _cpu_autocast(TrainConfig(autocast=True), cuda=False, bf16_base=False)
    assert not _cpu_autocast(TrainConfig(autocast=True), cuda=True, bf16_base=True)


def test_adapter_inputs_stay_bf16_under_cpu_autocast(tiny_gemma_dir):
    """A bf16 base with float32 adapters under CPU autocast: with PEFT's
    input casting off, no adapter makes a float32 copy of its input (the
    RMS norms' own float32 work remains), and the
    loss and adapter gradients are exactly those with it on (autocast
    casts the copy straight back to bf16 for the matmul)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import AutoTokenizer

    from spacy_giellm.training.train import keep_adapter_inputs_bf16

    class Float32Copies(TorchDispatchMode):
        """Counts copies of (1, positions, width) activations made in float32."""

        def __init__(self, positions):
            super().__init__()
            self.positions, self.count = positions, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
                if out.dtype == torch.float32 and out.dim() == 3 and out.shape[1] == self.positions:
                    self.count += 1
            return out

    tok = AutoTokenizer.from_pretrained(str(tiny_gemma_dir))
    batch = PadCollator(tok.pad_token_id)([encode_pair(tok, i, o) for i, o in PACK_PAIRS[:2]])
    runs = []
    for keep_bf16 in (False, True):
        model = _tiny_lora_model(tiny_gemma_dir, torch.bfloat16)
        adapters = 7 * model.config.num_hidden_layers
        if keep_bf16:
            assert keep_adapter_inputs_bf16(model) == adapters
        counter = Float32Copies(batch["input_ids"].shape[1])
        with counter:
            loss, grads = _lora_gradients(model, batch, autocast=True)
        assert grads and all(g.dtype == torch.float32 for g in grads.values())
        runs.append((loss, grads, counter.count))
    (ref_loss, ref_grads, cast_copies), (loss, grads, copies) = runs
    assert cast_copies - copies >= adapters  # each adapter's input, once in the forward at least
    assert loss == ref_loss
    for k in ref_grads:
        assert torch.equal(ref_grads[k], grads[k]), k


def _tiny_lora_model(model_dir, dtype):
    """The recipe's LoRA model (r 4) on a tiny base in `dtype`, seeded, its
    LoRA B random (a fresh B is zero: make the adapters matter)."""
    import torch

    from spacy_giellm.training.train import _load_model

    torch.manual_seed(0)
    model = _load_model(str(model_dir), TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0), "lora", dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def _lora_gradients(model, batch, autocast):
    import torch

    from spacy_giellm.training.loss import output_token_loss

    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = output_token_loss(model, batch)
    loss.backward()
    return loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _relative_error(grads, reference):
    import torch

    diff = torch.cat([(grads[k].float() - reference[k].float()).flatten() for k in reference])
    return float(diff.norm() / torch.cat([reference[k].float().flatten() for k in reference]).norm())


@pytest.mark.parametrize("packed", [False, True])
def test_fused_layers_give_peft_s_loss_and_gradients(packed, tiny_gemma_dir, monkeypatch):
    """Each LoRA layer and each RMS norm as one autograd function
    (`training.fused`): in float32 the loss and the adapters' gradients are
    those of PEFT's and transformers' layers up to float rounding; on a
    bf16 base under CPU autocast they are no farther from the float32 ones
    than theirs (the low-rank term is added in the product's accumulator,
    not rounded first). Every adapter and norm runs fused."""
    import torch
    from transformers import AutoTokenizer

    from spacy_giellm.training import fused
    from spacy_giellm.training.data import PackCollator
    from spacy_giellm.training.train import keep_adapter_inputs_bf16

    calls = []
    apply = fused._LoraLinearFunction.apply
    monkeypatch.setattr(fused._LoraLinearFunction, "apply", lambda *a: calls.append(1) or apply(*a))
    tok = AutoTokenizer.from_pretrained(str(tiny_gemma_dir))
    examples = [encode_pair(tok, i, o) for i, o in PACK_PAIRS]
    batch = (PackCollator if packed else PadCollator)(tok.pad_token_id)(examples)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = _tiny_lora_model(tiny_gemma_dir, dtype)
        keep_adapter_inputs_bf16(model)
        layers = model.config.num_hidden_layers
        # 7 linear layers and 6 norms a layer, and the final norm
        counts = {"lora": 7 * layers, "norm": 6 * layers + 1}
        results[dtype, "peft"] = _lora_gradients(model, batch, dtype == torch.bfloat16)
        assert not calls
        assert fused.fuse_layers(model) == counts
        results[dtype, "fused"] = _lora_gradients(model, batch, dtype == torch.bfloat16)
        assert len(calls) == counts["lora"]
        calls.clear()
        assert fused.unfuse_layers(model) == counts
        assert _lora_gradients(model, batch, dtype == torch.bfloat16)[0] == results[dtype, "peft"][0]
    (ref_loss, ref), (loss, fused) = results[torch.float32, "peft"], results[torch.float32, "fused"]
    assert loss == pytest.approx(ref_loss, abs=1e-6) and set(fused) == set(ref)
    for k in ref:
        assert fused[k].dtype == torch.float32
        assert torch.allclose(fused[k], ref[k], atol=1e-6, rtol=1e-4), k
    (peft_loss, peft_bf16), (fused_loss, fused_bf16) = results[torch.bfloat16, "peft"], results[torch.bfloat16, "fused"]
    assert fused_loss != peft_loss  # the bf16 arithmetic did change...
    assert abs(fused_loss - ref_loss) <= abs(peft_loss - ref_loss) + 1e-3
    peft_error, fused_error = _relative_error(peft_bf16, ref), _relative_error(fused_bf16, ref)
    assert 0 < fused_error <= 1.1 * peft_error  # ...and is no farther from float32 than PEFT's


def test_fused_lora_runs_peft_s_forward_where_it_does_not_fuse(monkeypatch):
    """Dropout, a merged or disabled adapter, two active adapters, extra
    arguments: PEFT's own forward, with its exact result."""
    import torch
    from peft import LoraConfig, get_peft_model

    from spacy_giellm.training import fused

    calls = []
    apply = fused._LoraLinearFunction.apply
    monkeypatch.setattr(fused._LoraLinearFunction, "apply", lambda *a: calls.append(1) or apply(*a))

    def model(dropout=0.0):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 4))
        peft = get_peft_model(net, LoraConfig(r=2, lora_alpha=4, lora_dropout=dropout, target_modules=["0", "2"]))
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
        return peft

    x = torch.randn(3, 5, 8)

    def check(peft, fused_calls, x=x):
        peft.train(False)
        expected = peft(x)
        calls.clear()
        assert fused.fuse_layers(peft) == {"lora": 2, "norm": 0}
        got = peft(x)
        assert len(calls) == fused_calls
        if fused_calls == 0:
            assert torch.equal(got, expected)
        else:
            assert torch.allclose(got, expected, atol=1e-6)
        fused.unfuse_layers(peft)

    check(model(), 2)  # the plain case fuses
    check(model(dropout=0.1), 0)
    merged = model()
    merged.base_model.model[0].merge()
    check(merged, 1)
    disabled = model()
    with disabled.disable_adapter():
        check(disabled, 0)
    bf16_base = model()  # and float32 adapters, without autocast: PEFT runs them in float32
    for layer in (bf16_base.base_model.model[0], bf16_base.base_model.model[2]):
        layer.base_layer.to(torch.bfloat16)
    check(bf16_base, 0, x.to(torch.bfloat16))
    two = model()
    two.add_adapter("other", LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"]))
    two.base_model.set_adapter(["default", "other"])
    check(two, 0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_gemma_norm_gives_the_same_output_and_gradients(dtype):
    """The fused norm's output is transformers' Gemma 3 norm's bit for bit;
    the input's and a trained weight's gradients equal its up to rounding."""
    import torch
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    from spacy_giellm.training import fused

    dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    norm = Gemma3RMSNorm(48, eps=1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.normal_(0, 0.3)
    x = torch.randn(2, 7, 3, 48, dtype=dtype) * 4
    grad = torch.randn(2, 7, 3, 48, dtype=dtype)
    runs = []
    for fuse in (False, True):
        if fuse:
            assert fused.fuse_layers(norm) == {"lora": 0, "norm": 1} and type(norm).__name__ == "FusedGemma3RMSNorm"
        leaf = x.clone().requires_grad_(True)
        norm.weight.grad = None
        out = norm(leaf)
        out.backward(grad)
        runs.append((out.detach(), leaf.grad, norm.weight.grad))
    assert fused.unfuse_layers(norm) == {"lora": 0, "norm": 1} and type(norm) is Gemma3RMSNorm
    (out, grad_x, grad_w), (fused_out, fused_grad_x, fused_grad_w) = runs
    assert fused_out.dtype == dtype and torch.equal(fused_out, out)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    assert torch.allclose(fused_grad_x.float(), grad_x.float(), rtol=tolerance, atol=tolerance)
    assert torch.allclose(fused_grad_w.float(), grad_w.float(), rtol=tolerance, atol=tolerance * 10)
    # frozen (LoRA): no weight gradient asked for, none computed
    norm.weight.requires_grad_(False)
    norm.weight.grad = None
    fused.fuse_layers(norm)
    leaf = x.clone().requires_grad_(True)
    norm(leaf).backward(grad)
    assert torch.equal(leaf.grad, fused_grad_x) and norm.weight.grad is None


def test_lora_under_cpu_autocast_keeps_float32_adapters(tmp_path, sample_splits, tiny_gemma_dir):
    """bf16 base + bf16 autocast: the run trains, its losses are those of
    the run without autocast up to bf16 rounding, and the adapter it saves
    is float32."""
    from safetensors.torch import load_file

    root, _ = sample_splits
    runs = {}
    for autocast in (False, True):
        cfg = TrainConfig(
            base_model=str(tiny_gemma_dir), max_steps=2, eval_steps=2, batch_size=4, max_length=256,
            lora_r=2, lora_alpha=4, lora_dropout=0.0, patience=0, precision="bf16", autocast=autocast,
        )
        runs[autocast] = train(root / "train.jsonl", root / "dev.jsonl", tmp_path / f"ac{autocast}", cfg)
    assert runs[True]["cpu_autocast_bf16"] and not runs[False]["cpu_autocast_bf16"]
    assert runs[True]["dev_loss"] == pytest.approx(runs[False]["dev_loss"], rel=0.02)
    weights = load_file(str(tmp_path / "acTrue" / "model" / "adapter_model.safetensors"))
    assert weights and all(str(w.dtype) == "torch.float32" for w in weights.values())


def _rss_mb() -> float:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_freed_memory_goes_back_to_the_system_every_n_steps_and_after_evaluation(monkeypatch):
    """Blocks freed below a live one stay in glibc's heap (RSS keeps them)
    until `release_freed_memory`; the callback calls it every n steps and
    after each evaluation."""
    import ctypes
    import types

    from spacy_giellm.training import callbacks

    libc = ctypes.CDLL(None)
    if not hasattr(libc, "malloc_trim") or not Path("/proc/self/statm").exists():
        pytest.skip("no glibc malloc_trim here")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    block = 64 * 1024  # under glibc's mmap threshold: from the heap
    blocks = [libc.malloc(block) for _ in range(3200)]  # 200 MB
    for b in blocks:
        libc.memset(b, 1, block)
    for b in blocks[:-1]:  # the last one keeps the heap from shrinking by itself
        libc.free(b)
    held = _rss_mb()
    assert callbacks.release_freed_memory()
    assert held - _rss_mb() > 100
    libc.free(blocks[-1])

    calls = []
    monkeypatch.setattr(callbacks, "release_freed_memory", lambda: calls.append(1) or True)
    callback = callbacks.memory_release_callback(every=3)
    for step in range(1, 8):
        control = types.SimpleNamespace(should_evaluate=step == 5)
        callback.on_step_end(None, types.SimpleNamespace(global_step=step), control)
    assert len(calls) == 3  # steps 3 and 6, and before the evaluation at step 5
    callback.on_evaluate(None, None, None)
    assert len(calls) == 4


def test_busy_cores_reads_the_work_of_other_processes_now():
    import subprocess
    import sys

    from spacy_giellm.util import busy_cores

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert busy_cores(0.5) >= 0.6  # one process spinning: about one core
    finally:
        spinner.kill()
        spinner.wait()


def test_train_command_restarts_with_openmp_waiting_chosen_by_load(monkeypatch):
    import os
    import runpy
    import sys

    calls = []
    monkeypatch.setattr(os, "execv", lambda exe, argv: calls.append(argv))
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "argv", ["x", "train", "a.jsonl"])
    main = runpy.run_path(str(Path(__file__).parent.parent / "spacy_giellm" / "__main__.py"), run_name="not_main")
    # an idle machine: a short spin; a busy one: threads sleep while they wait
    main["_openmp_waiting_for_training"].__globals__["busy_cores"] = lambda: 0.2
    main["_openmp_waiting_for_training"]()
    assert os.environ["GOMP_SPINCOUNT"] == main["SHORT_SPIN"] and "OMP_WAIT_POLICY" not in os.environ
    assert calls[0][-3:] == ["spacy_giellm", "train", "a.jsonl"]
    calls.clear()
    monkeypatch.delenv("GOMP_SPINCOUNT")
    main["_openmp_waiting_for_training"].__globals__["busy_cores"] = lambda: 1.3
    main["_openmp_waiting_for_training"]()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in os.environ and len(calls) == 1
    calls.clear()
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice stays
    main["_openmp_waiting_for_training"]()
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "")  # even empty
    main["_openmp_waiting_for_training"]()
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setattr(sys, "argv", ["x", "bench"])
    main["_openmp_waiting_for_training"]()  # other commands: untouched
    assert calls == [] and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ)
