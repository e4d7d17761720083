"""The labels a dataset reveals, for tasks that do not list them (TCREE's
relation and event labels) or that name them differently.

- `infer_task_labels`: from formatted (input, output) pairs: the `<label>`
  run that ends every input, and the labels the outputs use;
- `tasks_from_gold`: from gold annotations, the task of each task name
  with the word labels the gold uses, so that predictions parse anchored
  on them.
"""
import re
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Sequence, Tuple, Union

from ..annotation import Annotation
from ..format import parse_output
from ..tasks import Task, TaskResolver, TaskSpec, get_task
from .sidecar import task_resolver


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


def tasks_from_gold(
    annotations: Iterable[Annotation], task: Union[None, TaskSpec, TaskResolver] = None
) -> Dict[Any, Task]:
    """The task of each task name in gold `annotations`, resolved through
    `task` (a TaskResolver: pass the reader's; or the user's task), else
    the built-in task of that name; a word level without labels (TCREE)
    gets the labels the gold uses, so that predictions parse anchored on
    them."""
    annotations = list(annotations)
    resolver = task_resolver(task)
    tasks: Dict[Any, Task] = {}
    for name in dict.fromkeys(a.task for a in annotations):
        resolved = resolver.resolve(name)
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
