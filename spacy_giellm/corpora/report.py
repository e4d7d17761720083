"""What every reader and writer shares: the error type, the report of what
was read, written and skipped, and task resolution."""
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

from ..annotation import Annotation
from ..tasks import Task, get_task

TaskSpec = Union[str, Task, Mapping[str, Any]]


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


def resolve_task(
    task: Optional[TaskSpec], name: Optional[str], where: str, cache: Dict[str, Task]
) -> Task:
    """The task for a record naming task `name`: the given one (which must
    carry that name), else the built-in one of that name."""
    if task is not None:
        resolved = get_task(task)
        if name is not None and name != resolved.name:
            raise CorpusError(f"{where}: record is for task {name!r}, not {resolved.name!r}")
        return resolved
    if name is None:
        raise CorpusError(f"{where}: record names no task; give the task (--task)")
    if name not in cache:
        try:
            cache[name] = get_task(name)
        except (KeyError, ValueError, FileNotFoundError) as err:
            raise CorpusError(f"{where}: {err.args[0] if err.args else err}") from err
    return cache[name]


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
    if not isinstance(start, int) or not isinstance(end, int) or isinstance(start, bool):
        return [f"{what} {value!r}: offsets must be integers, got {start!r}, {end!r}"]
    if text is None:
        return [f"{what} {value!r}: offsets without a text"]
    if not 0 <= start <= end <= len(text) or text[start:end] != value:
        return [f"{what} {value!r}: text[{start}:{end}] is {text[start:end]!r}"]
    return []
