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
from .format import ParseResult, complete_pair_pieces
from .tasks import Task


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


class LoopStop:
    """Where an output still being generated has started to loop: a run of
    `RUN` pair pieces in a row that `DocPrediction.add` could not place in
    the text (each occurrence of a string holds one mention, so a string
    written more often than the text holds it is dropped), each repeating
    an earlier piece, label and span. An undertrained model writes such
    pieces again and again until `max_new_tokens`; decoding can end the
    sequence before the run, as nothing in it would reach the Doc, unless
    the model would have gone on to new pieces after it (the run of two
    makes that rarer than stopping at the first repeat: a model that repeats
    one piece and then writes new ones; benchmarks/decoding-ceiling.md counts
    the Docs that differ).

    The pieces are placed with `DocPrediction.add`'s own locator, in the
    same order, so "could not place" is exactly what the component
    decides. Relations and events are never stopped at: their arguments are
    placed anywhere, so a repeated one is not dropped."""

    RUN = 2

    def __init__(self, task: Task, text: str) -> None:
        self.task, self.text = task, text
        self._locator = StringLocator(text)
        self._seen: set = set()
        self._checked = 0  # complete pieces looked at so far
        self._run_start: Optional[int] = None  # where the current run of unplaceable repeats starts
        self._run = 0

    def check(self, output: str) -> Optional[int]:
        """Where (a character offset in `output`) the run of looping pieces
        starts, once it is `RUN` long, else None. Call it with the output as
        it grows: each complete piece is looked at once."""
        pieces = complete_pair_pieces(output, self.task, self.text)
        for start, label, span in pieces[self._checked :]:
            self._checked += 1
            placed = self._locator.locate(span) is not None
            if placed:
                self._run, self._run_start = 0, None
            elif (label, span) in self._seen:
                if self._run == 0:
                    self._run_start = start
                self._run += 1
                if self._run >= self.RUN:
                    return self._run_start
            self._seen.add((label, span))
        return None
