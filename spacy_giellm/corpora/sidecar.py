"""The task definitions a corpus file carries: a sidecar file beside it.

    train.jsonl         the records, each naming its task ("task": "my-ner")
    train.tasks.json    {"giellm_tasks": 1, "tasks": [{"name": "my-ner", ...}]}

Every writer of the project's JSONL (and DocBin) writes the sidecar with the
definitions of the tasks its records name; every reader resolves a record's
task against the user's `--task` first, then the sidecar, then the built-in
tasks (`tasks.TaskResolver`). The JSONL itself stays one plain record per
line, so other tools read it unchanged. The sidecar is found by the data
file's own name, never by anything written in the data.
"""
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ..tasks import Task, TaskResolver, TaskSpec, read_tasks_json, tasks_to_json
from ..util import atomic_write_json

PathLike = Union[str, Path]

SIDECAR_SUFFIX = ".tasks.json"


def tasks_path(data_path: PathLike) -> Path:
    """Where the task definitions of `data_path` are: `train.jsonl` ->
    `train.tasks.json` (the suffix replaced; a file without one gets it added)."""
    return Path(data_path).with_suffix(SIDECAR_SUFFIX)


def corpus_tasks(data_path: PathLike) -> Dict[str, Task]:
    """The task definitions the corpus file `data_path` carries (none
    without a sidecar). A malformed sidecar is a ValueError naming it."""
    path = tasks_path(data_path)
    return read_tasks_json(path) if path.is_file() else {}


def corpus_task_sources(data_path: PathLike) -> List[Tuple[str, Dict[str, Task]]]:
    """`corpus_tasks` as a `TaskResolver` source (none without a sidecar)."""
    tasks = corpus_tasks(data_path)
    return [(f"the corpus's {tasks_path(data_path)}", tasks)] if tasks else []


def write_corpus_tasks(data_path: PathLike, tasks: Mapping[str, Task]) -> Path:
    """Write the sidecar of `data_path` (atomically); returns its path."""
    path = tasks_path(data_path)
    atomic_write_json(path, tasks_to_json(tasks.values()))
    return path


def record_tasks(records: Iterable[Mapping[str, Any]], resolver: TaskResolver) -> Tuple[Dict[str, Task], List[str]]:
    """The definitions of the tasks raw `records` name, through `resolver`,
    and the names it does not know (records that only need their formatted
    pairs, e.g. for training, may name a task nothing defines)."""
    known: Dict[str, Task] = {}
    unknown: List[str] = []
    for name in dict.fromkeys(r.get("task") for r in records):
        if not isinstance(name, str):
            continue
        try:
            known[name] = resolver.resolve(name)
        except KeyError:
            unknown.append(name)
    return known, unknown


def task_resolver(
    task: Union[None, TaskSpec, Sequence[TaskSpec], TaskResolver] = None, data_path: Optional[PathLike] = None
) -> TaskResolver:
    """`task` where it is a resolver already; else one that tries the
    user's `task` (name, file, Task or dict; also the task of records that
    name none), then the tasks the corpus at `data_path` carries, then the
    built-in ones."""
    if isinstance(task, TaskResolver):
        return task
    sources = corpus_task_sources(data_path) if data_path is not None else []
    return TaskResolver.with_overrides(task, sources)


__all__ = [
    "SIDECAR_SUFFIX",
    "corpus_task_sources",
    "corpus_tasks",
    "record_tasks",
    "task_resolver",
    "tasks_path",
    "write_corpus_tasks",
]
