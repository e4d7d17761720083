"""jrte-corpus `pn.tsv` (megagonlabs/jrte-corpus): tab-separated id, label
(1 / 0 / -1), text, annotator votes (JSON), split -> task `sentiment-ja`
with label positive / neutral / negative. `id` and `split` are kept in
`Annotation.meta` (and so in the JSONL record). The corpus is CC BY-NC-SA:
read it, do not ship it.
"""
import json
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from ..annotation import Annotation
from ..tasks import get_task
from .report import ReadReport, TaskSpec, iter_lines

PathLike = Union[str, Path]

PN_LABELS = {"1": "positive", "0": "neutral", "-1": "negative"}


def read_jrte_pn(
    path: PathLike,
    *,
    task: Optional[TaskSpec] = "sentiment-ja",
    split: Union[None, str, Sequence[str]] = None,
    skip_errors: bool = False,
    report: Optional[ReadReport] = None,
) -> Iterator[Annotation]:
    """Annotations from `pn.tsv`. `split` ("train", "dev", ... or several)
    keeps only those rows; the others are counted in `report.filtered`."""
    report = report if report is not None else ReadReport(path=str(path))
    resolved = get_task(task or "sentiment-ja")
    report.task = resolved
    splits = {split} if isinstance(split, str) else set(split) if split else None
    for lineno, line, error in iter_lines(path):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        report.read += 1
        where = f"{path}:{lineno}"
        if error is not None:
            report.skip(error, skip_errors)
            continue
        cols = line.split("\t")
        if len(cols) != 5:
            report.fail(where, f"expected 5 tab-separated columns (id, label, text, votes, split), got {len(cols)}", skip_errors)
            continue
        rid, label, text, votes, row_split = cols
        if label.strip() not in PN_LABELS:
            report.fail(where, f"label must be 1, 0 or -1, got {label!r}", skip_errors)
            continue
        if not text.strip() or not rid.strip():
            report.fail(where, "empty id or text", skip_errors)
            continue
        try:
            if not isinstance(json.loads(votes), dict):
                raise ValueError
        except ValueError:
            report.fail(where, f"votes must be a JSON object, got {votes[:40]!r}", skip_errors)
            continue
        if splits is not None and row_split not in splits:
            report.filtered += 1
            continue
        yield Annotation(
            text=text,
            task=resolved.name,
            label=PN_LABELS[label.strip()],
            meta={"id": rid, "split": row_split},
            source=where,
        )
