"""What the model said about one doc, placed in the doc's text: the
component's `predict` makes these, `set_annotations` writes them to Docs.

A long doc is generated in parts; each part's output is parsed against the
part's text, its strings looked up there (`align.StringLocator`) and the
offsets shifted to the doc's. Nothing here touches a Doc.
"""
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from .align import StringLocator
from .annotation import Annotation, Mention, Relation
from .format import ParseResult


@dataclass
class PartPrediction:
    start: int  # where the part starts in the doc's text
    text: str
    output: str
    parse: ParseResult
    # text label -> P(label | prompt), where the backend scores labels
    scores: Optional[Dict[str, float]] = None


@dataclass
class DocPrediction:
    parts: List[PartPrediction] = field(default_factory=list)
    # why the doc was not generated (its prompt cannot fit the backend), or None
    skipped: Optional[str] = None
    # what was found in the text, with char offsets in the doc
    found: Annotation = field(default_factory=Annotation)
    problems: List[str] = field(default_factory=list)
    not_found: List[str] = field(default_factory=list)

    def add(self, part: PartPrediction) -> None:
        """Take in one part: its parse problems, and its strings placed in the text."""
        self.parts.append(part)
        self.problems.extend(part.parse.problems)
        ann = part.parse.annotation
        locator = StringLocator(part.text)
        for kind in ("entities", "sentiments"):
            locator.prev = None
            for m in getattr(ann, kind):
                hit = locator.locate(m.text)
                if hit is None:
                    self.not_found.append(m.text)
                else:
                    getattr(self.found, kind).append(
                        Mention(m.label, part.text[hit[0] : hit[1]], part.start + hit[0], part.start + hit[1])
                    )
        for kind in ("relations", "events"):
            for rel in getattr(ann, kind):
                args, offsets = [], []
                for arg in rel.args:
                    hit = locator.locate(arg, ordered=False)
                    if hit is None:
                        self.not_found.append(arg)
                        args.append(arg)
                        offsets.append(None)
                    else:
                        args.append(part.text[hit[0] : hit[1]])
                        offsets.append((part.start + hit[0], part.start + hit[1]))
                getattr(self.found, kind).append(Relation(rel.label, tuple(args), tuple(offsets)))

    def cats(self, labels: Sequence[str]) -> Dict[str, float]:
        """A probability per candidate label: the parts' label scores (else
        their generated label) weighted by their length, normalized."""
        votes: Counter = Counter()
        for part in self.parts:
            if part.scores:
                for label, score in part.scores.items():
                    votes[label] += score * len(part.text)
            elif part.parse.annotation.label is not None:
                votes[part.parse.annotation.label] += len(part.text)
        total = sum(votes.values())
        return {label: (votes[label] / total if total else 0.0) for label in labels}
