"""`train --profile`: where a training step's time goes, and how much of the
machine it uses.

Per optimizer step it records the time of data + collation
(`get_batch_samples`), forward (`compute_loss`), backward (the rest of
`training_step`), the optimizer step, and the tokens: real (the sequences'
own) and computed (the rows' width x rows, padding included). The summary
(steps after the first, which pays one-off warm-up) gives real tokens/s, the
padding share of the computed tokens, achieved GFLOPS against the machine's
measured fp32 and bf16 GEMM rates (`bench.limits.machine_rates`) and the
process's peak RSS.

FLOPs of a step (useful work only: real tokens, never padding), with P the
frozen base's matmul parameters outside the embedding / head, A the LoRA
adapters' parameters, V x d the head, n the real tokens, m the labelled
(output) tokens, and per sequence of length L and per layer with H x Dh
attention width and window W (L for global layers):

    body      4 P n        forward 2 P n + backward 2 P n (activation
                           gradients only: the base is frozen, no weight
                           gradients)
    adapters  6 A n        forward 2, activation grad 2, weight grad 2
    head      4 V d m      applied at labelled positions only (training.loss),
                           forward + activation gradient
    attention 6 H Dh L min(L, W)   QK^T and AV over the causal half
                           (2 x 2 x L x min(L, W) / 2 x H Dh forward),
                           backward twice the forward

Full fine-tuning would add 2 P n of weight gradients; it is not counted
(`profile` reports what the recipe runs: LoRA).
"""
from __future__ import annotations

import resource
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

PHASES = ("data", "forward", "backward", "optimizer")


class CountingCollator:
    """A collator that counts the real and computed tokens of what it builds."""

    def __init__(self, collator: Any):
        self.collator = collator
        self.real = 0
        self.computed = 0
        self.lengths: List[int] = []

    def __call__(self, features: List[Dict[str, List[int]]]) -> Dict[str, Any]:
        batch = self.collator(features)
        self.lengths += [len(f["input_ids"]) for f in features]
        self.real += sum(len(f["input_ids"]) for f in features)
        self.computed += int(batch["input_ids"].numel())
        return batch


def model_shape(model: Any) -> Dict[str, Any]:
    """P, A, V x d and the attention shape of a (PEFT-wrapped) causal LM."""
    from .loss import _causal_lm

    lm = _causal_lm(model)
    cfg = lm.config
    head = lm.get_output_embeddings().weight
    embed = lm.get_input_embeddings().weight
    lora = body = 0
    for name, p in lm.named_parameters():
        if "lora_" in name:
            lora += p.numel()
        elif p.ndim == 2 and p.data_ptr() not in (head.data_ptr(), embed.data_ptr()):
            body += p.numel()
    n_heads = getattr(cfg, "num_attention_heads", 0)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // max(1, n_heads)
    n_layers = getattr(cfg, "num_hidden_layers", 0)
    layer_types = list(getattr(cfg, "layer_types", None) or ["full_attention"] * n_layers)
    window = getattr(cfg, "sliding_window", None)
    windows = [window if (t == "sliding_attention" and window) else None for t in layer_types]
    return {"body_params": body, "lora_params": lora, "head_params": int(head.numel()),
            "attention_width": n_heads * head_dim, "layer_windows": windows}


def step_flops(shape: Dict[str, Any], lengths: Sequence[int], labelled: int) -> float:
    """The useful FLOPs of one step over sequences of `lengths` with
    `labelled` output tokens (the formula in the module docstring)."""
    n = sum(lengths)
    flops = 4.0 * shape["body_params"] * n + 6.0 * shape["lora_params"] * n + 4.0 * shape["head_params"] * labelled
    for window in shape["layer_windows"]:
        flops += sum(6.0 * shape["attention_width"] * L * min(L, window or L) for L in lengths)
    return flops


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def profiling_trainer(trainer_cls: Any) -> Any:
    """`trainer_cls` that records each training step's time split and tokens
    in `self.step_records` (its data collator must be a `CountingCollator`)."""

    class ProfilingTrainer(trainer_cls):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.step_records: List[Dict[str, float]] = []
            self._current: Optional[Dict[str, float]] = None

        def _record(self) -> Dict[str, float]:
            if self._current is None:
                self._current = {k: 0.0 for k in PHASES + ("real", "computed", "labelled", "start")}
                self._current["start"] = time.perf_counter()
                self._current["lengths"] = []  # type: ignore[assignment]
            return self._current

        def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> Any:
            rec = self._record()
            collator = self.data_collator
            before = (collator.real, collator.computed, len(collator.lengths))
            t = time.perf_counter()
            batches, n_items = super().get_batch_samples(epoch_iterator, num_batches, device)
            rec["data"] += time.perf_counter() - t
            rec["real"] += collator.real - before[0]
            rec["computed"] += collator.computed - before[1]
            rec["lengths"] += collator.lengths[before[2]:]  # type: ignore[operator]
            rec["labelled"] += sum(int((b["labels"][..., 1:] != -100).sum()) for b in batches)
            return batches, n_items

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not model.training:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            t = time.perf_counter()
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            self._record()["forward"] += time.perf_counter() - t
            return out

        def training_step(self, model, inputs, num_items_in_batch=None):
            rec = self._record()
            forward_before = rec["forward"]
            t = time.perf_counter()
            loss = super().training_step(model, inputs, num_items_in_batch)
            rec["backward"] += time.perf_counter() - t - (rec["forward"] - forward_before)
            return loss

    return ProfilingTrainer


def profile_callback(trainer_ref: List[Any]) -> Any:
    """A TrainerCallback timing the optimizer step and closing each step's
    record (`trainer_ref[0]`: the ProfilingTrainer, set once it exists)."""
    from transformers import TrainerCallback

    class StepProfile(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.t = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):
            trainer_ref[0]._record()["optimizer"] += time.perf_counter() - self.t

        def on_step_end(self, args, state, control, **kwargs):
            trainer = trainer_ref[0]
            rec = trainer._record()
            rec["total"] = time.perf_counter() - rec.pop("start")
            trainer.step_records.append(rec)
            trainer._current = None

    return StepProfile()


STEP_NUMBERS = ("total",) + PHASES + ("real", "computed", "labelled", "flops", "sequences")


def step_numbers(records: Sequence[Dict[str, Any]], shape: Dict[str, Any]) -> List[List[float]]:
    """Each step record as the numbers of STEP_NUMBERS (its FLOPs computed
    from its sequences' lengths)."""
    return [
        [float(r[k]) for k in ("total",) + PHASES + ("real", "computed", "labelled")]
        + [step_flops(shape, r["lengths"], int(r["labelled"])), float(len(r["lengths"]))]
        for r in records
    ]


def gather_processes(steps: List[List[float]], rss_mb: float) -> Tuple[List[List[List[float]]], List[float]]:
    """Every process's step numbers and peak RSS, in rank order: this
    process's alone outside a data-parallel run. Each process of a run
    makes the same optimizer steps (the gradients are averaged at each);
    should the counts differ, the steps all have are kept."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [steps], [rss_mb]
    world = dist.get_world_size()
    counts = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([len(steps)]))
    n = min(int(c) for c in counts)
    mine = torch.tensor([row for row in steps[:n]] + [[rss_mb] * len(STEP_NUMBERS)], dtype=torch.float64)
    rows = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(rows, mine)
    return [r[:-1].tolist() for r in rows], [float(r[-1, 0]) for r in rows]


def combine_processes(per_process: Sequence[Sequence[Sequence[float]]]) -> List[Dict[str, float]]:
    """The machine's steps: a step lasts as long as its slowest process
    (they wait for each other at the gradient average), its phases are the
    first process's, and its tokens, FLOPs and sequences are everyone's."""
    summed = {"real", "computed", "labelled", "flops", "sequences"}
    combined = []
    for rows in zip(*per_process):
        step = {k: (sum(r[i] for r in rows) if k in summed else rows[0][i]) for i, k in enumerate(STEP_NUMBERS)}
        step["total"] = max(r[0] for r in rows)
        combined.append(step)
    return combined


def summarize(records: Sequence[Dict[str, float]], shape: Dict[str, Any], rates: Dict[str, float],
              rss_mb: Sequence[float]) -> Dict[str, Any]:
    """Means over the steps after the first (all of them if there is one),
    of `records` as `combine_processes` gives them; `rss_mb`: each
    process's peak RSS."""
    steps = list(records[1:] if len(records) > 1 else records)
    if not steps:
        return {"steps": 0}
    rss = list(rss_mb)
    total = sum(r["total"] for r in steps)
    real = sum(r["real"] for r in steps)
    computed = sum(r["computed"] for r in steps)
    flops = sum(r["flops"] for r in steps)
    split = {k: round(sum(r[k] for r in steps) / total, 3) for k in PHASES}
    split["other"] = round(1 - sum(split.values()), 3)
    gflops = flops / total / 1e9
    return {
        "steps": len(steps),
        "steps_skipped": len(records) - len(steps),
        "processes": len(rss),
        "seconds_per_step": round(total / len(steps), 3),
        "sequences_per_step": round(sum(r["sequences"] for r in steps) / len(steps), 2),
        "real_tokens_per_step": round(real / len(steps), 1),
        "real_tokens_per_s": round(real / total, 1),
        "padding_share": round(1 - real / computed, 4) if computed else None,
        "gflop_per_step": round(flops / len(steps) / 1e9, 1),
        "achieved_gflops": round(gflops, 1),
        "fp32_gemm_gflops": round(rates["fp32"], 1),
        "bf16_gemm_gflops": round(rates["bf16"], 1),
        "share_of_fp32_gemm": round(gflops / rates["fp32"], 3),
        "share_of_bf16_gemm": round(gflops / rates["bf16"], 3),
        "time_split": split,
        # one process's peak (the most any of them held), and all of them together
        "peak_rss_mb": round(max(rss)),
        "peak_rss_mb_all_processes": round(sum(rss)),
        "model": {k: v for k, v in shape.items() if k != "layer_windows"},
    }


def gemm_rates(threads: Optional[int] = None) -> Dict[str, float]:
    """fp32 and bf16 GEMM GFLOPS at `threads` (torch's current thread count)."""
    import torch

    from ..bench.limits import machine_rates

    threads = threads or torch.get_num_threads()
    return {dtype: machine_rates(threads, dtype=dtype)["matmul_gflops"] for dtype in ("fp32", "bf16")}


def format_profile(p: Dict[str, Any]) -> str:
    if not p.get("steps"):
        return "profile: no step to report"
    split = ", ".join(f"{k} {v:.0%}" for k, v in p["time_split"].items())
    return (
        f"profile ({p['steps']} steps after the first): {p['seconds_per_step']} s/step, "
        f"{p['real_tokens_per_s']} real tokens/s, padding {p['padding_share']:.1%} of computed tokens; "
        f"{p['achieved_gflops']} GFLOPS achieved = {p['share_of_fp32_gemm']:.0%} of fp32 GEMM "
        f"({p['fp32_gemm_gflops']}), {p['share_of_bf16_gemm']:.0%} of bf16 GEMM ({p['bf16_gemm_gflops']}); "
        f"time: {split}; peak RSS {p['peak_rss_mb']} MB"
        + (f" a process ({p['processes']} processes)" if p.get("processes", 1) > 1 else "")
    )


__all__ = ["CountingCollator", "profiling_trainer", "profile_callback", "step_numbers", "gather_processes",
           "combine_processes", "summarize", "model_shape", "step_flops", "peak_rss_mb", "gemm_rates", "format_profile"]
