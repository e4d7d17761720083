"""Already formatted (input, output) pairs in CSV/TSV or JSONL, the way the
GIELLM authors publish SCNM, SCPOS and TCREE.

The text is what precedes the task's input suffix (`build_input("", task,
iw)`: the `<label>`s and the Instruction Word); the output is read with
`parse_output`. A task whose word labels are not known (TCREE's relation and
event labels) gets them from the data first: `labels.infer_task_labels`.
"""
import csv
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from ..annotation import Annotation
from ..format import parse_input, parse_output
from ..tasks import get_task
from .jsonl import iter_json_lines
from .labels import infer_task_labels
from .report import CorpusError, ReadReport, TaskSpec, iter_lines

PathLike = Union[str, Path]
Pair = Tuple[str, str, str]  # (where, input, output)


def _read_rows(
    path: PathLike, input_col: str, output_col: str, report: ReadReport, skip_errors: bool
) -> List[Pair]:
    path = Path(path)
    rows: List[Pair] = []
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        source: Iterable[Tuple[int, Any]] = iter_json_lines(path)
    else:
        source = _csv_rows(path)
    for lineno, row in source:
        report.read += 1
        where = f"{path}:{lineno}"
        if isinstance(row, CorpusError):
            report.skip(row, skip_errors)
            continue
        if not isinstance(row, dict):
            report.fail(where, f"a record is an object with {input_col!r} and {output_col!r}", skip_errors)
            continue
        missing = [c for c in (input_col, output_col) if not isinstance(row.get(c), str)]
        if missing:
            report.fail(where, f"no string column(s) {missing}; it has {sorted(row)}", skip_errors)
            continue
        rows.append((where, row[input_col], row[output_col]))
    return rows


def _csv_rows(path: Path) -> Iterator[Tuple[int, Any]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    errors: Dict[int, CorpusError] = {}  # lines that are not UTF-8

    def lines() -> Iterator[str]:
        for lineno, line, error in iter_lines(path):
            if error is not None:
                errors[lineno] = error
            yield line

    reader = csv.reader(lines(), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    if errors:
        raise next(iter(errors.values()))
    first = reader.line_num + 1
    for row in reader:
        lineno, lines_read = first, range(first, reader.line_num + 1)
        first = reader.line_num + 1
        bad = [errors[n] for n in lines_read if n in errors]
        if bad:
            yield lineno, bad[0]
        elif not any(cell.strip() for cell in row):
            continue
        elif len(row) != len(header):
            yield lineno, CorpusError(f"{path}:{lineno}: {len(row)} columns, the header has {len(header)}")
        else:
            yield lineno, dict(zip(header, row))


def read_pairs(
    path: PathLike,
    *,
    task: Optional[TaskSpec] = None,
    input_col: str = "input",
    output_col: str = "output",
    infer_labels: Optional[bool] = None,
    skip_errors: bool = False,
    report: Optional[ReadReport] = None,
) -> Iterator[Annotation]:
    """Annotations from formatted pairs (.csv / .tsv with a header row, or
    .jsonl). `task` is required. `infer_labels` (default: when a word level
    has no labels) first reveals the labels with `infer_task_labels`; the
    task used is left in `report.task`."""
    if task is None:
        raise ValueError(f"{path}: the pairs reader needs the task the pairs were made for (--task)")
    report = report if report is not None else ReadReport(path=str(path))
    resolved = get_task(task)
    rows = _read_rows(path, input_col, output_col, report, skip_errors)
    if infer_labels or (infer_labels is None and any(not wl.labels for wl in resolved.word_levels)):
        resolved = infer_task_labels(rows, resolved)
    report.task = resolved
    for where, model_input, output in rows:
        try:
            text, iw = parse_input(model_input, resolved)
        except ValueError as err:
            report.fail(where, str(err), skip_errors)
            continue
        parsed = parse_output(output, resolved, text)
        if parsed.problems:
            report.fail(where, f"cannot parse output {output[:60]!r}: {'; '.join(parsed.problems)}", skip_errors)
            continue
        ann = parsed.annotation
        if ann.instruction != iw:
            report.fail(where, f"the input asks for {iw!r} but the output answers {ann.instruction!r}", skip_errors)
            continue
        ann.source = where
        yield ann
