"""Doc <-> Annotation: where GIELLM's annotations live on a spaCy Doc.

- text label  <-> `doc.cats` (reading takes the argmax, for a task with
  text labels)
- entities    <-> `doc.spans["giellm_entities"]` (all of them) and
  `doc.ents` (non-overlapping)
- sentiments  <-> `doc.spans["giellm_sentiment"]` (label = polarity)
- relations / events <-> `doc.user_data[("giellm", kind)]` as
  `[(label, ((arg, start, end), ...)), ...]` (char offsets of the argument
  in the text, or None where it is not in it): plain tuples, so that
  `DocBin(store_user_data=True)` and pickling keep them.
  `doc._.relations` / `doc._.events` show them as `RelationRecord`s whose
  arguments are Spans (built once per Doc, widened to token boundaries)
  where they are in the text, else strings.
- task, instruction, meta <-> `doc.user_data[("giellm", "task" | ...)]`
  (corpus DocBins)

`doc_to_annotation` reads every Doc, the component's and a corpus's, the
same way; `annotation_to_doc` writes a corpus annotation into a new Doc.
"""
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from spacy.tokens import Doc, Span

from .align import StringLocator
from .annotation import Annotation, Mention, Relation
from .tasks import Task

ENTITY_GROUP = "giellm_entities"
SENTIMENT_GROUP = "giellm_sentiment"
GROUPS = {"entities": ENTITY_GROUP, "sentiments": SENTIMENT_GROUP}
USER_DATA_KEY = "giellm"
TUPLE_KINDS = ("relations", "events")
# Relation and event arguments become Spans widened to token boundaries:
# an argument is a string the model wrote, not an entity with its own
# alignment setting.
ARG_ALIGNMENT = "expand"
EXTENSIONS = ("relations", "events", "giellm_output")

StoredArg = Tuple[str, Optional[int], Optional[int]]
StoredTuple = Tuple[str, Tuple[StoredArg, ...]]


@dataclass(frozen=True)
class RelationRecord:
    """A relation or event on a Doc: its label and arguments, each a Span
    where the argument was found in the text, else the generated string."""

    label: str
    args: Tuple[Union[Span, str], ...]

    @property
    def head(self) -> Union[Span, str]:
        return self.args[0]

    @property
    def tail(self) -> Union[Span, str]:
        return self.args[-1]


# Per Doc and kind: the stored tuples they were built from, and each
# argument's token bounds (or string). Only ints and strings: a Span would
# keep its Doc, the key, alive.
_BUILT: "weakref.WeakKeyDictionary[Doc, Dict[str, Tuple[Any, int, int, List[Tuple[str, tuple]]]]]" = (
    weakref.WeakKeyDictionary()
)


def _records(doc: Doc, kind: str) -> List[RelationRecord]:
    """`doc._.<kind>`: the stored tuples with Spans for the arguments in the
    text. Their token bounds are found once per Doc (again only after the
    tuples or the tokenization change)."""
    stored = doc.user_data.get((USER_DATA_KEY, kind), ())
    per_doc = _BUILT.setdefault(doc, {})
    cached = per_doc.get(kind)
    if cached is None or cached[0] is not stored or cached[1:3] != (len(stored), len(doc)):
        bounds = []
        for label, args in stored:
            found = []
            for text, start, end in args:
                span = doc.char_span(start, end, alignment_mode=ARG_ALIGNMENT) if start is not None else None
                found.append((span.start, span.end) if span is not None else text)
            bounds.append((label, tuple(found)))
        cached = per_doc[kind] = (stored, len(stored), len(doc), bounds)
    return [
        RelationRecord(label, tuple(doc[a[0] : a[1]] if isinstance(a, tuple) else a for a in args))
        for label, args in cached[3]
    ]


def _getter(kind: str) -> Callable[[Doc], List[RelationRecord]]:
    return lambda doc: _records(doc, kind)


def _setter(kind: str) -> Callable[[Doc, Iterable[Any]], None]:
    def setter(doc: Doc, value: Iterable[Any]) -> None:
        set_tuples(doc, kind, [_relation_of(record) for record in value or ()])

    return setter


def install_extensions() -> None:
    """`doc._.relations`, `doc._.events` and `doc._.giellm_output` (once)."""
    for kind in TUPLE_KINDS:
        if not Doc.has_extension(kind):
            Doc.set_extension(kind, getter=_getter(kind), setter=_setter(kind))
    if not Doc.has_extension("giellm_output"):
        Doc.set_extension("giellm_output", default=None)


def set_tuples(doc: Doc, kind: str, relations: Sequence[Relation]) -> None:
    """Store relations or events (`kind`) on `doc`, with their offsets."""
    stored: List[StoredTuple] = []
    for rel in relations:
        args = []
        for i, arg in enumerate(rel.args):
            off = rel.offsets[i] if i < len(rel.offsets) else None
            args.append((arg, None, None) if off is None else (arg, int(off[0]), int(off[1])))
        stored.append((rel.label, tuple(args)))
    doc.user_data[(USER_DATA_KEY, kind)] = stored


def get_tuples(doc: Doc, kind: str) -> List[Relation]:
    """The relations or events (`kind`) a Doc holds: stored ones, else (a
    DocBin from elsewhere) those its `doc._.<kind>` extension gives."""
    raw = doc.user_data.get((USER_DATA_KEY, kind))
    if raw is not None:
        return [
            Relation(label, tuple(a[0] for a in args), tuple((a[1], a[2]) if a[1] is not None else None for a in args))
            for label, args in raw
        ]
    if Doc.has_extension(kind):
        return [_relation_of(item) for item in getattr(doc._, kind) or ()]
    return []


def _relation_of(item: Any) -> Relation:
    """A Relation from a `RelationRecord` (or any object with `label` and
    `args`: Spans or strings), a Relation-style dict, or a (label, args)
    pair."""
    if isinstance(item, Relation):
        return item
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


def doc_to_annotation(
    doc: Doc, task: Optional[Task] = None, *, task_labels_only: bool = False, group_entities: bool = True
) -> Annotation:
    """What a Doc holds, as an Annotation (see the module docstring).

    A task without text labels reads no label. `task_labels_only`: only the
    task's labels count (not GiNZA's own ENE entities, nor another pipe's
    cats); mentions of a kind the task does not extract are left out.
    `group_entities`: entities from `doc.spans["giellm_entities"]` (all of
    them) where the Doc has it, else `doc.ents`."""
    stored = doc.user_data
    cats = doc.cats
    if task is not None and (task_labels_only or not task.text_labels):
        cats = {k: v for k, v in cats.items() if k in task.text_labels}
    label = max(cats, key=cats.get) if cats and max(cats.values()) > 0 else None
    ents = doc.spans[ENTITY_GROUP] if group_entities and ENTITY_GROUP in doc.spans else doc.ents
    sentiments = doc.spans[SENTIMENT_GROUP] if SENTIMENT_GROUP in doc.spans else ()
    mentions = {"entities": _mentions(ents, "entities", task, task_labels_only),
                "sentiments": _mentions(sentiments, "sentiments", task, task_labels_only)}
    tuples = {kind: get_tuples(doc, kind) for kind in TUPLE_KINDS}
    instruction = stored.get((USER_DATA_KEY, "instruction"))
    if instruction is None and task is not None and len(task.instructions) > 1:
        used = [wl.instruction for wl in task.word_levels if (mentions if wl.is_pair else tuples)[wl.kind]]
        instruction = used[0] if len(used) == 1 else None
    return Annotation(
        text=doc.text,
        task=task.name if task is not None else stored.get((USER_DATA_KEY, "task")),
        label=label,
        instruction=instruction,
        relations=tuples["relations"],
        events=tuples["events"],
        meta=dict(stored.get((USER_DATA_KEY, "meta")) or {}),
        **mentions,
    )


def annotation_from_doc(doc: Doc, task: Optional[Task] = None) -> Annotation:
    """What a Doc shows, as an Annotation, for scoring: the text label among
    the task's, `doc.ents` with the task's labels (not GiNZA's own ENE
    entities), the task's sentiment words, relations and events. Gold docs
    and docs the component annotated read the same way."""
    return doc_to_annotation(doc, task, task_labels_only=True, group_entities=False)


def _mentions(spans: Iterable[Span], kind: str, task: Optional[Task], task_labels_only: bool) -> List[Mention]:
    allowed = None
    if task is not None and task_labels_only:
        levels = [wl for wl in task.word_levels if wl.kind == kind]
        if not levels:
            return []
        allowed = set(levels[0].labels) or None
    return [Mention(s.label_, s.text, s.start_char, s.end_char) for s in spans if allowed is None or s.label_ in allowed]


def annotation_to_doc(ann: Annotation, nlp: Any, task: Optional[Task] = None, report: Any = None) -> Doc:
    """A new Doc holding `ann` (see the module docstring): cats hold every
    text label of the task, 1.0 for `ann`'s; mentions without offsets are
    looked up in the text as the component does (`align.StringLocator`).
    `report.warn(what, count)` (e.g. a corpora `ReadReport`) hears of each
    lossy step: a mention not in the text or without a span (dropped), one
    widened to token boundaries, overlapping entities kept in the span
    group only."""
    from spacy.util import filter_spans

    warn: Callable[..., None] = report.warn if report is not None else (lambda what, count=1: None)
    if ann.text is None:
        raise ValueError("an annotation without text cannot become a Doc")
    doc = nlp.make_doc(ann.text)
    labels = task.text_labels if task is not None else ()
    if ann.label is not None:
        doc.cats = {label: float(label == ann.label) for label in (*labels, ann.label)}
    locator = StringLocator(ann.text)
    for kind, group in GROUPS.items():
        mentions: List[Mention] = getattr(ann, kind)
        if not mentions:
            continue
        locator.prev = None
        spans = []
        for m in mentions:
            offsets = (m.start, m.end) if m.start is not None and m.end is not None else locator.locate(m.text)
            span = _widened_span(doc, offsets, m.label, kind, warn)
            if span is not None:
                spans.append(span)
        doc.spans[group] = spans
        if kind == "entities":
            kept = filter_spans(spans)
            if len(kept) < len(spans):
                warn("overlapping entities kept in doc.spans only, not doc.ents", len(spans) - len(kept))
            doc.ents = kept
    for kind in TUPLE_KINDS:
        if getattr(ann, kind):
            set_tuples(doc, kind, getattr(ann, kind))
    for key in ("task", "instruction"):
        if getattr(ann, key) is not None:
            doc.user_data[(USER_DATA_KEY, key)] = getattr(ann, key)
    if ann.meta:
        doc.user_data[(USER_DATA_KEY, "meta")] = dict(ann.meta)
    return doc


def _widened_span(
    doc: Doc, offsets: Optional[Tuple[int, int]], label: str, kind: str, warn: Callable[..., None]
) -> Optional[Span]:
    if offsets is None:
        warn(f"{kind} not found in the text (dropped)")
        return None
    span = doc.char_span(offsets[0], offsets[1], label=label, alignment_mode="expand")
    if span is None:
        warn(f"{kind} without a span (dropped)")
        return None
    if (span.start_char, span.end_char) != tuple(offsets):
        warn(f"{kind} widened to token boundaries")
    return span


def char_nlp() -> Any:
    """A blank multi-language pipeline whose tokenizer makes one token per
    character: any character span aligns."""
    import spacy

    nlp = spacy.blank("xx")

    def tokenize(text: str) -> Doc:
        return Doc(nlp.vocab, words=list(text), spaces=[False] * len(text))

    nlp.tokenizer = tokenize
    return nlp
