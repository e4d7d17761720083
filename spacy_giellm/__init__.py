"""spaCy plugin for GIELLM-style generative information extraction.

Importing this package is cheap: model libraries (torch, transformers, peft,
llama_cpp) load only when a backend builds its model.
"""
from .annotation import Annotation, Event, Mention, Relation
from .format import ParseResult, build_input, parse_output, render_output, to_pair
from .registry import giellm_backends
from .tasks import BUILTIN_TASKS, Task, WordLevel, get_task

__version__ = "0.1.0"

__all__ = [
    "Annotation",
    "Event",
    "Mention",
    "Relation",
    "ParseResult",
    "build_input",
    "parse_output",
    "render_output",
    "to_pair",
    "giellm_backends",
    "BUILTIN_TASKS",
    "Task",
    "WordLevel",
    "get_task",
]
