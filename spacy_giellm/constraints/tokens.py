"""The byte DFA walked at token level: a byte trie of the vocabulary, built
once per tokenizer, and the allowed tokens of each state (cached, so a state
costs one trie walk however many sequences reach it).

The output's opening (the text label, then the Instruction Word) is decoded
in token space: only its own tokenization (the one training used) is
allowed, not e.g. "<" followed by the label's characters. With single-token
labels, the generated label is then the argmax of `label_scores`. Where that
tokenization leaves one choice (the IW after the label; the rest of a label
once its first tokens decide it), the tokens are forced: `forced` gives them,
so a decoder can append them without computing logits (jump-forward).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .automaton import FormatAutomaton

# How many of the best tokens greedy picking checks before it walks the
# vocabulary for the whole allowed set.
TOP_K = 16


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


# A state: (DFA state, node in the label trie); node -1 = past the label.
TokenState = Tuple[int, int]


class TokenAutomaton:
    """A `FormatAutomaton` seen through one vocabulary.

    `opening_sequences` are the token ids of the output's possible openings
    (each text label with the Instruction Word, or the IW alone): at the
    start, only these sequences may be generated."""

    def __init__(self, automaton: FormatAutomaton, vocab: TokenVocab,
                 opening_sequences: Sequence[Sequence[int]] = ()) -> None:
        self.automaton = automaton
        self.vocab = vocab
        self._trie: List[Dict[int, int]] = [{}]
        for seq in opening_sequences:
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

    def forced(self, state: TokenState, at_most: int) -> Tuple[List[int], TokenState]:
        """The tokens that must follow `state` (at most `at_most`), and the
        state after them: the opening's tokens while only one sequence is
        left. Greedy decoding under the constraint picks exactly these, so
        they need no logits. Past the opening nothing is forced here: every
        state of the byte DFA has several tokenizations ahead."""
        tokens: List[int] = []
        while len(tokens) < at_most and state[1] >= 0:
            children = self._trie[state[1]]
            if len(children) != 1:
                break
            (token,) = children
            after = self.advance(state, token)
            if after is None:
                break
            tokens.append(token)
            state = after
        return tokens, state

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
