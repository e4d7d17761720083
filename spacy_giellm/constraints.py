"""Constrained decoding for the GIELLM output format.

For one input text, the well-formed outputs are

    [" "] <label> sep IW sep word-level-part

with `<label>` one of the task's candidates, IW the Instruction Word the
prompt ends with, and word-level pieces made of the task's labels (any short
delimiter-free string where the task does not list them) and spans that are
non-empty substrings of the input text (not starting or ending with
whitespace, which the parser would strip). The optional leading space is what
SentencePiece tokenizers with a dummy prefix generate first; the parser strips
it.

The language is written once (`output_language`) and compiled two ways:

* `build_gbnf`: a llama.cpp GBNF grammar, for llama.cpp servers. Spans are a
  suffix automaton of the text written as rules (one rule per state, at most
  2n states and 3n transitions for n characters), so the grammar grows
  linearly with the text, not with the number of substrings.
* `FormatAutomaton`: a byte-level DFA, built lazily by subset construction
  over the task's NFA (cached per task) whose span fields step through the
  text's span automaton byte by byte; walked at token
  level by `TokenAutomaton` against a byte trie of the vocabulary built once
  per tokenizer. The allowed tokens of a state are cached, so a state costs
  one trie walk however many sequences reach it. `HFConstraintProcessor` is
  the transformers `LogitsProcessor` on top (one state per row); the
  llama.cpp backend uses `TokenAutomaton` directly.

The text label is decoded in token space: only the label's own tokenization
(the one training used) is allowed, not e.g. "<" followed by the label's
characters. With single-token labels, the generated label is then the argmax
of `label_scores`.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .format import build_input
from .tasks import Task, WordLevel, get_task

__all__ = [
    "output_language",
    "build_gbnf",
    "FormatAutomaton",
    "TokenVocab",
    "TokenAutomaton",
    "PromptConstrainer",
    "HFConstraintProcessor",
    "split_prompt",
]

MAX_FREE_LABEL_CHARS = 30
_FREE_LABEL_EXCLUDED = set(b":;<>")


# ------------------------------------------------------------ the language


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


def output_language(task: Task, instruction: Optional[str] = None, leading_space: bool = True) -> Any:
    """The well-formed outputs for a prompt of `task` (with `instruction`)."""
    parts: List[Any] = []
    if task.text_labels:
        parts.append(Alt(tuple(Lit(f"<{label}>") for label in task.text_labels)))
    wl = task.word_level(instruction)
    iw = wl.instruction if wl else task.instruction
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


def _span_automaton(text: str) -> Tuple[List[Dict[str, int]], List[bool]]:
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


# ------------------------------------------------------------------- GBNF


def _gbnf_literal(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def build_gbnf(task: Union[Task, str], text: str, instruction: Optional[str] = None) -> str:
    """A llama.cpp GBNF grammar (root rule `root`) of the well-formed outputs for `text`."""
    task = get_task(task)
    rules: "OrderedDict[str, str]" = OrderedDict()
    sam: List[Dict[str, int]] = []

    def state_rule(k: int) -> str:
        return f"s{k}"

    def render(node: Any) -> str:
        if isinstance(node, Lit):
            return _gbnf_literal(node.text)
        if isinstance(node, Seq):
            return " ".join(r for r in (render(i) for i in node.items) if r)
        if isinstance(node, Alt):
            items = [i for i in node.items if not (isinstance(i, Lit) and not i.text)]
            body = "(" + " | ".join(render(i) for i in items) + ")"
            return body + "?" if len(items) < len(node.items) else body
        if isinstance(node, Star):
            return "(" + render(node.item) + ")*"
        if isinstance(node, FreeLabel):
            return f"[^:;<>\\x00-\\x20]{{1,{MAX_FREE_LABEL_CHARS}}}"
        if isinstance(node, Span):
            if not sam:
                moves, final = _span_automaton(text)
                sam.extend(moves)
                for k in range(1, len(sam)):
                    if sam[k]:
                        alts = " | ".join(f"{_gbnf_literal(c)}{_ref(sam[k][c])}" for c in sam[k])
                        rules[state_rule(k)] = f"({alts})?" if final[k] else f"({alts})"
                alts = " | ".join(f"{_gbnf_literal(c)}{_ref(sam[0][c])}" for c in sam[0])
                rules["span"] = alts or '"\\x00"'  # no span can be written: an impossible byte
            return "span"
        raise TypeError(f"unknown grammar node {node!r}")

    def _ref(k: int) -> str:
        return f" {state_rule(k)}" if sam[k] else ""

    root = render(output_language(task, instruction))
    lines = [f"root ::= {root}"] + [f"{name} ::= {body}" for name, body in rules.items()]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------- byte DFA


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
                if byte not in _FREE_LABEL_EXCLUDED:
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
        self._nfa, start, self._accept = _skeleton(self.task, instruction, leading_space)
        self._sam, self._final = _span_automaton(text)
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


# ------------------------------------------------------------ token level


_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _bytes_to_unicode() -> Dict[str, int]:
    """GPT-2's byte <-> printable character table, inverted (char -> byte)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class TokenVocab:
    """Each token's bytes (None: never generated inside an output) and the
    EOS ids, with a byte trie over the tokens for walking automata."""

    def __init__(self, token_bytes: Sequence[Optional[bytes]], eos_ids: Iterable[int]) -> None:
        self.token_bytes = list(token_bytes)
        self.eos_ids = sorted(set(int(t) for t in eos_ids))
        self.children: List[Dict[int, int]] = [{}]
        self.tokens_at: List[List[int]] = [[]]
        for tid, data in enumerate(self.token_bytes):
            if not data or tid in self.eos_ids:
                continue
            node = 0
            for byte in data:
                child = self.children[node].get(byte)
                if child is None:
                    child = self.children[node][byte] = len(self.children)
                    self.children.append({})
                    self.tokens_at.append([])
                node = child
            self.tokens_at[node].append(tid)

    def __len__(self) -> int:
        return len(self.token_bytes)

    @classmethod
    def from_hf(cls, tokenizer: Any, eos_ids: Optional[Iterable[int]] = None) -> "TokenVocab":
        """From a transformers tokenizer: SentencePiece-style (`▁`, `<0xNN>`) or byte-level BPE."""
        n = len(tokenizer)
        pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        byte_level = False
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            decoder = getattr(backend, "decoder", None)
            byte_level = "ByteLevel" in repr(decoder)
        table = _bytes_to_unicode() if byte_level else None
        added = {int(k): v for k, v in getattr(tokenizer, "added_tokens_decoder", {}).items()}
        out: List[Optional[bytes]] = []
        for tid, piece in enumerate(pieces):
            if piece is None or tid in special or (tid in added and getattr(added[tid], "special", False)):
                out.append(None)
            elif tid in added:
                out.append(str(added[tid].content).encode("utf-8"))
            elif table is not None:
                try:
                    out.append(bytes(table[c] for c in piece))
                except KeyError:
                    out.append(piece.encode("utf-8"))
            else:
                m = _BYTE_PIECE.match(piece)
                out.append(bytes([int(m.group(1), 16)]) if m else piece.replace("\u2581", " ").encode("utf-8"))
        if eos_ids is None:
            eos_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        return cls(out, eos_ids)


# A state: (DFA state, node in the label trie); node -1 = past the label.
TokenState = Tuple[int, int]


class TokenAutomaton:
    """A `FormatAutomaton` seen through one vocabulary.

    `label_sequences` are the text labels' own token ids: while a text label
    is due, only these sequences may be generated."""

    def __init__(self, automaton: FormatAutomaton, vocab: TokenVocab,
                 label_sequences: Sequence[Sequence[int]] = ()) -> None:
        self.automaton = automaton
        self.vocab = vocab
        self._trie: List[Dict[int, int]] = [{}]
        for seq in label_sequences:
            if not seq or automaton.feed(automaton.start, b"".join(vocab.token_bytes[t] or b"\0" for t in seq)) < 0:
                continue  # a tokenization the format does not accept
            node = 0
            for t in seq:
                node = self._trie[node].setdefault(int(t), len(self._trie))
                if node == len(self._trie):
                    self._trie.append({})
        self._eos = set(vocab.eos_ids)
        self._cache: Dict[TokenState, Tuple[List[int], Dict[int, TokenState]]] = {}
        self.tensors: Dict[TokenState, Any] = {}  # per-state id tensors for the HF processor
        self._arrays: Dict[TokenState, Any] = {}

    def start(self) -> TokenState:
        return (self.automaton.start, 0 if self._trie[0] else -1)

    def allowed(self, state: TokenState) -> Tuple[List[int], Dict[int, TokenState]]:
        """(sorted allowed token ids, {token: next state}); EOS ids map to the same state."""
        found = self._cache.get(state)
        if found is None:
            found = self._cache[state] = self._compute(state)
        return found

    def allowed_array(self, state: TokenState):
        """The allowed ids as a numpy array (cached)."""
        found = self._arrays.get(state)
        if found is None:
            import numpy as np

            found = self._arrays[state] = np.asarray(self.allowed(state)[0], dtype=np.int64)
        return found

    def advance(self, state: TokenState, token: int) -> Optional[TokenState]:
        """The state after `token`, or None where it was not allowed. Checks
        this one token: the state's whole allowed set is not needed."""
        token = int(token)
        full = self._cache.get(state)
        if full is not None:
            return full[1].get(token)
        dfa, node = state
        if token in self._eos:
            return state if self.automaton.accepting(dfa) else None
        data = self.vocab.token_bytes[token] if 0 <= token < len(self.vocab.token_bytes) else None
        if not data:
            return None
        if node >= 0:
            child = self._trie[node].get(token)
            if child is None:
                return None
            d = self.automaton.feed(dfa, data)
            return (d, child if self._trie[child] else -1) if d >= 0 else None
        d = self.automaton.feed(dfa, data)
        return (d, -1) if d >= 0 else None

    def pick(self, state: TokenState, ranked: Iterable[int]) -> Optional[int]:
        """The first token of `ranked` (best first) allowed in `state`, or None.

        Greedy decoding needs only this: the best allowed token. A model that
        keeps to the format finds it among its first few tokens, so the
        state's whole allowed set (a walk over the vocabulary) is only
        computed when none of `ranked` fits."""
        for token in ranked:
            if self.advance(state, token) is not None:
                return int(token)
        return None

    def _compute(self, state: TokenState) -> Tuple[List[int], Dict[int, TokenState]]:
        dfa, node = state
        auto, vocab = self.automaton, self.vocab
        nxt: Dict[int, TokenState] = {}
        if node >= 0:
            for t, child in self._trie[node].items():
                d = auto.feed(dfa, vocab.token_bytes[t] or b"")
                if d >= 0:
                    nxt[t] = (d, child if self._trie[child] else -1)
        else:
            children, tokens_at = vocab.children, vocab.tokens_at
            stack = [(0, dfa)]
            while stack:
                tnode, d = stack.pop()
                kids = children[tnode]
                moves = auto.moves(d)
                if len(moves) <= len(kids):
                    pairs = [(kids[b], d2) for b, d2 in moves.items() if b in kids]
                else:
                    pairs = [(child, moves[b]) for b, child in kids.items() if b in moves]
                for child, d2 in pairs:
                    for t in tokens_at[child]:
                        nxt[t] = (d2, -1)
                    if children[child]:
                        stack.append((child, d2))
            if auto.accepting(dfa) or not nxt:  # nothing fits: end the output rather than stall
                for t in vocab.eos_ids:
                    nxt[t] = state
        return sorted(nxt), nxt

    def is_eos(self, token: int) -> bool:
        return int(token) in self.vocab.eos_ids


def split_prompt(task: Task, prompt: str) -> Tuple[str, Optional[str]]:
    """(text, instruction) of a prompt `build_input` made for `task`.
    A prompt that does not end like one gives (prompt, None)."""
    options: List[Optional[str]] = list(wl.instruction for wl in task.word_levels) or [None]
    for instruction in options:
        suffix = build_input("", task, instruction)
        if suffix and prompt.endswith(suffix):
            return prompt[: len(prompt) - len(suffix)], instruction
    return prompt, None


class PromptConstrainer:
    """Prompts of one task -> token automata for one vocabulary (cached per prompt).

    `tokenize(text)` (no special tokens, as training tokenizes outputs) gives
    the text label's own tokens: the tokens of `<label>` + separator + IW,
    all but the last one (which may merge with what follows), so a label
    is generated the way training wrote it even where a token crosses its
    closing `>`."""

    def __init__(self, task: Union[Task, str], vocab: TokenVocab,
                 tokenize: Optional[Any] = None, cache_size: int = 1024) -> None:
        self.task = get_task(task)
        self.vocab = vocab
        self.tokenize = tokenize
        self.cache_size = cache_size
        self._cache: "OrderedDict[str, TokenAutomaton]" = OrderedDict()
        self._labels: Dict[Optional[str], List[List[int]]] = {}

    def label_sequences(self, instruction: Optional[str] = None) -> List[List[int]]:
        found = self._labels.get(instruction)
        if found is None:
            found = []
            if self.tokenize is not None and self.task.text_labels:
                wl = self.task.word_level(instruction)
                iw = wl.instruction if wl else self.task.instruction
                for label in self.task.text_labels:
                    ids = list(self.tokenize(f"<{label}>" + (self.task.separator + iw if iw else "")))
                    found.append(ids[:-1] if iw else ids)
                if not all(found):  # a label shares its only token with the IW: no label stage
                    found = []
            self._labels[instruction] = found
        return found

    def __call__(self, prompt: str) -> TokenAutomaton:
        found = self._cache.get(prompt)
        if found is not None:
            self._cache.move_to_end(prompt)
            return found
        text, instruction = split_prompt(self.task, prompt)
        automaton = TokenAutomaton(FormatAutomaton(self.task, text, instruction), self.vocab,
                                   self.label_sequences(instruction))
        self._cache[prompt] = automaton
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return automaton


# How many of the best tokens greedy picking checks before it walks the
# vocabulary for the whole allowed set.
TOP_K = 16


class HFConstraintProcessor:
    """A transformers LogitsProcessor: row i may only continue the format for
    its own prompt. Made fresh for each `generate` call (it remembers the
    prompt length from its first call).

    With `greedy=True` only the best allowed token of each row keeps its
    score (found among the TOP_K best, else over the whole allowed set): the
    same greedy choice as masking every disallowed token, at a fraction of
    the cost. Use `greedy=False` for sampling or beam search."""

    def __init__(self, automata: Sequence[TokenAutomaton], greedy: bool = True) -> None:
        self.automata = list(automata)
        self.states: List[Optional[TokenState]] = [a.start() for a in self.automata]
        self.greedy = greedy
        self._prompt_len: Optional[int] = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self._prompt_len is None:
            self._prompt_len = int(input_ids.shape[1])
        else:
            for i, token in enumerate(input_ids[:, -1].tolist()):
                state = self.states[i]
                if state is not None:
                    automaton = self.automata[i]
                    # after EOS (or an off-format token) the row is left alone
                    self.states[i] = None if automaton.is_eos(token) else automaton.advance(state, token)
        mask = torch.full_like(scores, float("-inf"))
        top = scores.topk(min(TOP_K, scores.shape[-1]), dim=-1).indices.tolist() if self.greedy else None
        rows: List[int] = []
        cols: List[int] = []
        for i, state in enumerate(self.states):
            if state is None:
                mask[i] = 0.0
                continue
            automaton = self.automata[i]
            if top is not None:
                best = automaton.pick(state, top[i])
                if best is not None:
                    rows.append(i)
                    cols.append(best)
                    continue
            ids = automaton.tensors.get(state)
            if ids is None or ids.device != scores.device:
                allowed = [t for t in automaton.allowed(state)[0] if t < scores.shape[-1]]
                ids = automaton.tensors[state] = torch.tensor(allowed, dtype=torch.long, device=scores.device)
            mask[i, ids] = 0.0
        if rows:
            mask[rows, cols] = 0.0
        return scores + mask
