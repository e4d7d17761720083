"""What every reader and writer shares: the error type, the report of what
was read, written and skipped, UTF-8 lines, task resolution and the checks
of an annotation against its task."""
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, List, Mapping, Optional, Tuple

from ..annotation import Annotation
from ..tasks import WORD_KINDS, Task, TaskResolver, TaskSpec


class CorpusError(ValueError):
    """Malformed input. The message starts with `file:line` (or `file:record`)."""


@dataclass
class ReadReport:
    """Counts behind a conversion: `read == out + skipped + filtered`.

    `read` counts records seen in the input, `skipped` the malformed ones left
    out (only with `skip_errors=True`; `reasons` says where and why),
    `filtered` the ones an explicit option (e.g. a split filter) left out,
    `written` what a writer wrote. `warnings` counts lossy but legal steps
    (e.g. a span snapped to token boundaries), `problems` the outputs read
    leniently despite parse problems (model predictions). `task` is the task
    the reader used, with the labels the data revealed."""

    path: str = ""
    read: int = 0
    skipped: int = 0
    filtered: int = 0
    written: int = 0
    problems: int = 0
    reasons: List[str] = field(default_factory=list)
    warnings: Counter = field(default_factory=Counter)
    task: Optional[Task] = None

    @property
    def out(self) -> int:
        return self.read - self.skipped - self.filtered

    def fail(self, where: str, message: str, skip_errors: bool) -> None:
        """Raise `CorpusError("where: message")`, or count a skip."""
        self.skip(CorpusError(f"{where}: {message}"), skip_errors)

    def skip(self, error: CorpusError, skip_errors: bool) -> None:
        """Re-raise `error` (it names its place), or count a skip."""
        if not skip_errors:
            raise error
        self.skipped += 1
        self.reasons.append(str(error))

    def warn(self, kind: str, count: int = 1) -> None:
        self.warnings[kind] += count

    def summary(self, most: int = 10) -> str:
        lines = [f"{self.read} records in = {self.out} out + {self.skipped} skipped"]
        if self.filtered:
            lines[0] += f" + {self.filtered} filtered"
        for reason in self.reasons[:most]:
            lines.append(f"  skipped {reason}")
        if len(self.reasons) > most:
            lines.append(f"  ... and {len(self.reasons) - most} more skipped")
        for kind, count in sorted(self.warnings.items()):
            lines.append(f"  warning: {count} x {kind}")
        if self.problems:
            lines.append(f"  {self.problems} outputs read despite parse problems")
        return "\n".join(lines)


def not_utf8(path: Any, err: UnicodeDecodeError, first_line: int = 1) -> CorpusError:
    """The error for bytes read from `path` (starting at `first_line`) that
    `err` could not decode, naming the line and the byte."""
    data = err.object
    line = first_line + data.count(b"\n", 0, err.start)
    column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
    return CorpusError(
        f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}, byte {column} of the line); "
        "convert the file to UTF-8"
    )


def iter_lines(path: Any) -> Iterator[Tuple[int, str, Optional[CorpusError]]]:
    """(line number, line, error) for every line of a UTF-8 text file, line
    ends kept and a byte order mark at the start dropped. A line that is not
    UTF-8 comes with a CorpusError naming it, and decoded with U+FFFD for
    what it could not decode."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            error = None
            try:
                line = raw.decode("utf8")
            except UnicodeDecodeError as err:
                error = not_utf8(path, err, lineno)
                line = raw.decode("utf8", errors="replace")
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]
            yield lineno, line, error


def read_text(path: Any) -> str:
    """A whole UTF-8 file (a byte order mark is dropped); not UTF-8 is a
    CorpusError naming the line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise not_utf8(path, err) from None


def writer_where(ann: Annotation, path: Any, i: int) -> str:
    """Where a writer's error points: the input the reader found `ann` in,
    else the output file and the record number."""
    return ann.source or f"{path}: record {i}"


def resolve_task(resolver: TaskResolver, name: Optional[str], where: str) -> Task:
    """The task a record naming task `name` is for (see `TaskResolver`); a
    name no source defines is a CorpusError naming `where`. A name in the
    data is only a name: it never opens a task file."""
    try:
        return resolver.resolve(name)
    except KeyError as err:
        raise CorpusError(f"{where}: {err.args[0] if err.args else err}") from err


def _is_str(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_offsets(value: Any) -> bool:
    return value is None or (isinstance(value, list) and len(value) == 2 and all(map(_is_int, value)))


def record_problems(record: Mapping[str, Any]) -> List[str]:
    """Wrong JSON types in a record's word-level fields (before they become
    an Annotation, which would turn `5` into `"5"`)."""
    out: List[str] = []
    for kind in WORD_KINDS:
        items = record.get(kind)
        if items is None:
            continue
        if not isinstance(items, list):
            out.append(f"{kind!r} must be a list, got {items!r:.60}")
            continue
        for i, item in enumerate(items):
            what = f"{kind}[{i}]"
            if not isinstance(item, dict):
                out.append(f"{what} must be an object, got {item!r:.60}")
                continue
            if not _is_str(item.get("label")):
                out.append(f"{what}.label must be a non-empty string, got {item.get('label')!r:.60}")
            if kind in ("entities", "sentiments"):
                if not _is_str(item.get("text")):
                    out.append(f"{what}.text must be a non-empty string, got {item.get('text')!r:.60}")
                out.extend(
                    f"{what}.{key} must be an integer, got {item[key]!r:.60}"
                    for key in ("start", "end")
                    if item.get(key) is not None and not _is_int(item[key])
                )
            else:
                args, offsets = item.get("args"), item.get("offsets")
                if not isinstance(args, list) or not all(map(_is_str, args)):
                    out.append(f"{what}.args must be a list of non-empty strings, got {args!r:.60}")
                if offsets is not None and not (isinstance(offsets, list) and all(map(_is_offsets, offsets))):
                    out.append(f"{what}.offsets must be a list of [start, end] integers or nulls, got {offsets!r:.60}")
    return out


def annotation_problems(ann: Annotation, task: Task) -> List[str]:
    """What in `ann` its task cannot hold: a label that is not the task's
    (word levels without labels, like built-in TCREE's, take any), a kind
    the task does not extract, a tuple of the wrong length, offsets that do
    not point at their strings."""
    out: List[str] = []
    if ann.label is not None and ann.label not in task.text_labels:
        out.append(f"label {ann.label!r} is not one of task {task.name!r}'s text labels {list(task.text_labels)}")
    levels = {wl.kind: wl for wl in task.word_levels}
    for kind in WORD_KINDS:
        items = getattr(ann, kind)
        wl = levels.get(kind)
        if items and wl is None:
            out.append(f"{kind}: task {task.name!r} has none")
            continue
        for i, item in enumerate(items):
            if wl.labels and item.label not in wl.labels:
                out.append(f"{kind}[{i}]: label {item.label!r} is not one of task {task.name!r}'s {list(wl.labels)}")
            if not wl.is_pair and len(item.args) != wl.arity - 1:
                out.append(f"{kind}[{i}]: {len(item.args)} arguments, task {task.name!r} has {wl.arity - 1}")
    return out + offset_problems(ann)


def offset_problems(ann: Annotation) -> List[str]:
    """Offsets that do not point at their strings in `ann.text`."""
    text = ann.text
    out: List[str] = []
    for kind in ("entities", "sentiments"):
        for i, m in enumerate(getattr(ann, kind)):
            if (m.start is None) != (m.end is None):
                out.append(f"{kind}[{i}] {m.text!r}: start and end must be given together")
            elif m.start is not None:
                out.extend(_span_problem(text, m.start, m.end, m.text, f"{kind}[{i}]"))
    for kind in ("relations", "events"):
        for i, rel in enumerate(getattr(ann, kind)):
            if rel.offsets and len(rel.offsets) != len(rel.args):
                out.append(f"{kind}[{i}]: {len(rel.offsets)} offsets for {len(rel.args)} arguments")
                continue
            for j, off in enumerate(rel.offsets):
                if off is not None:
                    out.extend(_span_problem(text, off[0], off[1], rel.args[j], f"{kind}[{i}].args[{j}]"))
    return out


def _span_problem(text: Optional[str], start: Any, end: Any, value: str, what: str) -> List[str]:
    if not _is_int(start) or not _is_int(end):
        return [f"{what} {value!r}: offsets must be integers, got {start!r}, {end!r}"]
    if text is None:
        return [f"{what} {value!r}: offsets without a text"]
    if not 0 <= start <= end <= len(text) or text[start:end] != value:
        return [f"{what} {value!r}: its offsets [{start}, {end}) hold {text[start:end]!r}"]
    return []
