"""Already formatted (input, output) pairs in CSV/TSV or JSONL, the way the
GIELLM authors publish SCNM, SCPOS and TCREE.

The text is what precedes the task's input suffix (`build_input("", task,
iw)`: the `<label>`s and the Instruction Word); the output is read with
`parse_output`. A task whose word labels are not known (TCREE's relation and
event labels) gets them from the data first: `infer_task_labels`.
"""
import csv
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from ..annotation import Annotation
from ..format import build_input, parse_output
from ..tasks import Task, get_task, task_named
from .jsonl import iter_json_lines
from .report import CorpusError, ReadReport, TaskSpec, iter_lines

PathLike = Union[str, Path]
Pair = Tuple[str, str, str]  # (where, input, output)


def split_input(model_input: str, task: Task) -> Tuple[str, Optional[str]]:
    """(text, instruction) of an input that `build_input` made: the longest
    of the task's input suffixes it ends with is cut off. The instruction
    is given only where the task has a choice (as in `Annotation`)."""
    best: Optional[Tuple[str, Optional[str]]] = None
    for iw in task.instructions or (None,):
        suffix = build_input("", task, iw)
        if model_input.endswith(suffix) and (best is None or len(suffix) > len(best[0])):
            best = (suffix, iw)
    if best is None:
        endings = [build_input("", task, iw) for iw in task.instructions or (None,)]
        raise ValueError(
            f"input does not end with the task's labels and instruction word "
            f"({' or '.join(repr(e) for e in endings)}): ...{model_input[-60:]!r}"
        )
    suffix, iw = best
    text = model_input[: len(model_input) - len(suffix)]
    return text, (iw if len(task.instructions) > 1 else None)


def _pairs_of(records: Iterable[Any], input_key: str, output_key: str) -> Iterator[Tuple[str, str]]:
    for record in records:
        if isinstance(record, Mapping):
            yield record[input_key], record[output_key]
        else:
            yield record[-2], record[-1]


def _trailing_labels(before_iw: str, separator: str) -> List[str]:
    """The `<label>` run at the end of an input (the IW already cut off)."""
    labels: List[str] = []
    rest = before_iw
    while True:
        if separator and rest.endswith(separator):
            rest = rest[: -len(separator)]
        match = re.search(r"<([^<>]+)>$", rest)
        if not match:
            return labels[::-1]
        labels.append(match.group(1))
        rest = rest[: match.start()]


def infer_task_labels(
    records: Iterable[Any], task: TaskSpec, input_key: str = "input", output_key: str = "output"
) -> Task:
    """`task` with the labels the data reveals (the data's own strings win).

    Text labels: the `<label>` run that ends every input (before the IW), in
    the data's order. Word labels, for word levels that have none: every
    label the outputs use, in order of first use. `records` are mappings
    with `input_key`/`output_key`, or (..., input, output) tuples."""
    task = get_task(task)
    runs: List[List[str]] = []
    outputs: List[str] = []
    for model_input, output in _pairs_of(records, input_key, output_key):
        if not isinstance(model_input, str) or not isinstance(output, str):
            continue
        outputs.append(output)
        iws = sorted((iw for iw in task.instructions if model_input.endswith(iw)), key=len, reverse=True)
        cut = len(model_input) - len(iws[0]) if iws else len(model_input)
        runs.append(_trailing_labels(model_input[:cut], task.separator))
    text_labels: Sequence[str] = task.text_labels
    if runs and all(runs):
        common = runs[0]
        for run in runs[1:]:
            n = 0
            while n < min(len(common), len(run)) and common[-1 - n] == run[-1 - n]:
                n += 1
            common = common[len(common) - n :]
        if common:
            text_labels = common
    unknown = [wl for wl in task.word_levels if not wl.labels]
    if not unknown:
        return task.with_labels(text_labels=text_labels)
    # Read the outputs with no word labels at all: the unanchored parser
    # splits on the delimiters and says which labels the data uses.
    bare = task.with_labels(text_labels=text_labels, word_labels={wl.kind: () for wl in unknown})
    seen: Dict[str, Dict[str, None]] = {wl.kind: {} for wl in unknown}
    for output in outputs:
        ann = parse_output(output, bare).annotation
        for wl in unknown:
            for item in getattr(ann, wl.kind):
                seen[wl.kind].setdefault(item.label)
    return task.with_labels(
        text_labels=text_labels, word_labels={kind: list(labels) for kind, labels in seen.items()}
    )


def tasks_from_gold(annotations: Iterable[Annotation], task: Optional[TaskSpec] = None) -> Dict[Any, Task]:
    """The task of each task name in gold `annotations` (or `task` for all);
    a word level without labels (TCREE) gets the labels the gold uses, so
    that predictions parse anchored on them."""
    annotations = list(annotations)
    tasks: Dict[Any, Task] = {}
    for name in dict.fromkeys(a.task for a in annotations):
        resolved = get_task(task) if task is not None else task_named(name)
        unknown = [wl.kind for wl in resolved.word_levels if not wl.labels]
        seen: Dict[str, Dict[str, None]] = {kind: {} for kind in unknown}
        for ann in annotations:
            if ann.task == name:
                for kind in unknown:
                    for item in getattr(ann, kind):
                        seen[kind].setdefault(item.label)
        if any(seen.values()):
            resolved = resolved.with_labels(word_labels={k: list(v) for k, v in seen.items() if v})
        tasks[name] = resolved
    return tasks


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
            text, iw = split_input(model_input, resolved)
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
