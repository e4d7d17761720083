"""The one annotation type that readers, the format, the scorer and the
component pass around.

The GIELLM output format carries strings only. Character offsets are filled
in where they are known (a corpus that has them, or after alignment to the
text) and are left out of equality, so `parse(render(a)) == a` compares what
the format can carry.
"""
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

Offsets = Optional[Tuple[int, int]]


@dataclass(frozen=True)
class Mention:
    """A word-level pair: an entity (label = type) or a sentiment word
    (label = polarity)."""

    label: str
    text: str
    start: Optional[int] = field(default=None, compare=False)
    end: Optional[int] = field(default=None, compare=False)

    def key(self) -> Tuple[str, ...]:
        return (self.label, self.text)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"label": self.label, "text": self.text}
        if self.start is not None and self.end is not None:
            out["start"], out["end"] = self.start, self.end
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Mention":
        return cls(str(data["label"]), str(data["text"]), data.get("start"), data.get("end"))


@dataclass(frozen=True)
class Relation:
    """A labelled tuple of argument strings.

    A relation has two arguments (head, tail); an event has as many as its
    task defines (the paper's TCREE events are quadruples: label plus three
    arguments). `offsets`, one per argument, are filled in where known.
    """

    label: str
    args: Tuple[str, ...]
    offsets: Tuple[Offsets, ...] = field(default=(), compare=False)

    def key(self) -> Tuple[str, ...]:
        return (self.label, *self.args)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"label": self.label, "args": list(self.args)}
        if any(o is not None for o in self.offsets):
            out["offsets"] = [list(o) if o is not None else None for o in self.offsets]
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Relation":
        offsets = tuple(tuple(o) if o is not None else None for o in data.get("offsets", ()))
        return cls(str(data["label"]), tuple(str(a) for a in data["args"]), offsets)  # type: ignore[arg-type]


# An event is a relation with more arguments; one type keeps one parser,
# one renderer and one scorer for both.
Event = Relation


@dataclass
class Annotation:
    """Everything one generation says about one text."""

    text: Optional[str] = None
    task: Optional[str] = None
    label: Optional[str] = None
    instruction: Optional[str] = None
    entities: List[Mention] = field(default_factory=list)
    sentiments: List[Mention] = field(default_factory=list)
    relations: List[Relation] = field(default_factory=list)
    events: List[Relation] = field(default_factory=list)
    # Extra per-record fields a corpus carries (an id, a split); kept through
    # the JSONL reader and writer, left out of equality and of `to_dict`.
    meta: Dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # Where a reader found it (`file:line`), so that a writer's error names
    # the input; left out of equality and of `to_dict`.
    source: Optional[str] = field(default=None, compare=False, repr=False)

    def word_keys(self) -> List[Tuple[str, ...]]:
        """Hashable word-level items for scoring, tagged with their kind."""
        keys: List[Tuple[str, ...]] = []
        keys.extend(("entity", *m.key()) for m in self.entities)
        keys.extend(("sentiment", *m.key()) for m in self.sentiments)
        keys.extend(("relation", *r.key()) for r in self.relations)
        keys.extend(("event", *r.key()) for r in self.events)
        return keys

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if self.text is not None:
            out["text"] = self.text
        if self.task is not None:
            out["task"] = self.task
        if self.label is not None:
            out["label"] = self.label
        if self.instruction is not None:
            out["instruction"] = self.instruction
        for name in ("entities", "sentiments", "relations", "events"):
            items = getattr(self, name)
            if items:
                out[name] = [item.to_dict() for item in items]
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Annotation":
        return cls(
            text=data.get("text"),
            task=data.get("task"),
            label=data.get("label"),
            instruction=data.get("instruction"),
            entities=[Mention.from_dict(d) for d in data.get("entities") or ()],
            sentiments=[Mention.from_dict(d) for d in data.get("sentiments") or ()],
            relations=[Relation.from_dict(d) for d in data.get("relations") or ()],
            events=[Relation.from_dict(d) for d in data.get("events") or ()],
        )

    def copy(self, **changes: Any) -> "Annotation":
        return replace(self, **changes)
