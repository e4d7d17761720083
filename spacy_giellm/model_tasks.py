"""The tasks a trained model was trained on, stored with the model, as a
spaCy pipeline carries its labels.

- `train` writes `giellm_tasks.json` (the JSON of `tasks.tasks_to_json`) into
  the model or adapter directory, and the same list into the manifest;
- `merge` copies it into the merged model;
- `export-gguf` writes it into the GGUF's metadata as the string
  `giellm.tasks` (llama.cpp ignores keys it does not know);
- the `giellm` component's `task` may name one of them (the backend reads
  them: `backends.base.ModelTasks`);
- `evaluate-model`, `package` and `annotate` read it back with
  `read_model_tasks` (a directory or a .gguf file) and resolve the tasks
  that records name through `model_task_resolver`: the user's `--task`
  first, then the model's own tasks, then those the data carries, then the
  built-in ones.

Reading them back (`read_model_tasks`, `read_gguf_tasks`) lives in
`backends.stored_tasks`, since a backend reads its model's tasks too (the
component's `task` may name one); imported here for the commands.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .backends.stored_tasks import (
    GGUF_TASKS_KEY, MODEL_TASKS_FILE, model_task_sources, read_gguf_tasks, read_model_tasks,
)
from .tasks import Task, TaskResolver, TaskSpec, tasks_to_json
from .util import atomic_write_json

PathLike = Union[str, Path]


def write_model_tasks(model_dir: PathLike, tasks: Mapping[str, Task]) -> Path:
    """`giellm_tasks.json` in `model_dir` (atomically); returns its path."""
    path = Path(model_dir) / MODEL_TASKS_FILE
    atomic_write_json(path, tasks_to_json(tasks.values()))
    return path


def tasks_json_string(tasks: Mapping[str, Task]) -> str:
    """The tasks as one compact JSON string (the GGUF metadata value)."""
    return json.dumps(tasks_to_json(tasks.values()), ensure_ascii=False, separators=(",", ":"))


def model_task_resolver(
    model: PathLike,
    overrides: Union[None, TaskSpec, Sequence[TaskSpec]] = None,
    data: Optional[PathLike] = None,
) -> TaskResolver:
    """How records (of `data`, if given) name tasks for `model`: the user's
    tasks (`--task`) first, then the model's own, then those the data's
    sidecar carries, then the built-in ones. A name two of them define
    differently is said once on the `spacy_giellm` logger."""
    from .corpora.sidecar import corpus_task_sources

    sources = model_task_sources(model) + (corpus_task_sources(data) if data is not None else [])
    return TaskResolver.with_overrides(overrides, sources)


def tasks_for_model(
    model: PathLike, overrides: Union[None, TaskSpec, Sequence[TaskSpec]] = None
) -> List[Dict[str, Any]]:
    """One `{"task": task dict, "instruction": instruction word or None}`
    per component a pipeline on `model` needs: every task the model was
    trained on (the user's `--task` replacing one of the same name, and
    added where the model has none), and for a task with several word levels
    (TCREE) one per instruction word. The shape `packaging.tasks_of`
    returns, for `package_pipeline`. A model that stores no tasks and no
    `overrides` is a ValueError saying to give them."""
    resolver = model_task_resolver(model, overrides)
    names = list(dict.fromkeys(name for _, tasks in resolver.sources[:-1] for name in tasks))
    if not names:
        raise ValueError(
            f"{model} stores no tasks (trained before tasks were stored with the model, or not by "
            "`train`): give the tasks (--task, or --data with held-out records)"
        )
    out: List[Dict[str, Any]] = []
    for name in names:
        task = resolver.resolve(name)
        instructions = task.instructions if len(task.instructions) > 1 else (None,)
        out += [{"task": task.to_dict(), "instruction": iw} for iw in instructions]
    return out


__all__ = [
    "GGUF_TASKS_KEY",
    "MODEL_TASKS_FILE",
    "model_task_resolver",
    "model_task_sources",
    "read_gguf_tasks",
    "read_model_tasks",
    "tasks_for_model",
    "tasks_json_string",
    "write_model_tasks",
]
