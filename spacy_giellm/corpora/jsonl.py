"""The project's own JSONL: one record per line,

    {"text", "task", "input", "output", "label", "instruction",
     "entities": [{"label", "text", "start", "end"}], "sentiments": [...],
     "relations": [{"label", "args": [...], "offsets": [[s, e] | null, ...]}],
     "events": [...], ...extra fields}

that is `Annotation.to_dict()` plus the `input`/`output` strings of the
format, plus the corpus's extra fields (`Annotation.meta`, e.g. jrte's `id`
and `split`). Structured fields win over `output`; a record with only an
`output` (a model's prediction) is parsed with its task. A record without
`text` gets it back from `input`.

The definitions of the tasks the records name travel beside the file, in
`<name>.tasks.json` (`sidecar.py`): `write_jsonl` writes it, `read_jsonl`
reads it.
"""
import json
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple, Union

from ..annotation import Annotation
from ..format import parse_input, parse_output, to_pair
from ..tasks import Task, TaskResolver, TaskSpec
from ..util import atomic_path
from .report import (
    CorpusError,
    ReadReport,
    annotation_problems,
    iter_lines,
    record_problems,
    resolve_task,
    writer_where,
)
from .sidecar import task_resolver, write_corpus_tasks

PathLike = Union[str, Path]

CORE_FIELDS = ("text", "task", "label", "instruction", "entities", "sentiments", "relations", "events")
FORMAT_FIELDS = ("input", "output")
STRUCTURED_FIELDS = ("label", "entities", "sentiments", "relations", "events")


def iter_json_lines(path: PathLike) -> Iterator[Tuple[int, Any]]:
    """(line number, parsed JSON) for every non-blank line; for a line that
    is not UTF-8 or not JSON, a CorpusError naming it instead."""
    for lineno, line, error in iter_lines(path):
        if error is not None:
            yield lineno, error
        elif line.strip():
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as err:
                yield lineno, CorpusError(f"{path}:{lineno}: invalid JSON: {err.msg} (column {err.colno})")
            except RecursionError:
                yield lineno, CorpusError(f"{path}:{lineno}: invalid JSON: nested too deeply to read")


def annotation_from_record(
    record: Any,
    where: str,
    task: Union[None, TaskSpec, TaskResolver] = None,
    lenient: bool = False,
) -> Tuple[Annotation, Task, int]:
    """One JSONL record as an Annotation, its task, and how many parse
    problems its `output` had (0 unless `lenient`; otherwise problems raise).
    `task`: a TaskResolver, or the task (see `sidecar.task_resolver`).

    A record that is a JSON string is taken as a raw `output`."""
    if isinstance(record, str):
        record = {"output": record}
    if not isinstance(record, dict):
        raise CorpusError(f"{where}: a record is a JSON object, got {type(record).__name__}")
    name = record.get("task")
    if name is not None and not isinstance(name, str):
        raise CorpusError(f"{where}: 'task' must be a string, got {name!r}")
    resolved = resolve_task(task_resolver(task), name, where)
    for key in ("text", "input", "output", "label", "instruction"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise CorpusError(f"{where}: {key!r} must be a string, got {record[key]!r}")
    text = record.get("text")
    instruction = record.get("instruction")
    if text is None and record.get("input") is not None:
        try:
            text, instruction_in = parse_input(record["input"], resolved)
        except ValueError as err:
            raise CorpusError(f"{where}: {err}") from err
        instruction = instruction if instruction is not None else instruction_in
    meta = {k: v for k, v in record.items() if k not in CORE_FIELDS and k not in FORMAT_FIELDS}
    problems = 0
    if any(record.get(k) is not None for k in STRUCTURED_FIELDS):
        bad = record_problems(record)
        if bad:
            raise CorpusError(f"{where}: malformed structured field: {'; '.join(bad[:3])}")
        ann = Annotation.from_dict({**record, "text": text, "task": resolved.name})
        ann.instruction = instruction
        if instruction is not None and len(resolved.instructions) > 1:
            try:
                resolved.word_level(instruction)
            except KeyError as err:
                raise CorpusError(f"{where}: {err.args[0]}") from err
        bad = annotation_problems(ann, resolved)
        if bad:
            raise CorpusError(f"{where}: {'; '.join(bad[:3])}")
    elif record.get("output") is not None:
        parsed = parse_output(record["output"], resolved, text)
        if parsed.problems:
            if not lenient:
                raise CorpusError(f"{where}: cannot parse output {record['output'][:60]!r}: {'; '.join(parsed.problems)}")
            problems = len(parsed.problems)
        ann = parsed.annotation
    else:
        ann = Annotation(text=text, task=resolved.name, instruction=instruction)
    ann.meta, ann.source = meta, where
    return ann, resolved, problems


def read_jsonl(
    path: PathLike,
    *,
    task: Union[None, TaskSpec, TaskResolver] = None,
    skip_errors: bool = False,
    report: Optional[ReadReport] = None,
    lenient: bool = False,
) -> Iterator[Annotation]:
    """Annotations from the project's JSONL. A record's `task` names its
    task: the user's `task` (name, file, Task; also used for records that
    name none), else one the file's sidecar defines, else a built-in one.
    A TaskResolver as `task` is used as it is (the caller chose its
    sources). `lenient=True` keeps outputs with parse problems
    (predictions) and counts them in `report.problems` instead of failing."""
    report = report if report is not None else ReadReport(path=str(path))
    resolver = task_resolver(task, path)
    for lineno, record in iter_json_lines(path):
        report.read += 1
        where = f"{path}:{lineno}"
        try:
            if isinstance(record, CorpusError):
                raise record
            ann, resolved, problems = annotation_from_record(record, where, resolver, lenient)
        except CorpusError as err:
            report.skip(err, skip_errors)
            continue
        report.problems += bool(problems)
        report.task = report.task or resolved
        yield ann


def annotation_record(ann: Annotation, task: Task) -> Dict[str, Any]:
    """The JSONL record of an annotation (raises ValueError where the format
    cannot carry it)."""
    if ann.task is None:
        ann = ann.copy(task=task.name)
    model_input, output = to_pair(ann, task)
    record: Dict[str, Any] = {"text": ann.text, "task": ann.task, "input": model_input, "output": output}
    record.update(ann.to_dict())
    for key, value in ann.meta.items():
        record.setdefault(key, value)
    return record


def write_jsonl(
    annotations: Iterable[Annotation],
    path: PathLike,
    task: Union[None, TaskSpec, TaskResolver] = None,
    *,
    skip_errors: bool = False,
    report: Optional[ReadReport] = None,
) -> int:
    """Write annotations as JSONL records (see the module docstring), all or
    nothing: a temporary file replaces `path` once every record is written,
    with the sidecar holding the definitions of the tasks written. Each
    annotation's task resolves through `task` (a TaskResolver: pass the
    reader's, so that the tasks its corpus carried are found; or the task
    itself), else a built-in task of that name. Returns the number written;
    an annotation the format cannot carry raises CorpusError (or is counted
    as skipped with `skip_errors`)."""
    report = report if report is not None else ReadReport(path=str(path))
    resolver = task_resolver(task)
    tasks: Dict[str, Task] = {}
    written = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf8") as f:
        for i, ann in enumerate(annotations, 1):
            where = writer_where(ann, path, i)
            try:
                resolved = resolve_task(resolver, ann.task, where)
                record = annotation_record(ann, resolved)
            except CorpusError as err:
                report.skip(err, skip_errors)
                continue
            except ValueError as err:
                report.fail(where, f"cannot write {ann.text!r:.60}: {err}", skip_errors)
                continue
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            tasks.setdefault(resolved.name, resolved)
            written += 1
        write_corpus_tasks(path, tasks)  # before the records replace `path`
    report.written += written
    return written
