"""The `evaluate-model` command: a trained model on held-out data, through the component."""
from pathlib import Path
from typing import List, Optional

import typer

from ._util import app, fail_cleanly


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
    task: Optional[List[str]] = typer.Option(
        None, "--task", "-t", help="A task file (.json/.toml) or built-in name whose definition wins over the model's and the data's (repeatable)"
    ),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Response cache database (sqlite): a re-run skips the model for prompts it has answered"),
    setting: Optional[List[str]] = typer.Option(
        None, "--setting", "-s", help="A backend setting NAME=VALUE, repeatable: any field of the backend's settings "
        "(spacy_giellm.backends.settings: HFSettings for a model or adapter dir, LlamaCppSettings for a .gguf), "
        "e.g. -s jump_forward=false -s n_parallel=1"
    ),
) -> None:
    """Run a trained model through the `giellm` component on held-out data;
    TL / WL / ALL accuracy and P/R/F per task (the paper's Table 1).

    The records' tasks are the model's own (stored by `train`), else those
    DATA's sidecar carries, else built-in; --task overrides."""
    with fail_cleanly():
        from ..evaluation import markdown_table
        from ..training.evaluate import evaluate

        settings = {}
        for item in setting or []:
            name, eq, value = item.partition("=")
            if not eq or not name.strip():
                raise ValueError(f"--setting {item!r}: write NAME=VALUE")
            settings[name.strip()] = value
        metrics = evaluate(
            model, data, output_dir, nlp_base=nlp_base, max_new_tokens=max_new_tokens,
            batch_size=batch_size, limit=limit, title=title, constrained=constrained,
            tasks=list(task or []), cache=cache, settings=settings,
        )
        typer.echo(markdown_table(metrics))
        typer.echo(markdown_table(metrics, level="pipeline").split("\n", 2)[2])
        if "cache" in metrics:
            typer.echo("cache {path}: {hits} hits, {misses} misses".format(**metrics["cache"]))
