"""Several sequences at once in one llama.cpp context (low-level API).

llama-cpp-python's `Llama` puts every token in sequence 0, so it decodes one
prompt at a time. `SequenceBatcher` owns a second context over the same model
with `n_seq_max` sequences and a unified KV cache, and feeds `llama_batch`es
holding tokens of several sequences (each with its own seq_id and positions):
prompts are packed into as few `llama_decode` calls as `n_batch` allows, then
each step decodes one token of every unfinished sequence together.

Sequences are admitted while their worst case (prompt + max new tokens) fits
the context, so the KV cache is never overrun and a finished sequence's cells
are freed (`llama_memory_seq_rm`) for the next prompt.

Greedy picks are the argmax of each sequence's own logits (or of its allowed
tokens, under a constraint), exactly as in the one-at-a-time path; on the same
weights the outputs are the same up to float rounding in batched matmuls.

`score` gives log P(candidate | prompt) for each prompt and candidate: the
prompt is decoded once, its KV cells copied to one sequence per candidate
(`llama_memory_seq_cp`), and all candidates' tokens decoded in one batch.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["SequenceBatcher"]

# pick(seq_index, logits numpy view, n_generated_so_far) -> token id
Picker = Callable[[int, Any], int]


def _log_softmax_at(logits, token: int) -> float:
    import numpy as np

    m = float(np.max(logits))
    return float(logits[token] - m - np.log(np.sum(np.exp(logits - m))))


class SequenceBatcher:
    def __init__(self, model: Any, n_ctx: int, n_seq: int, n_threads: int, n_batch: int = 512) -> None:
        """`model`: a `llama_cpp.Llama`; the new context shares its weights."""
        import llama_cpp

        if n_seq < 1:
            raise ValueError(f"n_seq must be >= 1, got {n_seq}")
        self.n_ctx = int(n_ctx)
        self.n_seq = int(n_seq)
        self.n_batch = int(min(n_batch, n_ctx))
        self._llama_cpp = llama_cpp
        # the model's own context settings (rope, attention kernels...), so
        # that both contexts compute the same numbers
        params = type(model.context_params).from_buffer_copy(model.context_params)
        params.n_ctx = self.n_ctx
        params.n_batch = self.n_batch
        params.n_ubatch = self.n_batch
        params.n_seq_max = self.n_seq
        params.kv_unified = True
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.no_perf = True
        self._model = model  # keep the weights alive as long as this context
        ctx = llama_cpp.llama_init_from_model(model._model.model, params)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {n_ctx} tokens for {n_seq} sequences")
        self.ctx = ctx
        self.n_vocab = int(model.n_vocab())
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, max(1, self.n_seq))
        self._mem = llama_cpp.llama_get_memory(ctx)

    def close(self) -> None:
        llama_cpp = self._llama_cpp
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # ----------------------------------------------------------- primitives

    def _clear(self) -> None:
        self._llama_cpp.llama_memory_clear(self._mem, True)

    def _decode(self, items: Sequence[Tuple[int, int, Sequence[int], bool]]) -> None:
        """Decode one batch of (token, pos, seq_ids, want_logits)."""
        b = self._batch
        for i, (token, pos, seqs, logits) in enumerate(items):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = len(seqs)
            for j, s in enumerate(seqs):
                b.seq_id[i][j] = s
            b.logits[i] = logits
        b.n_tokens = len(items)
        rc = self._llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc} (batch of {len(items)} tokens)")

    def _logits(self, i: int):
        import numpy as np

        ptr = self._llama_cpp.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def _feed_prompts(self, prompts: Dict[int, Sequence[int]], on_logits: Callable[[int, Any], None]) -> None:
        """Decode whole prompts {seq: tokens}; on_logits(seq, logits) after each last token."""
        pending: List[Tuple[int, int, Sequence[int], bool]] = []
        owners: List[int] = []
        for seq, tokens in prompts.items():
            for pos, token in enumerate(tokens):
                last = pos == len(tokens) - 1
                pending.append((token, pos, (seq,), last))
                owners.append(seq if last else -1)
                if len(pending) == self.n_batch:
                    self._flush(pending, owners, on_logits)
        if pending:
            self._flush(pending, owners, on_logits)

    def _flush(self, pending, owners, on_logits) -> None:
        self._decode(pending)
        for i, seq in enumerate(owners):
            if seq >= 0:
                on_logits(seq, self._logits(i))
        pending.clear()
        owners.clear()

    # ------------------------------------------------------------ generation

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        is_end: Callable[[int], bool],
        pick: Picker,
        parallel: Optional[int] = None,
    ) -> List[List[int]]:
        """Greedy new tokens per prompt (ending token excluded).

        `pick(k, logits)` chooses prompt k's next token from its logits;
        `is_end(token)` says whether that token ends the sequence; at most
        `parallel` (default: all) sequences decode at once."""
        results: List[List[int]] = [[] for _ in prompts]
        queue = list(range(len(prompts)))
        queue.reverse()
        free_seqs = list(range(min(self.n_seq, parallel or self.n_seq)))
        active: Dict[int, Tuple[int, int]] = {}  # seq -> (prompt index, next pos)
        reserved: Dict[int, int] = {}  # seq -> cells reserved
        budget_left = self.n_ctx
        next_token: Dict[int, int] = {}
        self._clear()
        while queue or active:
            admitted: Dict[int, Sequence[int]] = {}
            while queue and free_seqs:
                k = queue[-1]
                need = len(prompts[k]) + max_new_tokens
                if need > self.n_ctx:
                    need = self.n_ctx  # alone in the context it gets what is left
                if need > budget_left and (active or admitted):
                    break
                queue.pop()
                seq = free_seqs.pop()
                if len(prompts[k]) >= self.n_ctx:
                    raise ValueError(f"prompt of {len(prompts[k])} tokens does not fit n_ctx={self.n_ctx}")
                reserved[seq] = need
                budget_left -= need
                admitted[seq] = prompts[k]
                active[seq] = (k, len(prompts[k]))

            def first(seq: int, logits) -> None:
                next_token[seq] = pick(active[seq][0], logits)

            if admitted:
                self._feed_prompts(admitted, first)
            step: List[Tuple[int, int, Sequence[int], bool]] = []
            order: List[int] = []
            for seq, (k, pos) in list(active.items()):
                token = next_token.pop(seq)
                done = is_end(token)
                if not done:
                    results[k].append(token)
                    done = len(results[k]) >= max_new_tokens or pos + 1 >= self.n_ctx or pos + 1 >= len(prompts[k]) + reserved[seq]
                if done:
                    del active[seq]
                    self._llama_cpp.llama_memory_seq_rm(self._mem, seq, -1, -1)
                    budget_left += reserved.pop(seq)
                    free_seqs.append(seq)
                    continue
                step.append((token, pos, (seq,), True))
                order.append(seq)
                active[seq] = (k, pos + 1)
            for start in range(0, len(step), self.n_batch):
                part = step[start : start + self.n_batch]
                self._decode(part)
                for i, seq in enumerate(order[start : start + self.n_batch]):
                    next_token[seq] = pick(active[seq][0], self._logits(i))
        return results

    # --------------------------------------------------------------- scoring

    def score(self, prompts: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]]) -> List[List[float]]:
        """log P(candidate tokens | prompt), summed, for every prompt and candidate.

        Several prompts are decoded together (one sequence each); a prompt's
        candidates of more than one token continue copies of its sequence."""
        n_cand = len(candidates)
        if n_cand == 0:
            return [[] for _ in prompts]
        if any(not c for c in candidates):
            raise ValueError("a candidate has no tokens")
        per = 1 + sum(len(c) > 1 for c in candidates)  # sequences per prompt
        if self.n_seq < per:
            raise ValueError(f"scoring these candidates needs n_seq >= {per}, have {self.n_seq}")
        extra = sum(len(c) - 1 for c in candidates)  # cells of the continuations
        out: List[List[float]] = []
        k = 0
        while k < len(prompts):
            group: List[Sequence[int]] = []
            cells = 0
            while k + len(group) < len(prompts) and (len(group) + 1) * per <= self.n_seq:
                need = len(prompts[k + len(group)]) + extra
                if need > self.n_ctx:
                    raise ValueError(
                        f"prompt of {len(prompts[k + len(group)])} tokens and its candidates do not fit n_ctx={self.n_ctx}"
                    )
                if group and cells + need > self.n_ctx:
                    break
                group.append(prompts[k + len(group)])
                cells += need
            out.extend(self._score_group(group, candidates, per))
            k += len(group)
        return out

    def _score_group(self, group: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]], per: int) -> List[List[float]]:
        self._clear()
        first: Dict[int, Any] = {}

        def keep(seq: int, logits) -> None:
            first[seq] = logits.copy()

        self._feed_prompts({g * per: tokens for g, tokens in enumerate(group)}, keep)
        scores = [[_log_softmax_at(first[g * per], cand[0]) for cand in candidates] for g in range(len(group))]
        items: List[Tuple[int, int, Sequence[int], bool]] = []
        where: List[Tuple[int, int, int]] = []
        for g, tokens in enumerate(group):
            seq = g * per
            for c, cand in enumerate(candidates):
                if len(cand) < 2:
                    continue
                seq += 1  # this candidate's copy of the prompt's cells
                self._llama_cpp.llama_memory_seq_cp(self._mem, g * per, seq, -1, -1)
                for j, token in enumerate(cand[:-1]):
                    items.append((token, len(tokens) + j, (seq,), True))
                    where.append((g, c, cand[j + 1]))
        for start in range(0, len(items), self.n_batch):
            self._decode(items[start : start + self.n_batch])
            for i, (g, c, nxt) in enumerate(where[start : start + self.n_batch]):
                scores[g][c] += _log_softmax_at(self._logits(i), nxt)
        return scores
