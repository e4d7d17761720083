"""The output language of a task, as a small grammar, and the automaton of
the spans of one input text.

For one input text, the well-formed outputs are

    [" "] <label> sep IW sep word-level-part

with `<label>` one of the task's candidates, IW the Instruction Word the
prompt ends with, and word-level pieces made of the task's labels (any short
delimiter-free string where the task does not list them) and spans that are
non-empty substrings of the input text (not starting or ending with
whitespace, which the parser would strip). The optional leading space is what
SentencePiece tokenizers with a dummy prefix generate first; the parser strips
it. `output_language` writes this once; `gbnf` and `automaton` compile it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..format import label_marker
from ..tasks import Task, WordLevel

MAX_FREE_LABEL_CHARS = 30
FREE_LABEL_EXCLUDED = set(b":;<>")



@dataclass(frozen=True)
class Lit:
    text: str


@dataclass(frozen=True)
class Alt:
    items: Tuple[Any, ...]


@dataclass(frozen=True)
class Seq:
    items: Tuple[Any, ...]


@dataclass(frozen=True)
class Star:
    item: Any


@dataclass(frozen=True)
class Span:
    """A non-empty substring of the input text."""


@dataclass(frozen=True)
class FreeLabel:
    """1..MAX_FREE_LABEL_CHARS characters, no `:;<>`, no whitespace or control."""


def _labels(labels: Sequence[str]) -> Any:
    return Alt(tuple(Lit(label) for label in labels)) if labels else FreeLabel()


def _piece(wl: WordLevel) -> Any:
    if wl.is_pair:
        return Seq((Lit(":"), _labels(wl.labels), Lit(";"), Span()))
    items: List[Any] = [Lit(":")]
    for i in range(wl.arity):
        if i:
            items.append(Lit(";"))
        items.append(_labels(wl.labels) if i == wl.label_position else Span())
    items.append(Lit(":"))
    return Seq(tuple(items))


def has_free_labels(task: Task, instruction: Optional[str] = None) -> bool:
    """Whether the outputs for `instruction` have labels of any characters
    (a word level that lists none): then almost every token may follow."""
    wl = task.word_level(instruction)
    return wl is not None and not wl.labels


def output_language(task: Task, instruction: Optional[str] = None, leading_space: bool = True) -> Any:
    """The well-formed outputs for a prompt of `task` (with `instruction`)."""
    parts: List[Any] = []
    if task.text_labels:
        parts.append(Alt(tuple(Lit(label_marker(label)) for label in task.text_labels)))
    wl = task.word_level(instruction)
    iw = task.instruction_for(wl)
    if iw:
        parts.append(Lit(iw))
    if wl is not None:
        body: Any = Star(_piece(wl))
        if task.null_marker:
            body = Alt((body, Lit(task.null_marker)))
        parts.append(body)
    items: List[Any] = [Alt((Lit(" "), Lit("")))] if leading_space else []
    for i, part in enumerate(parts):
        if i and task.separator:
            items.append(Lit(task.separator))
        items.append(part)
    return Seq(tuple(items))


def _suffix_automaton(text: str) -> List[Dict[str, int]]:
    """Transitions of the suffix automaton of `text` (state 0 = start).
    Every state accepts: the automaton reads exactly the substrings."""
    nxt: List[Dict[str, int]] = [{}]
    link, length, last = [-1], [0], 0
    for ch in text:
        cur = len(nxt)
        nxt.append({})
        length.append(length[last] + 1)
        link.append(0)
        p = last
        while p != -1 and ch not in nxt[p]:
            nxt[p][ch] = cur
            p = link[p]
        if p != -1:
            q = nxt[p][ch]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:
                clone = len(nxt)
                nxt.append(dict(nxt[q]))
                length.append(length[p] + 1)
                link.append(link[q])
                while p != -1 and nxt[p].get(ch) == q:
                    nxt[p][ch] = clone
                    p = link[p]
                link[q] = link[cur] = clone
        last = cur
    return nxt


def span_automaton(text: str) -> Tuple[List[Dict[str, int]], List[bool]]:
    """(transitions, final) of an automaton of the spans of `text`: non-empty
    substrings that neither start nor end with whitespace (the parser would
    strip it). Built on the suffix automaton, where all transitions into a
    state read the same character: a state is final when that character is
    not whitespace; states that cannot reach a final state are dropped."""
    sam = _suffix_automaton(text)
    final = [False] * len(sam)
    for moves in sam:
        for ch, m in moves.items():
            final[m] = not ch.isspace()
    moves = [dict(m) for m in sam]
    moves[0] = {ch: m for ch, m in moves[0].items() if not ch.isspace()}
    live = list(final)
    changed = True
    while changed:  # a few rounds: only trailing whitespace runs are dead
        changed = False
        for k in range(len(moves) - 1, -1, -1):
            if not live[k] and any(live[m] for m in moves[k].values()):
                live[k] = changed = True
    return [{ch: m for ch, m in mv.items() if live[m]} for mv in moves], final
