"""The `convert` command: a corpus to the project's JSONL or a DocBin."""
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer

from ._util import app, fail_cleanly, progress


@app.command("convert")
def convert_cli(
    reader: str = typer.Argument(..., help="jsonl, pairs, docbin, stockmark-ner or jrte-pn"),
    input_path: Path = typer.Argument(..., metavar="IN", help="The corpus file"),
    output_path: Path = typer.Argument(..., metavar="OUT", help="A .jsonl file, or .spacy for a DocBin"),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Built-in task name or task file (.json/.toml)"),
    skip_errors: bool = typer.Option(False, "--skip-errors", help="Skip malformed records, counting them"),
    split: Optional[List[str]] = typer.Option(None, "--split", help="jrte-pn: keep only this split (repeatable)"),
    input_col: Optional[str] = typer.Option(None, "--input-col", help="pairs: input column (default: input)"),
    output_col: Optional[str] = typer.Option(None, "--output-col", help="pairs: output column (default: output)"),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="For .spacy output: the spaCy pipeline (name or path) or language code (blank) whose tokenizer makes the Docs; default one token per character"
    ),
) -> None:
    """Convert a corpus to the project's JSONL or to a spaCy DocBin.

    The JSONL holds the input/output pairs and the structured annotations;
    OUT's sidecar (train.jsonl -> train.tasks.json) the definitions of the
    tasks its records name, so that later commands need no --task."""
    with fail_cleanly():
        import inspect

        from ..corpora import (
            ReadReport, corpus_tasks, get_reader, task_resolver, tasks_path, write_docbin, write_jsonl,
        )

        read = get_reader(reader)
        options: Dict[str, Any] = {"task": task, "split": split or None, "input_col": input_col, "output_col": output_col}
        options = {k: v for k, v in options.items() if v is not None}
        accepted = inspect.signature(read).parameters
        extra = sorted(set(options) - set(accepted))
        if extra:
            flags = ", ".join("--" + k.replace("_", "-") for k in extra)
            raise ValueError(f"the {reader} reader does not take {flags}")
        if not input_path.exists():
            raise FileNotFoundError(f"no such file: {input_path}")
        # One resolver for the reader and the writer: --task first, then the
        # tasks the input carries (jsonl, docbin), then the built-in ones.
        carries_tasks = reader in ("jsonl", "docbin")
        resolver = task_resolver(task, input_path if carries_tasks else None)
        if carries_tasks:
            options["task"] = resolver
        elif task is not None:
            options["task"] = resolver.default  # the file read once
        report = ReadReport(path=str(input_path))
        annotations = progress(
            read(input_path, skip_errors=skip_errors, report=report, **options), input_path, "convert"
        )
        if output_path.suffix == ".spacy":
            nlp = None
            if model:
                import spacy

                nlp = spacy.load(model) if not (len(model) <= 3 and model.isalpha()) else spacy.blank(model)
            written = write_docbin(annotations, output_path, resolver, nlp=nlp, skip_errors=skip_errors, report=report)
        else:
            if model:
                raise ValueError("--model applies to .spacy output only")
            written = write_jsonl(annotations, output_path, resolver, skip_errors=skip_errors, report=report)
        typer.echo(report.summary())
        typer.echo(f"wrote {written} records to {output_path}")
        typer.echo(f"wrote the definitions of task(s) {sorted(corpus_tasks(output_path))} to {tasks_path(output_path)}")
