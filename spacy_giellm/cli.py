"""The `python -m spacy_giellm` command line (typer, spaCy style).

Adding a command: write a module that does

    from .cli import app, fail_cleanly

    @app.command("train")
    def train_cli(...):
        with fail_cleanly():
            ...            # heavy imports here, inside the command

and add its module name to `COMMAND_MODULES` below. Keep imports at module
level cheap: `--help` imports every command module.
"""
import importlib
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import typer

app = typer.Typer(
    name="spacy_giellm",
    help="GIELLM for spaCy: convert corpora, evaluate outputs, ...",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules whose import registers more commands on `app`.
COMMAND_MODULES: List[str] = ["spacy_giellm.commands_train", "spacy_giellm.commands_bench"]

# Input files larger than this get a progress bar.
PROGRESS_BYTES = 1_000_000


@contextmanager
def fail_cleanly() -> Iterator[None]:
    """Bad input ends the command with its message and exit code 1, no traceback."""
    try:
        yield
    except (ValueError, KeyError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1) from None


def _progress(items: Any, path: Path, desc: str) -> Any:
    try:
        large = path.is_file() and path.stat().st_size > PROGRESS_BYTES
    except OSError:
        large = False
    if not large:
        return items
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI)
    return tqdm(items, desc=desc, unit=" rec", file=sys.stderr, leave=False, disable=None)


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

    The JSONL holds the input/output pairs and the structured annotations."""
    with fail_cleanly():
        import inspect

        from .corpora import ReadReport, get_reader, write_docbin, write_jsonl

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
        report = ReadReport(path=str(input_path))
        annotations = _progress(
            read(input_path, skip_errors=skip_errors, report=report, **options), input_path, "convert"
        )
        if output_path.suffix == ".spacy":
            nlp = None
            if model:
                import spacy

                nlp = spacy.load(model) if not (len(model) <= 3 and model.isalpha()) else spacy.blank(model)
            written = write_docbin(annotations, output_path, task, nlp=nlp, skip_errors=skip_errors, report=report)
        else:
            if model:
                raise ValueError("--model applies to .spacy output only")
            written = write_jsonl(annotations, output_path, task, skip_errors=skip_errors, report=report)
        typer.echo(report.summary())
        typer.echo(f"wrote {written} records to {output_path}")


@app.command("evaluate")
def evaluate_cli(
    gold_path: Path = typer.Argument(..., metavar="GOLD", help="Gold JSONL"),
    pred_path: Path = typer.Argument(..., metavar="PRED", help="Predicted JSONL: raw 'output' strings or structured fields"),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Task name or file, where the records name none"),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON"),
) -> None:
    """Score predictions against gold: TL / WL / ALL accuracy and P/R/F in %.

    Records are matched by line order (and checked by text)."""
    with fail_cleanly():
        from .corpora import CorpusError, ReadReport, annotation_from_record, read_jsonl, tasks_from_gold
        from .corpora.jsonl import iter_json_lines
        from .scoring import format_scores, score_annotations

        gold_report = ReadReport(path=str(gold_path))
        gold = list(read_jsonl(gold_path, task=task, report=gold_report))
        gold_lines = [lineno for lineno, _ in iter_json_lines(gold_path)]
        preds = list(iter_json_lines(pred_path))
        if len(preds) != len(gold):
            raise ValueError(f"{gold_path} has {len(gold)} records but {pred_path} has {len(preds)}")
        tasks = tasks_from_gold(gold, task)
        pairs, problems = [], 0
        for g, g_line, (lineno, record) in zip(gold, gold_lines, preds):
            where = f"{pred_path}:{lineno}"
            if isinstance(record, CorpusError):
                raise record
            if isinstance(record, str):
                record = {"output": record}
            if isinstance(record, dict) and record.get("task", g.task) != g.task:
                raise ValueError(f"{where}: task {record['task']!r} but {gold_path}:{g_line} is {g.task!r}")
            pred, _, n_problems = annotation_from_record(record, where, tasks[g.task], lenient=True)
            problems += bool(n_problems)
            if pred.text is not None and g.text is not None and pred.text != g.text:
                raise ValueError(
                    f"{where}: text differs from {gold_path}:{g_line}: {pred.text[:40]!r} vs {g.text[:40]!r}"
                )
            pairs.append((g, pred))
        scores = score_annotations(pairs)
        scores["counts"]["pred_parse_problems"] = problems
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
            f"word-level items, {problems} predictions with parse problems"
        )


# Kept for code that imported it from here.
def _tasks_with_gold_labels(gold: List[Any], task: Optional[str]) -> Dict[Any, Any]:
    from .corpora import tasks_from_gold

    return tasks_from_gold(gold, task)


def main() -> None:
    app()


for _module in COMMAND_MODULES:
    importlib.import_module(_module)
