"""The `annotate` command: a pipeline with giellm components over texts or a file."""
import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from ._util import app, echo_json, fail_cleanly


class OnError(str, Enum):
    skip = "skip"
    stop = "stop"


@app.command("annotate")
def annotate_cli(
    pipeline: Path = typer.Argument(..., help="A pipeline dir with giellm components (`package`)"),
    texts: List[str] = typer.Argument(None, help="Texts to annotate and print (instead of --input)"),
    input_path: Optional[Path] = typer.Option(
        None, "--input", "-i", help="records.jsonl (a \"text\" field per line) or a text file (one text per line)"
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="out.jsonl (a row per text) or out.spacy (a DocBin keeping the extensions)"
    ),
    html: Optional[Path] = typer.Option(None, "--html", help="One HTML page showing every text's annotations"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Texts per nlp.pipe batch (default: the pipeline's)"),
    n_process: int = typer.Option(1, "--n-process", help="Processes for nlp.pipe, each loading its own model (-1: one per CPU)"),
    on_error: OnError = typer.Option(
        OnError.stop, "--on-error", help="A bad input line: stop the run (naming it), or skip it and report it at the end"
    ),
    scores: Optional[Path] = typer.Option(None, "--scores", help="metrics.json to print with the output"),
) -> None:
    """Annotate texts. With --input and --output/--html: write every text's
    annotations to a file (a progress bar on a terminal; bad lines named by
    line number; outputs written atomically) and print a summary. Otherwise
    print cats, entities, sentiment words, relations and events per text."""
    with fail_cleanly():
        from ..annotate import annotate, annotate_file, read_texts
        from ..corpora.report import ReadReport

        if output is not None or html is not None:
            if input_path is None:
                raise ValueError("--output and --html annotate a file: give it with --input")
            if texts:
                raise ValueError("give texts as arguments or a file with --input and --output/--html, not both")
            summary = annotate_file(
                pipeline, input_path, output, html, batch_size=batch_size, n_process=n_process,
                skip_errors=on_error == OnError.skip,
            )
            echo_json(summary)
        else:
            lines = list(texts or [])
            report = ReadReport(path=str(input_path))
            if input_path is not None:
                lines += [text for text, _ in read_texts(input_path, report, on_error == OnError.skip)]
            if not lines:
                raise ValueError("no texts: pass them as arguments or with --input")
            for row in annotate(pipeline, lines):
                typer.echo(row["text"])
                for key in ("cats", "entities", "sentiments", "relations", "events", "problems"):
                    if row[key]:
                        typer.echo(f"  {key}: {json.dumps(_brief(key, row[key]), ensure_ascii=False)}")
            for reason in report.reasons:
                typer.echo(f"skipped {reason}", err=True)
        if scores is not None:
            from ..evaluation import markdown_table

            typer.echo("\n" + markdown_table(json.loads(scores.read_text(encoding="utf8"))))


def _brief(key: str, value: object) -> object:
    """What a terminal line shows: cats rounded, mentions as (text, label),
    tuples as (label, args)."""
    if key == "cats":
        return {k: round(v, 3) for k, v in value.items()}  # type: ignore[union-attr]
    if key in ("entities", "sentiments"):
        return [(m["text"], m["label"]) for m in value]  # type: ignore[union-attr]
    if key in ("relations", "events"):
        return [(r["label"], r["args"]) for r in value]  # type: ignore[union-attr]
    return value
