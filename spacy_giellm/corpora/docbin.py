"""spaCy DocBin, both ways, in the layout the `giellm` component uses:

- text label  <-> `doc.cats` (all the task's text labels, 1.0 for the gold
  one; reading takes the argmax, only for a task with text labels)
- entities    <-> `doc.spans["giellm_entities"]` (all of them) and
  `doc.ents` (the longest of overlapping ones); reading prefers the group
- sentiments  <-> `doc.spans["giellm_sentiment"]` (label = polarity)
- relations / events <-> `doc.user_data[("giellm", kind)]` as
  `(label, ((arg, start, end), ...))`, which the component's
  `doc._.relations` / `doc._.events` read; a DocBin from elsewhere that
  only has those extensions is read through them (guarded by
  `Doc.has_extension`)
- task, instruction, meta <-> `doc.user_data[("giellm", "task" | ...)]`

What is lost writing: a span the tokenization cannot hold exactly is
widened to token boundaries (`alignment_mode="expand"`; counted in the
report's warnings, and reading gives back the wider text); a word-level
string without offsets that does not occur in the text has no span and is
dropped (counted); relation arguments without offsets keep their string
only. Without an `nlp` the text is split into one token per character, so
every span aligns and nothing is lost.
"""
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from ..annotation import Annotation, Mention, Relation
from ..tasks import Task
from ..util import atomic_path
from .report import CorpusError, ReadReport, TaskSpec, annotation_problems, resolve_task, writer_where

PathLike = Union[str, Path]

ENTITY_GROUP = "giellm_entities"
SENTIMENT_GROUP = "giellm_sentiment"
USER_DATA_KEY = "giellm"


def char_nlp() -> Any:
    """A blank multi-language pipeline whose tokenizer makes one token per
    character: any character span aligns."""
    import spacy
    from spacy.tokens import Doc

    nlp = spacy.blank("xx")

    def tokenize(text: str) -> Doc:
        return Doc(nlp.vocab, words=list(text), spaces=[False] * len(text))

    nlp.tokenizer = tokenize
    return nlp


def annotation_to_doc(ann: Annotation, nlp: Any, task: Optional[Task], report: ReadReport) -> Any:
    """A Doc holding `ann` (see the module docstring for the layout)."""
    from spacy.util import filter_spans

    if ann.text is None:
        raise ValueError("an annotation without text cannot become a Doc")
    doc = nlp.make_doc(ann.text)
    labels = task.text_labels if task is not None else ()
    if ann.label is not None:
        doc.cats = {label: float(label == ann.label) for label in (*labels, ann.label)}
    finder = _Finder(ann.text)
    for kind, group in (("entities", ENTITY_GROUP), ("sentiments", SENTIMENT_GROUP)):
        mentions: List[Mention] = getattr(ann, kind)
        if not mentions:
            continue
        spans = []
        for m in mentions:
            offsets = (m.start, m.end) if m.start is not None else finder.find(m.text)
            span = _span(doc, offsets, m.label, report, kind)
            if span is not None:
                spans.append(span)
        doc.spans[group] = spans
        if kind == "entities":
            kept = filter_spans(spans)
            if len(kept) < len(spans):
                report.warn("overlapping entities kept in doc.spans only, not doc.ents", len(spans) - len(kept))
            doc.ents = kept
    for kind in ("relations", "events"):
        rels: List[Relation] = getattr(ann, kind)
        if rels:
            doc.user_data[(USER_DATA_KEY, kind)] = [
                (rel.label, tuple(_arg(doc, rel, i, report) for i in range(len(rel.args)))) for rel in rels
            ]
    for key in ("task", "instruction"):
        if getattr(ann, key) is not None:
            doc.user_data[(USER_DATA_KEY, key)] = getattr(ann, key)
    if ann.meta:
        doc.user_data[(USER_DATA_KEY, "meta")] = dict(ann.meta)
    return doc


class _Finder:
    """Offsets of strings without them: left to right, then anywhere."""

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def find(self, value: str) -> Optional[Tuple[int, int]]:
        start = self.text.find(value, self.pos)
        if start < 0:
            start = self.text.find(value)
        if start < 0 or not value:
            return None
        self.pos = start + len(value)
        return start, start + len(value)


def _span(doc: Any, offsets: Optional[Tuple[int, int]], label: str, report: ReadReport, kind: str) -> Any:
    if offsets is None:
        report.warn(f"{kind} not found in the text (dropped)")
        return None
    span = doc.char_span(offsets[0], offsets[1], label=label, alignment_mode="expand")
    if span is None:
        report.warn(f"{kind} without a span (dropped)")
        return None
    if (span.start_char, span.end_char) != tuple(offsets):
        report.warn(f"{kind} widened to token boundaries")
    return span


def _arg(doc: Any, rel: Relation, i: int, report: ReadReport) -> Tuple[str, Optional[int], Optional[int]]:
    off = rel.offsets[i] if i < len(rel.offsets) else None
    if off is None:
        return (rel.args[i], None, None)
    return (rel.args[i], int(off[0]), int(off[1]))


def write_docbin(
    annotations: Iterable[Annotation],
    path: PathLike,
    task: Optional[TaskSpec] = None,
    *,
    nlp: Any = None,
    skip_errors: bool = False,
    report: Optional[ReadReport] = None,
) -> int:
    """Write annotations to a `.spacy` DocBin (with user data). `nlp`
    tokenizes (default: one token per character). Returns the number
    written; lossy steps are counted in `report.warnings`."""
    from spacy.tokens import DocBin

    report = report if report is not None else ReadReport(path=str(path))
    nlp = nlp if nlp is not None else char_nlp()
    cache: Dict[str, Task] = {}
    db = DocBin(store_user_data=True)
    written = 0
    for i, ann in enumerate(annotations, 1):
        where = writer_where(ann, path, i)
        try:
            resolved = resolve_task(task, ann.task, where, cache) if (task or ann.task) else None
            db.add(annotation_to_doc(ann, nlp, resolved, report))
        except CorpusError as err:
            report.skip(err, skip_errors)
            continue
        except ValueError as err:
            report.fail(where, str(err), skip_errors)
            continue
        written += 1
    with atomic_path(path) as tmp:
        db.to_disk(tmp)
    report.written += written
    return written


def doc_to_annotation(doc: Any, task: Optional[Task] = None) -> Annotation:
    """What a Doc holds, as an Annotation (see the module docstring)."""
    from spacy.tokens import Doc

    stored = doc.user_data
    name = stored.get((USER_DATA_KEY, "task"))
    task_name = task.name if task is not None else name
    label = None
    if doc.cats and max(doc.cats.values()) > 0 and (task is None or task.text_labels):
        label = max(doc.cats, key=lambda k: doc.cats[k])
    ents = doc.spans[ENTITY_GROUP] if ENTITY_GROUP in doc.spans else doc.ents
    sentiments = doc.spans[SENTIMENT_GROUP] if SENTIMENT_GROUP in doc.spans else ()
    tuples: Dict[str, List[Relation]] = {}
    for kind in ("relations", "events"):
        raw = stored.get((USER_DATA_KEY, kind))
        if raw is not None:
            tuples[kind] = [
                Relation(label_, tuple(a[0] for a in args), tuple(
                    (a[1], a[2]) if a[1] is not None else None for a in args
                ))
                for label_, args in raw
            ]
        elif Doc.has_extension(kind):
            tuples[kind] = [_relation_from_extension(item) for item in getattr(doc._, kind) or ()]
        else:
            tuples[kind] = []
    instruction = stored.get((USER_DATA_KEY, "instruction"))
    if instruction is None and task is not None and len(task.instructions) > 1:
        used = [wl.instruction for wl in task.word_levels if tuples.get(wl.kind) or (
            wl.kind == "entities" and len(ents)) or (wl.kind == "sentiments" and len(sentiments))]
        instruction = used[0] if len(used) == 1 else None
    return Annotation(
        text=doc.text,
        task=task_name,
        label=label,
        instruction=instruction,
        entities=[Mention(s.label_, s.text, s.start_char, s.end_char) for s in ents],
        sentiments=[Mention(s.label_, s.text, s.start_char, s.end_char) for s in sentiments],
        relations=tuples["relations"],
        events=tuples["events"],
        meta=dict(stored.get((USER_DATA_KEY, "meta")) or {}),
    )


def _relation_from_extension(item: Any) -> Relation:
    """A relation from `doc._.relations`: an object with `label` and `args`
    (Spans or strings), a Relation-style dict, or a (label, args) pair."""
    if isinstance(item, dict):
        return Relation.from_dict(item)
    label, args = (item.label, item.args) if hasattr(item, "args") else item
    texts, offsets = [], []
    for arg in args:
        if hasattr(arg, "start_char"):
            texts.append(arg.text)
            offsets.append((arg.start_char, arg.end_char))
        else:
            texts.append(str(arg))
            offsets.append(None)
    return Relation(str(label), tuple(texts), tuple(offsets))


def read_docbin(
    path: PathLike,
    *,
    task: Optional[TaskSpec] = None,
    nlp: Any = None,
    skip_errors: bool = False,
    report: Optional[ReadReport] = None,
) -> Iterator[Annotation]:
    """Annotations from a `.spacy` DocBin. The task is `task`, else the one
    each Doc names in its user data (a built-in task)."""
    from spacy.tokens import DocBin

    import spacy

    report = report if report is not None else ReadReport(path=str(path))
    try:
        db = DocBin(store_user_data=True).from_disk(path)
    except (ValueError, OSError, KeyError, TypeError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a DocBin: {err}") from err
    vocab = nlp.vocab if nlp is not None else spacy.blank("xx").vocab
    cache: Dict[str, Task] = {}
    for i, doc in enumerate(db.get_docs(vocab)):
        report.read += 1
        where = f"{path}: doc {i}"
        try:
            resolved = resolve_task(task, doc.user_data.get((USER_DATA_KEY, "task")), where, cache)
            ann = doc_to_annotation(doc, resolved)
            bad = annotation_problems(ann, resolved)
            if bad:
                raise CorpusError(f"{where}: {'; '.join(bad[:3])}")
        except CorpusError as err:
            report.skip(err, skip_errors)
            continue
        except (TypeError, ValueError, KeyError, IndexError) as err:
            report.fail(where, f"cannot read the doc: {err!r}", skip_errors)
            continue
        report.task = report.task or resolved
        ann.source = where
        yield ann
