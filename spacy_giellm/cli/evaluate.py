"""The `evaluate` command: predictions against gold, from two JSONL files."""
import json
from pathlib import Path
from typing import Optional

import typer

from ._util import app, fail_cleanly


@app.command("evaluate")
def evaluate_cli(
    gold_path: Path = typer.Argument(..., metavar="GOLD", help="Gold JSONL"),
    pred_path: Path = typer.Argument(..., metavar="PRED", help="Predicted JSONL: raw 'output' strings or structured fields"),
    task: Optional[str] = typer.Option(
        None, "--task", "-t", help="Task name or file: for records naming none, and over the definition GOLD's sidecar (GOLD.tasks.json) carries"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON"),
) -> None:
    """Score predictions against gold: TL / WL / ALL accuracy and P/R/F in %.

    Records are matched by line order (and checked by text)."""
    with fail_cleanly():
        from ..evaluation import score_prediction_files
        from ..scoring import format_scores

        scores = score_prediction_files(gold_path, pred_path, task)
        if as_json:
            typer.echo(json.dumps(scores, ensure_ascii=False, indent=2))
            return
        values = dict(format_scores(scores))
        typer.echo(f"{'':<5}{'acc':>8}{'P':>8}{'R':>8}{'F':>8}   (%)")
        for level in ("tl", "wl", "all"):
            cells = [values.get(f"{level}_{m}", "-") for m in ("acc", "p", "r", "f")]
            typer.echo(f"{level.upper():<5}" + "".join(f"{c:>8}" for c in cells))
        counts = scores["counts"]
        typer.echo(
            f"{counts['sequences']} sequences, {counts['wl_gold']} gold / {counts['wl_pred']} predicted "
            f"word-level items, {counts['pred_parse_problems']} predictions with parse problems"
        )
