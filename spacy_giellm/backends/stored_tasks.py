"""Reading the tasks a trained model stores with itself, as a spaCy pipeline
carries its labels: a model or adapter directory's `giellm_tasks.json`, an
exported GGUF's metadata string `giellm.tasks` (`model_tasks`
writes both). Here, below the backends and the training code, since both
read them: a backend, so that the component can name a task the model was
trained on (`base.ModelTasks`); `evaluate-model`, `package`, `export-gguf`.

Pure Python: the GGUF is read with `gguf.GGUFReader` after
`gguf_check.validate_gguf` (llama.cpp is never loaded for it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple, Union

from ..tasks import Task, load_json_text, read_tasks_json, tasks_from_json

PathLike = Union[str, Path]

MODEL_TASKS_FILE = "giellm_tasks.json"
GGUF_TASKS_KEY = "giellm.tasks"

__all__ = ["GGUF_TASKS_KEY", "MODEL_TASKS_FILE", "model_task_sources", "read_gguf_tasks", "read_model_tasks"]


def read_gguf_tasks(gguf: PathLike) -> Dict[str, Task]:
    """The tasks in a GGUF's `giellm.tasks` metadata (none if it has no such
    key). The file is validated first; a value that is not a tasks JSON
    string is a ValueError naming the file and the key."""
    from gguf import GGUFReader

    from .gguf_check import validate_gguf

    validate_gguf(gguf)
    field = GGUFReader(str(gguf), "r").get_field(GGUF_TASKS_KEY)
    if field is None:
        return {}
    value = field.contents()
    where = f"{gguf}: metadata {GGUF_TASKS_KEY}"
    if not isinstance(value, str):
        raise ValueError(f"{where} is not a string")
    return tasks_from_json(load_json_text(value, where), where)


def read_model_tasks(model: PathLike) -> Dict[str, Task]:
    """The tasks `model` was trained on: a .gguf file's `giellm.tasks`, a
    model or adapter directory's `giellm_tasks.json`. None (an empty dict)
    for a model that has none (trained before tasks were stored, a bare
    base model, a hub id)."""
    path = Path(model).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return read_gguf_tasks(path)
    if (path / MODEL_TASKS_FILE).is_file():
        return read_tasks_json(path / MODEL_TASKS_FILE)
    return {}


def model_task_sources(model: PathLike, what: str = "model") -> List[Tuple[str, Dict[str, Task]]]:
    """`read_model_tasks` as a `TaskResolver` source, "the {what} {model}"
    (none if it has none)."""
    tasks = read_model_tasks(model)
    return [(f"the {what} {model}", tasks)] if tasks else []
