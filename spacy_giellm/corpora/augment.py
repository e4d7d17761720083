"""Label-schema augmentation: training pairs that teach a model to read the
labels its input lists (the schema form, `Task.label_schema`) instead of
memorising one label set.

Each variant of an annotation is rendered with a task whose labels were
changed, and the annotation changed to match:

* subset: only some of the word level's labels are listed; the spans of
  the others stay unlabelled (they are not in the output). A subset that
  none of the sentence's spans have gives an empty result.
* fold: the labels of a group (`folds`: e.g. 法人名, 政治的組織名 and
  その他の組織名 as 組織) are listed as one, and their spans take its name.
* rename: a label is listed under another of its names (`names`: e.g.
  人名 as 人物 or person), and its spans take that name.
* the listed labels (word and text labels) are shuffled.

Text labels (a sentiment task's polarities) are renamed and shuffled too;
they are never subset, since the gold label must stay a candidate.

The variants are pairs only: `{"text", "task", "input", "output",
"augmented": {...}}`, with the task name of the original (whose full
definition the model stores) and no structured fields, since their labels
are not the task's. Pure Python; the names and folds are data
(`spacy_giellm/data/label_names.json` for the public corpora's labels).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..annotation import Annotation
from ..format import to_pair
from ..tasks import Task, WordLevel, load_json_text

LABEL_NAMES_FILE = Path(__file__).resolve().parent.parent / "data" / "label_names.json"


@dataclass(frozen=True)
class SchemaAugmentation:
    """How variants are drawn. Probabilities are per variant (`subset`,
    `fold`) or per listed label (`rename`)."""

    variants: int = 1  # augmented variants per annotation
    keep_original: bool = True  # also the annotation as it is (all labels, their own names)
    subset: float = 0.5
    fold: float = 0.3
    rename: float = 0.3
    shuffle: bool = True
    # label -> other names it may be listed under
    names: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # (names the group may take, the labels it folds)
    folds: Sequence[Tuple[Sequence[str], Sequence[str]]] = ()

    def __post_init__(self) -> None:
        if self.variants < 0:
            raise ValueError(f"variants must be >= 0, got {self.variants}")
        for key in ("subset", "fold", "rename"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} is a probability in [0, 1], got {value}")
        for i, (group_names, members) in enumerate(self.folds):
            if not group_names or len(members) < 2:
                raise ValueError(f"folds[{i}]: a fold needs at least one name and two labels, got {group_names!r}, {members!r}")


def load_label_names(path: Optional[Any] = None) -> Tuple[Dict[str, List[str]], List[Tuple[List[str], List[str]]]]:
    """(names, folds) from a JSON file `{"names": {label: [other names]},
    "folds": [{"names": [...], "labels": [...]}]}`; default: the shipped
    names of the public corpora's labels."""
    path = Path(path) if path is not None else LABEL_NAMES_FILE
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read label names: {err}") from err
    data = load_json_text(text, f"{path}: label names")  # deep nesting named, not a RecursionError
    if not isinstance(data, dict):
        raise ValueError(f"{path}: label names are an object with 'names' and 'folds'")
    names = data.get("names", {})
    if not isinstance(names, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(x, str) and x for x in v)
        for k, v in names.items()
    ):
        raise ValueError(f"{path}: 'names' maps each label to a list of non-empty strings")
    folds = []
    for i, item in enumerate(data.get("folds", [])):
        if not (isinstance(item, dict) and isinstance(item.get("names"), list) and isinstance(item.get("labels"), list)
                and all(isinstance(x, str) and x for x in item["names"] + item["labels"])):
            raise ValueError(f"{path}: folds[{i}] is an object with lists of strings 'names' and 'labels'")
        folds.append((list(item["names"]), list(item["labels"])))
    return {k: list(v) for k, v in names.items()}, folds


def _renamed(label: str, names: Mapping[str, Sequence[str]], p: float, taken: set, rng: random.Random) -> str:
    """`label`, or with probability `p` another of its names not yet `taken`."""
    options = [n for n in names.get(label, ()) if n not in taken]
    if options and rng.random() < p:
        return rng.choice(options)
    return label


def _word_mapping(
    wl: WordLevel, cfg: SchemaAugmentation, rng: random.Random
) -> Tuple[List[str], Dict[str, str]]:
    """(the labels to list, old label -> listed name for the labels kept)."""
    groups: List[Tuple[str, List[str]]] = []  # (listed name, labels it stands for)
    rest = list(wl.labels)
    if cfg.folds and rng.random() < cfg.fold:
        usable = [(n, m) for n, m in cfg.folds if all(x in rest for x in m)]
        if usable:
            group_names, members = rng.choice(usable)
            name = rng.choice(list(group_names))
            if name not in rest or name in members:
                groups.append((name, list(members)))
                rest = [x for x in rest if x not in members]
    groups += [(label, [label]) for label in rest]
    if rng.random() < cfg.subset and len(groups) > 1:
        groups = rng.sample(groups, rng.randint(1, len(groups) - 1))
    taken = {name for name, _ in groups}
    listed: List[str] = []
    mapping: Dict[str, str] = {}
    for name, members in groups:
        if len(members) == 1:
            new = _renamed(name, cfg.names, cfg.rename, taken, rng)
            taken.add(new)
        else:
            new = name
        listed.append(new)
        for old in members:
            mapping[old] = new
    if cfg.shuffle:
        rng.shuffle(listed)
    return listed, mapping


def augment_annotation(
    ann: Annotation, task: Task, cfg: SchemaAugmentation, rng: random.Random
) -> Tuple[Annotation, Task, Dict[str, Any]]:
    """One variant: (annotation, the task it is rendered with, what was
    done: `{"labels": listed word labels, "map": old -> new}`). The task
    has `label_schema` set, whatever `task` had."""
    info: Dict[str, Any] = {}
    variant_task = replace(task, label_schema=True)
    out = ann.copy()
    if task.text_labels:
        taken: set = set()
        text_map = {}
        for label in task.text_labels:
            new = _renamed(label, cfg.names, cfg.rename, taken | set(task.text_labels) - {label}, rng)
            taken.add(new)
            text_map[label] = new
        listed_text = [text_map[label] for label in task.text_labels]
        if cfg.shuffle:
            rng.shuffle(listed_text)
        variant_task = replace(variant_task, text_labels=tuple(listed_text))
        if out.label is not None:
            out.label = text_map.get(out.label, out.label)
        info["text_labels"] = listed_text
    wl = task.word_level(ann.instruction)
    if wl is not None and wl.labels:
        listed, mapping = _word_mapping(wl, cfg, rng)
        items = getattr(ann, wl.kind)
        kept = [replace(item, label=mapping[item.label]) for item in items if item.label in mapping]
        setattr(out, wl.kind, kept)
        levels = tuple(replace(level, labels=tuple(listed)) if level is wl else level for level in task.word_levels)
        variant_task = replace(variant_task, word_levels=levels)
        info["labels"] = listed
        info["map"] = mapping
    return out, variant_task, info


def augmented_records(
    annotations: Iterable[Tuple[Annotation, Task]], cfg: SchemaAugmentation, seed: int = 0
) -> Iterator[Dict[str, Any]]:
    """Training pair records: for each (annotation, task), the original in
    the schema form (if `keep_original`) and `cfg.variants` variants."""
    rng = random.Random(seed)
    for ann, task in annotations:
        if ann.text is None:
            raise ValueError(f"{ann.source or 'an annotation'}: no text to build a training pair from")
        if cfg.keep_original:
            schema_task = replace(task, label_schema=True)
            model_input, output = to_pair(ann, schema_task)
            yield {"text": ann.text, "task": task.name, "input": model_input, "output": output}
        for _ in range(cfg.variants):
            variant, variant_task, info = augment_annotation(ann, task, cfg, rng)
            model_input, output = to_pair(variant, variant_task)
            yield {"text": ann.text, "task": task.name, "input": model_input, "output": output, "augmented": info}


def augment_file(
    in_path: Any, out_path: Any, cfg: SchemaAugmentation, *, task: Any = None, seed: int = 0,
    skip_errors: bool = False,
) -> Dict[str, Any]:
    """`augmented_records` of the annotations of the JSONL `in_path`
    (`read_jsonl`: its sidecar or `task` defines their tasks), written to
    `out_path` all or nothing, with a sidecar defining each task in its
    schema form under its own name. Returns counts."""
    from ..util import atomic_path
    from .jsonl import read_jsonl
    from .report import ReadReport
    from .sidecar import task_resolver, write_corpus_tasks

    if Path(in_path).resolve() == Path(out_path).resolve():
        raise ValueError(f"augment: the output {out_path} is the input; write it elsewhere")
    report = ReadReport(path=str(in_path))
    resolver = task_resolver(task, in_path)
    pairs = ((ann, resolver.resolve(ann.task)) for ann in read_jsonl(in_path, task=resolver, skip_errors=skip_errors, report=report))
    written = 0
    with atomic_path(out_path) as tmp, open(tmp, "w", encoding="utf8") as f:
        for record in augmented_records(pairs, cfg, seed=seed):
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += 1
        if not written:
            raise ValueError(f"{in_path}: no annotation to augment")
        write_corpus_tasks(out_path, {name: replace(t, label_schema=True) for name, t in resolver.used.items()})
    return {"read": report.read, "skipped": report.skipped, "written": written,
            "tasks": sorted(resolver.used)}


__all__ = ["SchemaAugmentation", "augment_file", "augment_annotation", "augmented_records", "load_label_names", "LABEL_NAMES_FILE"]
