"""Extracted strings -> character offsets -> spaCy Spans.

The format carries strings, not offsets. Each string is looked up in the
text, in the order of the output (the next occurrence after the previous
match), as the corpora list their mentions. Only when the exact string is
absent do we compare under NFKC (width, compatibility forms, voiced marks
and accents that compose), mapping the offsets back to the original text.
Two mentions are never placed on the same occurrence. A string that is
still not found is reported, never placed somewhere plausible.
"""
import unicodedata
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Set, Tuple

from spacy.tokens import Doc, Span

Offsets = Tuple[int, int]


# Unicode's stream-safe text format allows 30 combining marks in a row.
MAX_CLUSTER = 32


class _NormalizedText:
    """NFKC-normalized text with a map back to the original offsets.

    The text is cut into clusters that NFKC keeps apart (a base character
    with what composes onto it: `ｶﾞ` -> `ガ`, `e` + U+0301 -> `é`); each
    cluster is normalized whole, and each of its normalized characters maps
    back to the whole cluster."""

    def __init__(self, text: str) -> None:
        clusters: List[Tuple[int, int]] = []
        for i, char in enumerate(text):
            start = clusters[-1][0] if clusters else i
            if clusters and i - start < MAX_CLUSTER:
                joined = unicodedata.normalize("NFKC", text[start : i + 1])
                apart = unicodedata.normalize("NFKC", text[start:i]) + unicodedata.normalize("NFKC", char)
                if joined != apart:
                    clusters[-1] = (start, i + 1)
                    continue
            clusters.append((i, i + 1))
        pieces: List[str] = []
        starts: List[int] = []
        ends: List[int] = []
        for start, end in clusters:
            norm = unicodedata.normalize("NFKC", text[start:end])
            pieces.append(norm)
            starts.extend([start] * len(norm))
            ends.extend([end] * len(norm))
        self.text = "".join(pieces)
        self.starts, self.ends = starts, ends

    def find(self, needle: str, start: int, taken: Set[Offsets]) -> Optional[Offsets]:
        norm = unicodedata.normalize("NFKC", needle)
        if not norm:
            return None
        # `start` is an offset in the original text; begin at its normalized position.
        pos = self.text.find(norm, bisect_left(self.starts, start))
        while pos >= 0:
            hit = (self.starts[pos], self.ends[pos + len(norm) - 1])
            if hit not in taken:
                return hit
            pos = self.text.find(norm, pos + 1)
        return None


class StringLocator:
    """Finds strings in one text, following the order they are asked for.

    Within one ordered sequence (until `prev` is set to None) two strings
    are never placed on the same occurrence: a string asked for more often
    than the text holds it is not found the extra times."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._normalized: Optional[_NormalizedText] = None
        self._prev: Optional[Offsets] = None
        self.taken: Set[Offsets] = set()

    @property
    def prev(self) -> Optional[Offsets]:
        return self._prev

    @prev.setter
    def prev(self, value: Optional[Offsets]) -> None:
        # None starts a new sequence (e.g. the next kind of mention).
        self._prev = value
        if value is None:
            self.taken = set()

    def _find(self, needle: str, start: int, taken: Set[Offsets]) -> Optional[Offsets]:
        pos = self.text.find(needle, start)
        while pos >= 0 and (pos, pos + len(needle)) in taken:
            pos = self.text.find(needle, pos + 1)
        return (pos, pos + len(needle)) if pos >= 0 else None

    def locate(self, needle: str, ordered: bool = True) -> Optional[Offsets]:
        if not needle:
            return None
        starts = [0]
        taken = self.taken if ordered else set()
        if ordered and self.prev is not None:
            # after the previous match; then overlapping it; then anywhere.
            starts = [self.prev[1], self.prev[0], 0]
        found = next((hit for s in starts if (hit := self._find(needle, s, taken))), None)
        if found is None:
            if self._normalized is None:
                self._normalized = _NormalizedText(self.text)
            found = next((hit for s in starts if (hit := self._normalized.find(needle, s, taken))), None)
        if found is not None and ordered:
            self.prev = found
            self.taken.add(found)
        return found


@dataclass
class SpanMaker:
    """Char offsets -> Spans on one Doc, with the configured alignment mode."""

    doc: Doc
    alignment_mode: str = "strict"
    misaligned: List[Offsets] = field(default_factory=list)

    def span(self, start: int, end: int, label: str = "") -> Optional[Span]:
        span = self.doc.char_span(start, end, label=label, alignment_mode=self.alignment_mode)
        if span is None or len(span) == 0:
            self.misaligned.append((start, end))
            return None
        return span


def split_tokens_at(doc: Doc, offsets: Iterable[Offsets]) -> int:
    """Split the tokens of `doc` in place so that every offset pair falls on
    token boundaries. Returns how many tokens were split.

    The pieces of a split token copy its POS and tag; all but the last attach
    to the last, which keeps the token's head and dependency label, so a
    parsed doc stays a tree."""
    cuts: Dict[int, Set[int]] = {}
    for start, end in offsets:
        for boundary in (start, end):
            if boundary <= 0 or boundary >= len(doc.text):
                continue
            token = _token_containing(doc, boundary)
            if token is not None and token.idx < boundary < token.idx + len(token.text):
                cuts.setdefault(token.i, set()).add(boundary - token.idx)
    if not cuts:
        return 0
    with doc.retokenize() as retokenizer:
        for i, points in cuts.items():
            token = doc[i]
            bounds = [0, *sorted(points), len(token.text)]
            orths = [token.text[a:b] for a, b in zip(bounds, bounds[1:])]
            n = len(orths)
            heads = [(token, n - 1)] * (n - 1) + [token.head if token.head.i != token.i else (token, n - 1)]
            attrs = {
                "POS": [token.pos_] * n,
                "TAG": [token.tag_] * n,
                "LEMMA": orths,
                "DEP": ["compound"] * (n - 1) + [token.dep_],
            }
            retokenizer.split(token, orths, heads=heads, attrs=attrs)
    return len(cuts)


def _token_containing(doc: Doc, char: int):
    # Binary search over token start offsets.
    lo, hi = 0, len(doc) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        tok = doc[mid]
        if char < tok.idx:
            hi = mid - 1
        elif char >= tok.idx + len(tok.text) + len(tok.whitespace_):
            lo = mid + 1
        else:
            return tok
    return None
