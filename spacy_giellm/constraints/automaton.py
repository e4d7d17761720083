"""The output language for one input text as a lazily built byte DFA.

Subset construction over the task's NFA (cached per task and instruction),
whose span fields step through the text's span automaton byte by byte.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from ..tasks import Task, get_task
from .language import (
    FREE_LABEL_EXCLUDED,
    MAX_FREE_LABEL_CHARS,
    Alt,
    FreeLabel,
    Lit,
    Seq,
    Span,
    Star,
    has_free_labels,
    span_automaton,
    output_language,
)


_UTF8_LEADS = ((range(0xC2, 0xE0), 1), (range(0xE0, 0xF0), 2), (range(0xF0, 0xF5), 3))
_CONT = range(0x80, 0xC0)


class _NFA:
    """The task's part of the automaton: everything but the spans, which are
    placeholders (`spans`: entry state -> exit state) walked lazily on the
    text's span automaton. Built once per (task, instruction)."""

    def __init__(self) -> None:
        self.edges: List[Dict[int, List[int]]] = []
        self.eps: List[List[int]] = []
        self.spans: Dict[int, int] = {}

    def new(self) -> int:
        self.edges.append({})
        self.eps.append([])
        return len(self.edges) - 1

    def add(self, a: int, byte: int, b: int) -> None:
        self.edges[a].setdefault(byte, []).append(b)

    def bytes_from(self, a: int, data: bytes, trie: Optional[Dict[Tuple[int, bytes], int]] = None) -> int:
        """A chain reading `data` from `a`; with `trie`, chains share prefixes (deterministic)."""
        for i, byte in enumerate(data):
            if trie is not None:
                key = (a, data[: i + 1])
                if key not in trie:
                    trie[key] = self.new()
                    self.add(a, byte, trie[key])
                a = trie[key]
            else:
                b = self.new()
                self.add(a, byte, b)
                a = b
        return a

    def compile(self, node: Any, start: int) -> int:
        if isinstance(node, Lit):
            return self.bytes_from(start, node.text.encode("utf-8"))
        if isinstance(node, Seq):
            for item in node.items:
                start = self.compile(item, start)
            return start
        if isinstance(node, Alt):
            end = self.new()
            trie: Dict[Tuple[int, bytes], int] = {}
            for item in node.items:
                if isinstance(item, Lit):  # literal alternatives share a byte trie
                    self.eps[self.bytes_from(start, item.text.encode("utf-8"), trie)].append(end)
                else:
                    branch = self.new()
                    self.eps[start].append(branch)
                    self.eps[self.compile(item, branch)].append(end)
            return end
        if isinstance(node, Star):
            loop = self.new()
            self.eps[start].append(loop)
            self.eps[self.compile(node.item, loop)].append(loop)
            return loop
        if isinstance(node, Span):
            entry, end = self.new(), self.new()
            self.eps[start].append(entry)
            self.spans[entry] = end
            return end
        if isinstance(node, FreeLabel):
            return self._free_label(start)
        raise TypeError(f"unknown grammar node {node!r}")

    def _free_label(self, start: int) -> int:
        end = self.new()
        state = start
        for i in range(MAX_FREE_LABEL_CHARS):
            nxt = self.new()
            for byte in range(0x21, 0x7F):
                if byte not in FREE_LABEL_EXCLUDED:
                    self.add(state, byte, nxt)
            for leads, n_cont in _UTF8_LEADS:
                conts = [self.new() for _ in range(n_cont)]
                for byte in leads:
                    self.add(state, byte, conts[0])
                for a, b in zip(conts, conts[1:] + [nxt]):
                    for byte in _CONT:
                        self.add(a, byte, b)
            self.eps[nxt].append(end)
            state = nxt
        return end


@lru_cache(maxsize=64)
def _skeleton(task: Task, instruction: Optional[str], leading_space: bool) -> Tuple[_NFA, int, int]:
    nfa = _NFA()
    start = nfa.new()
    accept = nfa.compile(output_language(task, instruction, leading_space), start)
    return nfa, start, accept


# An NFA item: a task state (int), or a place in a span (entry state, span
# automaton state, bytes read of a character not yet complete).
_Item = Union[int, Tuple[int, int, bytes]]


class FormatAutomaton:
    """The well-formed outputs for one input text, as a lazily built byte DFA.

    States are ints; `step` returns -1 for a dead state. Subsets and
    transitions are computed when first walked and cached, so a prompt costs
    its span automaton (linear in the text) plus the states its outputs visit."""

    def __init__(self, task: Union[Task, str], text: str, instruction: Optional[str] = None,
                 leading_space: bool = True) -> None:
        self.task = get_task(task)
        self.text = text
        self.instruction = instruction
        # labels of any characters: almost every token may follow some states
        self.free_labels = has_free_labels(self.task, instruction)
        self._nfa, start, self._accept = _skeleton(self.task, instruction, leading_space)
        self._sam, self._final = span_automaton(text)
        self._char_bytes: Dict[int, List[Tuple[bytes, int]]] = {}
        self._subsets: List[frozenset] = []
        self._ids: Dict[frozenset, int] = {}
        self._moves: List[Optional[Dict[int, int]]] = []  # all successors, once asked for
        self._steps: List[Dict[int, int]] = []  # successors built so far (-1: dead)
        self._accepting: List[bool] = []
        self.start = self._state_of((start,))

    def _span_chars(self, k: int) -> List[Tuple[bytes, int]]:
        """(UTF-8 bytes, next state) of span automaton state k's characters."""
        found = self._char_bytes.get(k)
        if found is None:
            found = self._char_bytes[k] = [(ch.encode("utf-8"), m) for ch, m in self._sam[k].items()]
        return found

    def _state_of(self, items: Iterable[_Item]) -> int:
        nfa, final = self._nfa, self._final
        seen = set(items)
        stack = list(seen)
        while stack:
            item = stack.pop()
            if isinstance(item, int):
                nxt: List[_Item] = list(nfa.eps[item])
                if item in nfa.spans:
                    nxt.append((item, 0, b""))
            else:
                entry, k, pending = item
                nxt = [nfa.spans[entry]] if not pending and k and final[k] else []
            for b in nxt:
                if b not in seen:
                    seen.add(b)
                    stack.append(b)
        key = frozenset(seen)
        found = self._ids.get(key)
        if found is None:
            found = self._ids[key] = len(self._subsets)
            self._subsets.append(key)
            self._moves.append(None)
            self._steps.append({})
            self._accepting.append(self._accept in seen)
        return found

    def _targets(self, state: int, only: Optional[int] = None) -> Dict[int, List[_Item]]:
        """NFA items reached from `state` by each byte (or by `only`)."""
        targets: Dict[int, List[_Item]] = {}
        for item in self._subsets[state]:
            if isinstance(item, int):
                edges = self._nfa.edges[item]
                if only is None:
                    for byte, bs in edges.items():
                        targets.setdefault(byte, []).extend(bs)
                elif only in edges:
                    targets.setdefault(only, []).extend(edges[only])
                continue
            entry, k, pending = item
            n = len(pending)
            for data, m in self._span_chars(k):
                if len(data) > n and (only is None or data[n] == only) and data.startswith(pending):
                    target = (entry, m, b"") if len(data) == n + 1 else (entry, k, data[: n + 1])
                    targets.setdefault(data[n], []).append(target)
        return targets

    def moves(self, state: int) -> Dict[int, int]:
        """{byte: next state} for all live bytes of `state`."""
        moves = self._moves[state]
        if moves is None:
            moves = {byte: self._state_of(items) for byte, items in self._targets(state).items()}
            self._moves[state] = moves
            self._steps[state] = moves
        return moves

    def step(self, state: int, byte: int) -> int:
        """The state after one byte (-1: dead); only that successor is built."""
        if state < 0:
            return -1
        known = self._steps[state]
        found = known.get(byte)
        if found is None:
            if self._moves[state] is not None:
                return -1
            items = self._targets(state, byte).get(byte)
            found = known[byte] = self._state_of(items) if items else -1
        return found

    def feed(self, state: int, data: bytes) -> int:
        for byte in data:
            if state < 0:
                return -1
            state = self.step(state, byte)
        return state

    def accepting(self, state: int) -> bool:
        return state >= 0 and self._accepting[state]

    def matches(self, output: str) -> bool:
        return self.accepting(self.feed(self.start, output.encode("utf-8")))
