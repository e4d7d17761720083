"""Tasks: what one generation extracts.

A task has an optional text level (candidate labels, shown to the model as
`<label>` in the input) and zero or more word levels, each with its kind,
its labels and its Instruction Word (IW). A task with several word levels
(TCREE: relations or events) does one of them per generation; the IW in the
input says which.
"""
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from spacy.util import registry

logger = logging.getLogger(__name__)

WORD_KINDS = ("entities", "sentiments", "relations", "events")
# How many fields a piece has (label included) and where the label sits.
_DEFAULT_SHAPE = {"entities": (2, 0), "sentiments": (2, 0), "relations": (3, 1), "events": (4, 1)}


@dataclass(frozen=True)
class WordLevel:
    kind: str
    instruction: str
    labels: Tuple[str, ...] = ()
    arity: int = 0
    label_position: int = -1
    roles: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in WORD_KINDS:
            raise ValueError(f"word level kind must be one of {WORD_KINDS}, got {self.kind!r}")
        if not self.instruction.strip():
            raise ValueError(f"word level {self.kind!r} needs a non-empty instruction word")
        arity, position = _DEFAULT_SHAPE[self.kind]
        if self.arity == 0:
            object.__setattr__(self, "arity", arity)
        if self.label_position == -1:
            object.__setattr__(self, "label_position", position)
        if self.kind in ("entities", "sentiments") and (self.arity, self.label_position) != (2, 0):
            raise ValueError(f"{self.kind} are pairs `:Label;span`: arity 2, label first")
        if self.arity < 2 or not 0 <= self.label_position < self.arity:
            raise ValueError(
                f"{self.kind}: label_position {self.label_position} outside arity {self.arity}"
            )
        if self.roles and len(self.roles) != self.arity - 1:
            raise ValueError(f"{self.kind}: {len(self.roles)} roles for {self.arity - 1} arguments")
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "roles", tuple(self.roles))
        for label in self.labels:  # an empty label's mentions could never become entities
            if not isinstance(label, str) or not label.strip():
                raise ValueError(f"{self.kind}: label {label!r} is not a non-empty string")

    @property
    def is_pair(self) -> bool:
        return self.kind in ("entities", "sentiments")


@dataclass(frozen=True)
class Task:
    name: str
    text_labels: Tuple[str, ...] = ()
    word_levels: Tuple[WordLevel, ...] = ()
    # The closing word of the input for a task with no word level: in a mixed
    # model the last words of the prompt must tell it which task it is doing.
    instruction: Optional[str] = None
    separator: str = ""
    null_marker: Optional[str] = None
    fullwidth_delimiters: bool = False
    # The schema form: the input also lists the chosen word level's labels,
    # `[label]` each, so that one model can be asked for any label set
    # (`format.build_input`). The paper's format lists only the text labels.
    label_schema: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "text_labels", tuple(self.text_labels))
        object.__setattr__(self, "word_levels", tuple(self.word_levels))
        if not self.text_labels and not self.word_levels:
            raise ValueError(f"task {self.name!r} has neither text labels nor a word level")
        iws = [wl.instruction for wl in self.word_levels]
        if len(set(iws)) != len(iws):
            raise ValueError(f"task {self.name!r}: two word levels share an instruction word")
        for label in self.text_labels:
            if not isinstance(label, str) or not label or "<" in label or ">" in label:
                raise ValueError(f"task {self.name!r}: text label {label!r} is empty or has < or >")
        if self.label_schema:
            for wl in self.word_levels:
                for label in wl.labels:
                    if not label or "[" in label or "]" in label:
                        raise ValueError(
                            f"task {self.name!r}: word label {label!r} is empty or has [ or ], which the "
                            "label schema in the input cannot list"
                        )

    @property
    def instructions(self) -> Tuple[str, ...]:
        if self.word_levels:
            return tuple(wl.instruction for wl in self.word_levels)
        return (self.instruction,) if self.instruction else ()

    def word_level(self, instruction: Optional[str] = None) -> Optional[WordLevel]:
        """The word level an instruction word selects (default: the first)."""
        if not self.word_levels:
            return None
        if instruction is None:
            return self.word_levels[0]
        for wl in self.word_levels:
            if wl.instruction == instruction:
                return wl
        raise KeyError(
            f"task {self.name!r} has no instruction word {instruction!r}; "
            f"it has {[wl.instruction for wl in self.word_levels]}"
        )

    def instruction_for(self, word_level: Union[WordLevel, str, None] = None) -> Optional[str]:
        """The Instruction Word an input ends with: that of `word_level` (a
        WordLevel, or the instruction word choosing one; default the first),
        or the task's own `instruction` where it has no word level."""
        wl = word_level if isinstance(word_level, WordLevel) else self.word_level(word_level)
        return wl.instruction if wl is not None else self.instruction

    def with_labels(
        self,
        text_labels: Optional[Iterable[str]] = None,
        word_labels: Optional[Mapping[str, Iterable[str]]] = None,
    ) -> "Task":
        """This task with the label sets a dataset reveals (its own strings win)."""
        levels = tuple(
            replace(wl, labels=tuple(word_labels[wl.kind]))
            if word_labels and wl.kind in word_labels
            else wl
            for wl in self.word_levels
        )
        labels = tuple(text_labels) if text_labels is not None else self.text_labels
        return replace(self, text_labels=labels, word_levels=levels)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "text_labels": list(self.text_labels)}
        out["word_levels"] = [
            {
                "kind": wl.kind,
                "instruction": wl.instruction,
                "labels": list(wl.labels),
                "arity": wl.arity,
                "label_position": wl.label_position,
                "roles": list(wl.roles),
            }
            for wl in self.word_levels
        ]
        for key in ("instruction", "null_marker"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.separator:
            out["separator"] = self.separator
        if self.fullwidth_delimiters:
            out["fullwidth_delimiters"] = True
        # Written only when set, so a task without it reads and writes as before.
        if self.label_schema:
            out["label_schema"] = True
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "task") -> "Task":
        """A task from its definition (`to_dict`'s shape), checked field by
        field (`check_task_dict`): a ValueError naming `source` and the field."""
        checked = check_task_dict(data, source)
        try:
            levels = tuple(WordLevel(**wl) for wl in checked.pop("word_levels"))
            return cls(word_levels=levels, **checked)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: invalid task definition: {err}") from err


# --- the schema of a task definition -----------------------------------------
#
# Every reader of task definitions (task files, corpus sidecars,
# `giellm_tasks.json`, a GGUF's `giellm.tasks`, a component's task.json, the
# `giellm.task.v1` config block) goes through `Task.from_dict`, which checks
# the definition against these tables first. A field is one row: its checker
# (`_check_*`: the value, or a ValueError saying what it must be) and its
# default (`_REQUIRED`: none). A new optional field is one row here (and its
# dataclass field).

_REQUIRED = object()


def _check_name(value: Any) -> str:
    # A task name becomes part of file and pipe names (`package`): no path
    # separators, no control characters, not a relative directory name.
    if (
        not isinstance(value, str) or not value.strip() or value in (".", "..")
        or any(c in value for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        raise ValueError(
            f"must be a non-empty string without '/', '\\' or control characters, got {value!r:.80}"
        )
    return value


def _check_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type(value).__name__} {value!r:.80}")
    return value


def _check_word(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {value!r:.80}")
    return value


def _check_kind(value: Any) -> str:
    if value not in WORD_KINDS:
        raise ValueError(f"must be one of {list(WORD_KINDS)}, got {value!r:.80}")
    return value


def _check_optional_text(value: Any) -> Optional[str]:
    return None if value is None else _check_text(value)


def _check_bool(value: Any) -> bool:
    if not isinstance(value, bool):  # "false" is not False
        raise ValueError(f"must be true or false, got {type(value).__name__} {value!r:.80}")
    return value


def _check_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, got {type(value).__name__} {value!r:.80}")
    return value


def _check_words(value: Any) -> Tuple[str, ...]:
    """A list of non-empty strings ("社会文芸" is not four labels)."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list of strings, got {type(value).__name__} {value!r:.80}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise _FieldError(f"[{i}]", f"must be a non-empty string, got {item!r:.80}")
    return tuple(value)


def _check_word_levels(value: Any) -> List[Dict[str, Any]]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list of word level objects, got {type(value).__name__} {value!r:.80}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise _FieldError(f"[{i}]", f"must be an object, got {item!r:.80}")
        out.append(_check_fields(item, _WORD_LEVEL_FIELDS, f"[{i}].", "word level"))
    return out


_TASK_FIELDS: Dict[str, Tuple[Callable[[Any], Any], Any]] = {
    "name": (_check_name, _REQUIRED),
    "text_labels": (_check_words, ()),
    "word_levels": (_check_word_levels, ()),
    "instruction": (_check_optional_text, None),
    "separator": (_check_text, ""),
    "null_marker": (_check_optional_text, None),
    "fullwidth_delimiters": (_check_bool, False),
    "label_schema": (_check_bool, False),
}
_WORD_LEVEL_FIELDS: Dict[str, Tuple[Callable[[Any], Any], Any]] = {
    "kind": (_check_kind, _REQUIRED),
    "instruction": (_check_word, _REQUIRED),
    "labels": (_check_words, ()),
    "arity": (_check_int, 0),
    "label_position": (_check_int, -1),
    "roles": (_check_words, ()),
}


class _FieldError(ValueError):
    """A field's value is wrong; `field` is its path (`word_levels[0].labels`)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"field {field!r} {message}")
        self.field, self.message = field, message


def _check_fields(
    data: Mapping[str, Any], fields: Mapping[str, Tuple[Callable[[Any], Any], Any]], prefix: str, what: str
) -> Dict[str, Any]:
    unknown = sorted(str(key) for key in data if key not in fields)
    if unknown:
        message = f"unknown {what} field(s) {unknown}; known: {sorted(fields)}"
        raise _FieldError(prefix.rstrip("."), f"has {message}") if prefix else ValueError(message)
    out: Dict[str, Any] = {}
    for key, (check, default) in fields.items():
        if key not in data:
            if default is _REQUIRED:
                raise _FieldError(prefix + key, f"is missing: a {what} needs a {key!r}")
            out[key] = default
            continue
        try:
            out[key] = check(data[key])
        except _FieldError as err:  # in an item: word_levels[0].labels[2]
            raise _FieldError(prefix + key + err.field, err.message) from None
        except ValueError as err:
            raise _FieldError(prefix + key, str(err)) from None
    return out


def check_task_dict(data: Any, source: str = "task") -> Dict[str, Any]:
    """A task definition's fields, checked against the schema above (types,
    no unknown field, defaults filled in): a ValueError naming `source` and
    the field for anything else. What `Task.from_dict` builds a Task from."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: a task definition is an object, got {type(data).__name__}")
    try:
        return _check_fields(data, _TASK_FIELDS, "", "task")
    except ValueError as err:
        raise ValueError(f"{source}: invalid task definition: {err}") from None


def load_json_text(text: str, where: str) -> Any:
    """`json.loads(text)`; a ValueError naming `where` for text that is not
    JSON or is nested too deeply to read (a RecursionError otherwise)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{where}: JSON nested too deeply to read") from None
    except ValueError as err:
        raise ValueError(f"{where}: not valid JSON: {err}") from err


SCNM_TOPICS = ("社会", "文芸", "学問", "技術", "自然")
NE_LABELS = ("人名", "法人名", "政治的組織名", "その他の組織名", "地名", "施設名", "製品名", "イベント名")
POLARITIES = ("positive", "negative", "neutral")
TCREE_TOPICS = ("sports", "movies", "women", "IT", "CM")

_NER_IW = "Named Entity Recognition"


def _scpos(name: str, part: str) -> Task:
    return Task(
        name=name,
        text_labels=POLARITIES,
        word_levels=(WordLevel("sentiments", f"Sentiment Extraction {part}", POLARITIES),),
    )


BUILTIN_TASKS: Dict[str, Task] = {
    task.name: task
    for task in (
        Task("scnm", SCNM_TOPICS, (WordLevel("entities", _NER_IW, NE_LABELS),)),
        _scpos("scpos-rw", "Relation Word"),
        _scpos("scpos-n", "Noun"),
        _scpos("scpos-adj", "Adjective"),
        _scpos("scpos-n-adj", "Noun Adjective"),
        # TCREE's 7 relation and 11 event labels come from the data
        # (`Task.with_labels`); with no labels the parser accepts any label.
        Task(
            "tcree",
            TCREE_TOPICS,
            (
                WordLevel("relations", "Relation Extraction"),
                WordLevel("events", "Event Extraction"),
            ),
        ),
        Task("ner-ja", (), (WordLevel("entities", _NER_IW, NE_LABELS),)),
        Task("sentiment-ja", ("positive", "neutral", "negative"), instruction="Sentiment Classification"),
    )
}


# Where tasks beyond the built-in ones are known, as `TaskResolver` sources:
# (where, tasks by name), e.g. ("the model m.gguf", {...}); or a function
# giving them, called only for a name that is not built-in (reading a
# model's tasks costs a file read).
TaskSources = Sequence[Tuple[str, Mapping[str, "Task"]]]


def get_task(
    spec: Union[str, Task, Mapping[str, Any]],
    known: Union[TaskSources, Callable[[], TaskSources]] = (),
) -> Task:
    """A task from a built-in name, a task file (.json / .toml), a dict or a
    Task; then a name that `known` defines (the tasks a model was trained
    on: the component asks its backend, `backends.base.ModelTasks`). An
    unknown name is a KeyError listing the built-in names and `known`'s."""
    if isinstance(spec, Task):
        return spec
    if isinstance(spec, Mapping):
        return Task.from_dict(spec)
    if spec in BUILTIN_TASKS:
        return BUILTIN_TASKS[spec]
    path = Path(spec)
    if path.suffix in (".json", ".toml"):
        if not path.exists():
            raise FileNotFoundError(f"task file not found: {path}")
        return load_task_file(path)
    sources = list(known() if callable(known) else known)
    if any(spec in tasks for _, tasks in sources):
        return TaskResolver(sources).resolve(spec)  # says which, where two sources disagree
    raise KeyError(
        f"unknown task {spec!r}; built-in tasks: {sorted(BUILTIN_TASKS)}"
        + "".join(f"; {where}: {sorted(tasks)}" for where, tasks in sources)
        + "; or a .json/.toml task file"
    )


def task_named(name: str) -> Task:
    """The built-in task `name`. For a task named in data: a name there is
    never opened as a file (only the user gives a task file)."""
    if name not in BUILTIN_TASKS:
        raise KeyError(
            f"unknown task {name!r}; built-in tasks: {sorted(BUILTIN_TASKS)} "
            "(a task file is given by the user, e.g. --task, not named in the data)"
        )
    return BUILTIN_TASKS[name]


def load_task_file(path: Union[str, Path]) -> Task:
    path = Path(path)
    try:
        if path.suffix == ".toml":
            import tomllib  # Python >= 3.11

            data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
        else:
            data = load_json_text(path.read_text(encoding="utf-8-sig"), str(path))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: cannot read task file: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a task file holds one object")
    return Task.from_dict(data, source=str(path))


@registry.misc("giellm.task.v1")
def make_task(
    name: str,
    text_labels: Sequence[str] = (),
    word_levels: Sequence[Dict[str, Any]] = (),
    instruction: Optional[str] = None,
    separator: str = "",
    null_marker: Optional[str] = None,
    fullwidth_delimiters: bool = False,
    label_schema: bool = False,
) -> Task:
    """A task defined in a spaCy config block:

        [components.giellm.task]
        @misc = "giellm.task.v1"
        name = "my-task"
        text_labels = ["A", "B"]
        word_levels = [{"kind": "entities", "instruction": "Named Entity Recognition", "labels": ["X"]}]
    """
    data: Dict[str, Any] = {
        "name": name,
        "text_labels": list(text_labels),
        "word_levels": [dict(wl) for wl in word_levels],
        "instruction": instruction,
        "separator": separator,
        "null_marker": null_marker,
        "fullwidth_delimiters": fullwidth_delimiters,
        "label_schema": label_schema,
    }
    return Task.from_dict(data, source="[giellm.task.v1]")


def task_names() -> List[str]:
    return sorted(BUILTIN_TASKS)


# --- task definitions that travel with data and models -----------------------

# The JSON that carries task definitions: a corpus's sidecar file
# (`train.tasks.json` beside `train.jsonl`), `giellm_tasks.json` in a model
# directory, the `giellm.tasks` string of an exported GGUF.
TASKS_JSON_VERSION = 1
TASKS_JSON_KEY = "giellm_tasks"


def tasks_to_json(tasks: Iterable[Task]) -> Dict[str, Any]:
    """`{"giellm_tasks": 1, "tasks": [task dict, ...]}` (see `Task.to_dict`)."""
    return {TASKS_JSON_KEY: TASKS_JSON_VERSION, "tasks": [task.to_dict() for task in tasks]}


def tasks_from_json(data: Any, source: str) -> Dict[str, Task]:
    """The tasks of `tasks_to_json`'s JSON, by name; ValueError naming
    `source` (and the task's index) for anything else."""
    if not isinstance(data, dict) or data.get(TASKS_JSON_KEY) != TASKS_JSON_VERSION:
        raise ValueError(
            f"{source}: not a task definitions file (expected an object with "
            f"{TASKS_JSON_KEY!r}: {TASKS_JSON_VERSION} and 'tasks')"
        )
    items = data.get("tasks")
    if not isinstance(items, list):
        raise ValueError(f"{source}: 'tasks' must be a list of task definitions")
    tasks: Dict[str, Task] = {}
    for i, item in enumerate(items):
        where = f"{source}: tasks[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: a task definition is an object")
        task = Task.from_dict(item, source=where)
        if task.name in tasks:
            raise ValueError(f"{where}: task {task.name!r} is defined twice")
        tasks[task.name] = task
    return tasks


def read_tasks_json(path: Union[str, Path]) -> Dict[str, Task]:
    """The task definitions in the JSON file `path` (`tasks_to_json`)."""
    path = Path(path)
    try:
        data = load_json_text(path.read_text(encoding="utf-8-sig"), str(path))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read task definitions: {err}") from err
    return tasks_from_json(data, str(path))


def _difference(a: Task, b: Task) -> str:
    """What differs between two definitions of one task, briefly."""
    da, db = a.to_dict(), b.to_dict()
    out = []
    if da["text_labels"] != db["text_labels"]:
        out.append(f"text labels {da['text_labels']} vs {db['text_labels']}")
    levels_a = {wl["kind"]: wl for wl in da["word_levels"]}
    levels_b = {wl["kind"]: wl for wl in db["word_levels"]}
    for kind in dict.fromkeys([*levels_a, *levels_b]):
        wa, wb = levels_a.get(kind), levels_b.get(kind)
        if wa is None or wb is None:
            out.append(f"{kind}: {'none' if wa is None else 'some'} vs {'none' if wb is None else 'some'}")
        elif wa["labels"] != wb["labels"]:
            out.append(f"{kind} labels {wa['labels']} vs {wb['labels']}")
        elif wa != wb:
            out.append(f"{kind}: {sorted(k for k in wa if wa[k] != wb.get(k))} differ")
    rest = sorted(k for k in set(da) | set(db) if k not in ("text_labels", "word_levels") and da.get(k) != db.get(k))
    if rest:
        out.append(f"{', '.join(rest)} differ")
    return "; ".join(out)


class TaskResolver:
    """What a task name found in data (a record's `task`) stands for.

    The sources are searched in order, the built-in tasks last; the first
    that defines the name wins. A typical order: the user's `--task` files,
    then the tasks a model was trained on, then those a corpus carries.
    Where another source defines the name differently, one line on the
    `spacy_giellm` logger says which definition was used. A name is only
    looked up: nothing named in data is ever opened as a file.

    `default` is the task of records that name none (the one task the user
    gave, if exactly one)."""

    def __init__(
        self,
        sources: Sequence[Tuple[str, Mapping[str, Task]]] = (),
        default: Optional[Task] = None,
    ) -> None:
        self.sources: List[Tuple[str, Dict[str, Task]]] = [(label, dict(tasks)) for label, tasks in sources]
        self.sources.append(("the built-in tasks", dict(BUILTIN_TASKS)))
        self.default = default
        self.origins: Dict[str, str] = {}  # name -> the source whose definition was used
        self._resolved: Dict[str, Task] = {}

    @classmethod
    def with_overrides(
        cls,
        overrides: Union[None, "TaskSpec", Sequence["TaskSpec"]] = None,
        sources: Sequence[Tuple[str, Mapping[str, Task]]] = (),
    ) -> "TaskResolver":
        """The user's tasks (`--task`: names, files, Tasks or dicts) first,
        then `sources`. One user task is also the task of records naming none."""
        if overrides is None:
            overrides = []
        elif isinstance(overrides, (str, Path, Task, Mapping)):
            overrides = [overrides]
        given: List[Tuple[str, Dict[str, Task]]] = []
        for spec in overrides:
            task = get_task(spec)
            label = f"--task {spec}" if isinstance(spec, (str, Path)) else "the task given"
            given.append((label, {task.name: task}))
        names = [name for _, tasks in given for name in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"two tasks given for one name: {names}")
        default = next(iter(given[0][1].values())) if len(given) == 1 else None
        return cls([*given, *sources], default=default)

    def known(self) -> List[str]:
        return sorted({name for _, tasks in self.sources for name in tasks})

    def resolve(self, name: Optional[str]) -> Task:
        """The task `name` stands for (None: `default`); KeyError if none."""
        if name is None:
            if self.default is None:
                raise KeyError("record names no task; give the task (--task)")
            return self.default
        if name in self._resolved:
            return self._resolved[name]
        found = [(label, tasks[name]) for label, tasks in self.sources if name in tasks]
        if not found:
            carried = sorted({n for _, tasks in self.sources[:-1] for n in tasks} - set(BUILTIN_TASKS))
            raise KeyError(
                f"unknown task {name!r}; built-in tasks: {sorted(BUILTIN_TASKS)}"
                + (f"; given or carried by the data or model: {carried}" if carried else "")
                + " (a task file is given by the user, e.g. --task, not named in the data)"
            )
        label, task = found[0]
        differing = [(other_label, other) for other_label, other in found[1:] if other != task]
        if differing:
            logger.warning(
                "task %r: using the definition from %s; %s", name, label, "; ".join(
                    f"{other_label} defines it differently ({_difference(task, other)})"
                    for other_label, other in differing
                ),
            )
        self._resolved[name] = task
        self.origins[name] = label
        return task

    @property
    def used(self) -> Dict[str, Task]:
        """The tasks resolved so far, by name, in the order first asked for."""
        return dict(self._resolved)


TaskSpec = Union[str, Path, Task, Mapping[str, Any]]
