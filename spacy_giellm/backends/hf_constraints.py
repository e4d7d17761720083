"""Constrained decoding with transformers: the vocabulary of a transformers
tokenizer as a `TokenVocab`, and the `LogitsProcessor` that keeps each row
of a batch to the format for its own prompt (`constraints`).

torch is imported only when the processor runs.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List, Optional, Sequence

from ..constraints import TOP_K, TokenAutomaton, TokenState, TokenVocab

__all__ = ["token_vocab_from_hf", "HFConstraintProcessor"]

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


def token_vocab_from_hf(tokenizer: Any, eos_ids: Optional[Iterable[int]] = None) -> TokenVocab:
    """The `TokenVocab` of a transformers tokenizer: SentencePiece-style (`▁`, `<0xNN>`) or byte-level BPE."""
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
    return TokenVocab(out, eos_ids)


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
