"""The stockmark Wikipedia NER corpus (stockmarkteam/ner-wikipedia-dataset,
`ner.json`): a JSON array of `{curid, text, entities: [{name, span: [start,
end), type}]}` -> task `ner-ja`, entities in span order with their offsets.

An entity whose span does not hold its name is an error naming the record
(its index and curid) and the entity: offsets are never shifted to fit.
"""
import json
from pathlib import Path
from typing import Any, Iterator, List, Optional, Union

from ..annotation import Annotation, Mention
from ..tasks import get_task
from .report import ReadReport, TaskSpec, annotation_problems, read_text

PathLike = Union[str, Path]


def read_stockmark_ner(
    path: PathLike,
    *,
    task: Optional[TaskSpec] = "ner-ja",
    skip_errors: bool = False,
    report: Optional[ReadReport] = None,
) -> Iterator[Annotation]:
    """Annotations from `ner.json`. `task` defaults to `ner-ja` (give `scnm`
    etc. only for a task with the same entity word level)."""
    report = report if report is not None else ReadReport(path=str(path))
    resolved = get_task(task or "ner-ja")
    report.task = resolved
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: invalid JSON: {err.msg} (column {err.colno})") from err
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
    for index, record in enumerate(data):
        report.read += 1
        curid = record.get("curid") if isinstance(record, dict) else None
        where = f"{path}: record {index} (curid {curid})"
        problem, entities = _entities(record)
        if not problem:
            meta = {"curid": curid}
            ann = Annotation(text=record["text"], task=resolved.name, entities=entities, meta=meta, source=where)
            problem = "; ".join(annotation_problems(ann, resolved)[:3])
        if problem:
            report.fail(where, problem, skip_errors)
            continue
        yield ann


def _entities(record: Any) -> "tuple[Optional[str], List[Mention]]":
    if not isinstance(record, dict):
        return f"a record is an object, got {type(record).__name__}", []
    text = record.get("text")
    if not isinstance(text, str) or not text:
        return f"no text: {text!r}", []
    raw = record.get("entities", [])
    if not isinstance(raw, list):
        return f"'entities' is not a list: {raw!r}", []
    mentions: List[Mention] = []
    for i, ent in enumerate(raw):
        try:
            name, label, (start, end) = ent["name"], ent["type"], ent["span"]
        except (KeyError, TypeError, ValueError):
            return f"entity {i}: needs name, type and span [start, end]: {ent!r}", []
        if not all(isinstance(v, str) and v for v in (name, label)):
            return f"entity {i}: name and type must be non-empty strings: {ent!r}", []
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
            return f"entity {i} {name!r}: span must be two integers, got {ent['span']!r}", []
        if text[start:end] != name or not 0 <= start < end <= len(text):
            return f"entity {i} {name!r}: span [{start}, {end}) holds {text[start:end]!r}", []
        mentions.append(Mention(label, name, start, end))
    mentions.sort(key=lambda m: (m.start, m.end))
    return None, mentions
