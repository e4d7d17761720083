"""Training-step variants against each other in one process: the same LoRA
model (the NER recipe: r 16, alpha 32, all linear layers, no dropout,
packed rows with each sequence's own attention, bf16 base under CPU
autocast) runs forward + backward on the same batches, the variants
alternating batch by batch (their order flipping every batch), so that
a machine's changing speed hits all of them alike. Reports s/step, real
tokens/s and the median per-batch speed-up against the first variant.

    python scripts/train_step_ab.py TRAIN.jsonl --base-model DIR [--batches 16] \\
        [--variants peft-cast,default,compiled-norms,no-adapters]

Variants:
    default         PEFT's LoRA layers and transformers' norms, adapter
                    inputs kept bf16 (what `train` ran before `fused`)
    peft-cast       PEFT's own input casting: each adapter's input copied to
                    float32, and back to bf16 by autocast (before adc341b)
    compiled-norms  default, with the model's RMSNorm forward compiled by
                    torch.compile (inductor, dynamic shapes; needs a C++
                    compiler; not what `train` does)
    no-adapters     the adapters switched off, gradients still through every
                    layer: the frozen base's own cost, a bound for any
                    adapter speed-up
    fused           default, with each LoRA layer and each RMS norm one
                    autograd function (`training.fused`: what `train` runs)
    fused-lora      the LoRA layers alone fused
    fused-norms     the norms alone fused
    trimmed         default, with the allocator's freed memory given back
                    before each step (`train` does it every 20 steps): what
                    faulting the pages in again costs a step
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from contextlib import ExitStack, contextmanager


@contextmanager
def variant(name, model, adapters):
    """The model set up as `name` for the duration."""
    import torch

    from spacy_giellm.training.train import keep_adapter_inputs_bf16

    with ExitStack() as undo:
        if name != "peft-cast":
            keep_adapter_inputs_bf16(model)
            undo.callback(lambda: [setattr(layer, "cast_input_dtype_enabled", True) for layer in adapters])
        if name == "no-adapters":
            for layer in adapters:
                layer._disable_adapters = True
            undo.callback(lambda: [setattr(layer, "_disable_adapters", False) for layer in adapters])
            embeddings = model.get_base_model().get_input_embeddings()
            hook = embeddings.register_forward_hook(lambda _m, _a, out: out.requires_grad_(True))
            undo.callback(hook.remove)
        if name.startswith("fused"):
            from spacy_giellm.training.fused import fuse_layers, unfuse_layers

            fuse_layers(model, lora=name != "fused-norms", norms=name != "fused-lora")
            undo.callback(unfuse_layers, model)
        if name == "trimmed":
            from spacy_giellm.training.callbacks import release_freed_memory

            release_freed_memory()
        if name == "compiled-norms":
            norm_classes = {type(m) for m in model.modules() if type(m).__name__.endswith("RMSNorm")}
            for cls in norm_classes:
                if not hasattr(cls, "_eager_forward"):
                    cls._eager_forward = cls.forward
                    cls._compiled_forward = torch.compile(cls.forward, dynamic=True)
                cls.forward = cls._compiled_forward
                undo.callback(setattr, cls, "forward", cls._eager_forward)
        yield


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train")
    ap.add_argument("--base-model", required=True)
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--variants", default="peft-cast,default,compiled-norms,no-adapters")
    args = ap.parse_args()
    names = args.variants.split(",")
    unknown = set(names) - {"default", "peft-cast", "compiled-norms", "no-adapters", "trimmed", "fused", "fused-lora", "fused-norms"}
    if unknown:
        sys.exit(f"unknown variants: {sorted(unknown)}")

    import torch
    from peft.tuners.lora.layer import LoraLayer
    from transformers import AutoTokenizer

    from spacy_giellm.training.config import TrainConfig
    from spacy_giellm.training.data import PackCollator, read_records, tokenize_records
    from spacy_giellm.training.loss import output_token_loss
    from spacy_giellm.training.packed_attention import use_packed_attention
    from spacy_giellm.training.train import _load_model

    random.seed(0)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.base_model)
    examples = tokenize_records(read_records(args.train), tokenizer, 256).examples
    random.shuffle(examples)
    collate = PackCollator(tokenizer.pad_token_id)
    size = args.batch_size
    batches = [collate(examples[i * size:(i + 1) * size]) for i in range(args.batches + 1)]
    # the recipe is TrainConfig's defaults, loaded as `train` loads it
    model = _load_model(args.base_model, TrainConfig(), "lora", torch.bfloat16)
    use_packed_attention(model)
    model.train()
    adapters = [m for m in model.modules() if isinstance(m, LoraLayer)]

    def step(name, batch):
        with variant(name, model, adapters):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = output_token_loss(model, batch)
            loss.backward()
            seconds = time.perf_counter() - start
            model.zero_grad(set_to_none=True)
        return seconds

    for name in names:  # warm-up (and compiling) on a batch not timed
        step(name, batches[0])
    seconds = {name: [] for name in names}
    for i, batch in enumerate(batches[1:]):
        for name in (names if i % 2 == 0 else names[::-1]):
            seconds[name].append(step(name, batch))
    tokens = sum(int(b["input_ids"].numel()) for b in batches[1:])
    print(f"{args.batches} batches of {size} sequences, {tokens / args.batches:.0f} real tokens a batch, "
          f"{torch.get_num_threads()} threads")
    for name in names:
        speedup = statistics.median(a / b for a, b in zip(seconds[names[0]], seconds[name]))
        print(f"{name:15s} {sum(seconds[name]) / args.batches:.3f} s/step  {tokens / sum(seconds[name]):6.1f} "
              f"real tokens/s  median speed-up against {names[0]}: {speedup:.3f}")


if __name__ == "__main__":
    main()
