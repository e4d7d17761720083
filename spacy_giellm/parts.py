"""A doc's text cut into the parts the model is given, so that no text is
silently truncated: at most `max_chars` each, cut at sentence ends where
possible; and, for a backend that counts its prompt tokens, cut further
until each part's prompt fits.

A part is `(char offset in the doc, text)`; a unit is `(doc index, char
offset, text)`. `stats` (a Counter) counts the cuts.
"""
import re
from typing import Callable, Counter, Dict, List, Optional, Sequence, Tuple

from spacy.tokens import Doc

Unit = Tuple[int, int, str]
# texts -> the prompt tokens each one's prompt takes
CountTokens = Callable[[List[str]], List[int]]


def doc_parts(doc: Doc, max_chars: int, stats: Counter) -> List[Tuple[int, str]]:
    """(char offset, text) parts of at most max_chars, cut at sentence
    ends where possible, else at token ends."""
    text = doc.text
    if len(text) <= max_chars:
        return [(0, text)]
    stats["split_docs"] += 1
    if doc.has_annotation("SENT_START"):
        bounds = [sent.end_char for sent in doc.sents]
    else:
        bounds = [m.end() for m in re.finditer(r"[。！？!?\n]+", text)] + [len(text)]
    token_ends = [t.idx + len(t.text) for t in doc]
    chunks, start, last_end = [], 0, 0
    for end in sorted(set(bounds)):
        if end - start <= max_chars:
            last_end = end
            continue
        if last_end > start:
            chunks.append((start, last_end))
            start = last_end
        while end - start > max_chars:  # one sentence too long: cut at a token end
            cut = max((e for e in token_ends if start < e <= start + max_chars), default=start + max_chars)
            chunks.append((start, cut))
            stats["hard_cuts"] += 1
            start = cut
        last_end = end
    if last_end > start:
        chunks.append((start, last_end))
    return [(s, text[s:e]) for s, e in chunks if text[s:e].strip()]


def fit_to_context(
    docs: Sequence[Doc], units: List[Unit], count: CountTokens, limit: int, skipped: Dict[int, str], stats: Counter
) -> List[Unit]:
    """Cut the units whose prompt takes more than `limit` tokens (by the
    backend's own count: max_chars is only a first cut, and 1,000 emoji are
    4,000 tokens) at sentence or token ends until they fit. A doc with a
    part that no cut makes fit goes into `skipped` with the reason, and
    none of its units is returned."""
    counts = count([text for _, _, text in units])
    fitted: List[Unit] = []
    for (i, start, text), n in zip(units, counts):
        if n <= limit:
            fitted.append((i, start, text))
            continue
        stats["token_splits"] += 1
        parts = split_to_fit(docs[i], start, start + len(text), count, limit)
        if parts is None:
            skipped.setdefault(i, (
                f"a part of {len(text)} chars needs {n} prompt tokens, the backend takes {limit} "
                "(its context less max_new_tokens), and no sentence or token end splits it to fit"
            ))
        else:
            fitted.extend((i, s, docs[i].text[s:e]) for s, e in parts)
    return [u for u in fitted if u[0] not in skipped]


def split_to_fit(doc: Doc, start: int, end: int, count: CountTokens, limit: int) -> Optional[List[Tuple[int, int]]]:
    """doc.text[start:end] halved (at the sentence end, else the token end,
    nearest the middle) until every part's prompt fits; None if a single
    token does not fit. Tokens are never cut: a mention could not be placed."""
    cuts = []
    if doc.has_annotation("SENT_START"):
        cuts = [s.end_char for s in doc.sents if start < s.end_char < end]
    if not cuts:
        cuts = [t.idx + len(t.text) for t in doc if start < t.idx + len(t.text) < end]
    if not cuts:
        return None
    mid = min(cuts, key=lambda c: abs(2 * c - start - end))
    halves = [(a, b) for a, b in ((start, mid), (mid, end)) if doc.text[a:b].strip()]
    parts: List[Tuple[int, int]] = []
    for (a, b), n in zip(halves, count([doc.text[a:b] for a, b in halves])):
        sub = [(a, b)] if n <= limit else split_to_fit(doc, a, b, count, limit)
        if sub is None:
            return None
        parts.extend(sub)
    return parts
