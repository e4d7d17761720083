"""Training throughput before / after, interleaved: rounds of (old path, new
path), each a `train --profile` run in its own process on the same data,
batch, seed and LoRA recipe, so that the load other jobs put on a shared
machine hits both alike; then the dev loss of each path after the same
training steps (the same sequences, hence the same real tokens).

    python scripts/train_throughput.py TRAIN.jsonl DEV.jsonl --base-model DIR \
        --rounds 3 --steps 6 --dev-steps 30 [--dev-every 10] --json out.json

Paths (extra `train` options; both default to the NER recipe: LoRA r 16,
alpha 32, all linear layers, lr 5e-4, batch 8, max_length 256):

    old: --no-packing --no-autocast    (right padding, fp32 adapter matmuls),
         OMP_WAIT_POLICY set empty (OpenMP's default spinning, as before)
    new: the defaults                  (packing, bf16 autocast on a bf16 CPU,
                                        OMP_WAIT_POLICY=PASSIVE)

`--old-args` / `--new-args` override them (e.g. a --threads setting);
`--path "NAME|ARGS|ENV"` adds a path between them. The
profile skips each run's first step; peak RSS is each process's own.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RECIPE = ["--lora-r", "16", "--lora-alpha", "32", "--lora-targets", "all-linear", "--lr", "5e-4",
          "--batch-size", "8", "--max-length", "256", "--patience", "0", "--seed", "0"]


def run(train: Path, dev: Path, base: str, steps: int, extra: list, with_dev: bool, env: dict,
        every: int = 0) -> dict:
    with tempfile.TemporaryDirectory(prefix="giellm-throughput-") as out:
        cmd = [sys.executable, "-m", "spacy_giellm", "train", str(train)] + ([str(dev)] if with_dev else []) + [
            "--output", out, "--base-model", base, "--max-steps", str(steps), "--eval-steps", str(every or steps),
            "--profile", *RECIPE, *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
        if proc.returncode != 0:
            raise RuntimeError(" ".join(cmd) + "\n" + proc.stderr[-3000:])
        manifest = json.loads((Path(out) / "manifest.json").read_text())
    p = manifest["profile"]
    return {"s_per_step": p["seconds_per_step"], "real_tokens_per_s": p["real_tokens_per_s"],
            "padding_share": p["padding_share"], "peak_rss_mb": p["peak_rss_mb"],
            "achieved_gflops": p["achieved_gflops"], "time_split": p["time_split"],
            "dev_loss": manifest["dev_loss"], "train_loss": manifest["train_loss"], "steps": manifest["steps"],
            "dev_curve": manifest.get("dev_curve"), "real_tokens_per_step": p.get("real_tokens_per_step"),
            "threads": manifest.get("threads"), "command": " ".join(cmd[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train", type=Path)
    ap.add_argument("dev", type=Path)
    ap.add_argument("--base-model", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6, help="steps per throughput run (the first is not counted)")
    ap.add_argument("--dev-steps", type=int, default=30, help="steps before the dev loss (0: skip)")
    ap.add_argument("--dev-every", type=int, default=0, help="the dev loss every this many steps (a curve; 0: once)")
    ap.add_argument("--old-args", default="--no-packing --no-autocast")
    ap.add_argument("--new-args", default="")
    ap.add_argument("--old-env", default="OMP_WAIT_POLICY=",
                    help="NAME=VALUE,... for the old path's process (empty OMP_WAIT_POLICY: OpenMP's default)")
    ap.add_argument("--new-env", default="")
    ap.add_argument("--path", action="append", default=[], metavar="NAME|ARGS|ENV",
                    help="a further path between old and new: its name, train options and NAME=VALUE,... "
                         "(e.g. PYTHONPATH=<a worktree> runs another commit's code)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    more = [(p.split("|") + ["", ""])[:3] for p in args.path]
    paths = {"old": shlex.split(args.old_args), **{n: shlex.split(a) for n, a, _ in more},
             "new": shlex.split(args.new_args)}
    envs = {name: dict(kv.split("=", 1) for kv in value.split(",") if kv)
            for name, value in (("old", args.old_env), *((n, e) for n, _, e in more), ("new", args.new_env))}
    report: dict = {"rounds": [], "paths": {k: " ".join(v) for k, v in paths.items()}, "env": envs}
    for r in range(args.rounds):
        row = {}
        for name, extra in paths.items():
            row[name] = run(args.train, args.dev, args.base_model, args.steps, extra, False, envs[name])
            print(r, name, {k: row[name][k] for k in ("s_per_step", "real_tokens_per_s", "peak_rss_mb")}, flush=True)
        report["rounds"].append(row)
    for name in paths:
        runs = [row[name] for row in report["rounds"]]
        report[name] = {k: statistics.median(x[k] for x in runs)
                        for k in ("s_per_step", "real_tokens_per_s", "padding_share", "achieved_gflops")}
        report[name]["peak_rss_mb"] = max(x["peak_rss_mb"] for x in runs)
    report["speedup_real_tokens_per_s"] = round(
        report["new"]["real_tokens_per_s"] / report["old"]["real_tokens_per_s"], 2)
    report["speedup_per_round"] = [round(row["new"]["real_tokens_per_s"] / row["old"]["real_tokens_per_s"], 2)
                                   for row in report["rounds"]]
    if args.dev_steps:
        report["dev"] = {name: run(args.train, args.dev, args.base_model, args.dev_steps, extra, True, envs[name],
                                   args.dev_every) for name, extra in paths.items()}
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
