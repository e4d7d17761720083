"""The `augment` command: label-schema training pairs (`corpora.augment`)."""
from pathlib import Path
from typing import Optional

import typer

from ._util import app, echo_json, fail_cleanly


@app.command("augment")
def augment_cli(
    input_path: Path = typer.Argument(..., metavar="IN", help="Converted JSONL (from `convert`), with structured fields"),
    output_path: Path = typer.Argument(..., metavar="OUT", help="Training pairs in the schema form (with OUT's sidecar)"),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="The task of the records, if IN's sidecar does not define it"),
    variants: int = typer.Option(1, "--variants", help="Augmented variants per sentence"),
    original: bool = typer.Option(True, "--original/--no-original", help="Also each sentence with all labels under their own names"),
    subset: float = typer.Option(0.5, "--subset", help="Probability that a variant lists only some of the labels"),
    fold: float = typer.Option(0.3, "--fold", help="Probability that a variant folds a group of labels into one"),
    rename: float = typer.Option(0.3, "--rename", help="Probability that a listed label goes by another of its names"),
    names: Optional[Path] = typer.Option(None, "--names", help="JSON of other names and folds (default: the public corpora's labels)"),
    seed: int = typer.Option(0, "--seed"),
    skip_errors: bool = typer.Option(False, "--skip-errors", help="Skip malformed records (counted) instead of failing"),
) -> None:
    """Write training pairs that list the word labels in the input (the
    schema form) and vary them: random subsets (the others' spans
    unlabelled), other names, folded groups, shuffled order. A model
    trained on them reads the labels it is asked for."""
    with fail_cleanly():
        from ..corpora.augment import SchemaAugmentation, augment_file, load_label_names

        label_names, folds = load_label_names(names)
        cfg = SchemaAugmentation(
            variants=variants, keep_original=original, subset=subset, fold=fold, rename=rename,
            names=label_names, folds=folds,
        )
        echo_json(augment_file(input_path, output_path, cfg, task=task, seed=seed, skip_errors=skip_errors))
