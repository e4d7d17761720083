"""Several sequences at once in one llama.cpp context (low-level API).

llama-cpp-python's `Llama` puts every token in sequence 0, so it decodes one
prompt at a time. `SequenceBatcher` owns a second context over the same model
with `n_seq_max` sequences and a unified KV cache, and feeds `llama_batch`es
holding tokens of several sequences (each with its own seq_id and positions):
each step decodes one token of every unfinished sequence together, and the
prompts of the sequences that take the place of finished ones go into the same
`llama_decode` call (continuous batching), as many calls as `n_batch` needs.
On a CPU that matters: a call of a few rows runs the matmuls at a fraction of
the rate a call of some dozens does, so a prompt's prefill costs the step it
joins little more than its own FLOPs.

Sequences are admitted while their worst case (prompt + max new tokens) fits
the context, so the KV cache is never overrun and a finished sequence's cells
are freed (`llama_memory_seq_rm`) for the next prompt.

Greedy picks are the argmax of each sequence's own logits (or of its allowed
tokens, under a constraint), exactly as in the one-at-a-time path; on the same
weights the outputs are the same up to float rounding in batched matmuls.

`generate` can also give log P(candidate | prompt) for each prompt and
candidate (the text labels) from its own prompt pass: the first token from
the logits that also pick the first generated token, a longer candidate's
later tokens in a copy of the prompt's KV cells (`llama_memory_seq_cp`).
`score` is that without generating.

Jump-forward (`generate(jump=...)`): where the constraint leaves one
continuation (`TokenAutomaton.forced`: the Instruction Word, the rest of a
text label once its first tokens decide it), those tokens are appended
without being generated: fed after the prompt in its prefill, or in the
same batch as the token before them, with no logits asked for but at the
last one. Greedy picking under the constraint would choose them anyway, so
the output is the same; they cost a pass of the body, not a decoding step
with a row of the output head each.

Drafts (`generate(draft=...)`, e.g. prompt lookup) are verified in the same
batch as the other sequences' steps: a drafted token is kept only where it is
the token greedy picking chooses at its position, so the output is the greedy
one up to float rounding (logits of a multi-token batch can differ in the last
bits from single-token ones, which flips near-ties, as batching sequences
together can), in fewer decoding steps where drafts are right.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["SequenceBatcher"]

# pick(prompt index, logits numpy view) -> token id
Picker = Callable[[int, Any], int]
# draft(prompt index, tokens generated so far) -> proposed next tokens
Drafter = Callable[[int, List[int]], Sequence[int]]
# jump(prompt index, at most) -> the tokens that must come next (the picker's
# constraint state moves past them)
Jumper = Callable[[int, int], List[int]]
# stop(prompt index, tokens generated so far) -> None to go on, or how many
# of the tokens to keep, ending the sequence
Stopper = Callable[[int, List[int]], Optional[int]]


def _log_softmax_rows(logits, tokens: Sequence[int]) -> List[float]:
    """log-softmax of `logits` at each of `tokens`."""
    import numpy as np

    m = float(np.max(logits))
    log_sum = np.log(np.sum(np.exp(logits - m)))
    return [float(logits[t] - m - log_sum) for t in tokens]


class SequenceBatcher:
    def __init__(self, model: Any, n_ctx: int, n_seq: int, n_threads: int, n_batch: int = 512,
                 kv_unified: bool = True, flash_attn: bool = False) -> None:
        """`model`: a `llama_cpp.Llama`; the new context shares its weights.

        `kv_unified`: one KV cache of `n_ctx` cells that all sequences share
        (each row's attention spans every sequence's cells, masked), or a
        stream of `n_ctx` cells per sequence (each row attends to its own
        cells only; llama.cpp then splits a call into parts holding equally
        many tokens of each sequence)."""
        import llama_cpp

        if n_seq < 1:
            raise ValueError(f"n_seq must be >= 1, got {n_seq}")
        if n_seq > n_ctx:
            raise ValueError(f"{n_seq} sequences do not fit n_ctx={n_ctx}: each needs a cell of the KV cache")
        self.n_ctx = int(n_ctx)
        self.n_seq = int(n_seq)
        # a decoding step holds a token of every sequence, and llama.cpp sizes
        # a call's outputs by n_batch: fewer than n_seq aborts the process
        # (GGML_ASSERT n_outputs_max), so n_batch is at least n_seq
        self.n_batch = int(max(min(n_batch, n_ctx), n_seq))
        self._llama_cpp = llama_cpp
        # the model's own context settings (rope, attention kernels...), so
        # that both contexts compute the same numbers
        params = type(model.context_params).from_buffer_copy(model.context_params)
        self.kv_unified = bool(kv_unified)
        # per-sequence streams: llama.cpp gives each n_ctx / n_seq_max cells
        params.n_ctx = self.n_ctx if self.kv_unified else self.n_ctx * self.n_seq
        params.n_batch = self.n_batch
        params.n_ubatch = self.n_batch
        params.n_seq_max = self.n_seq
        params.kv_unified = self.kv_unified
        self.flash_attn = bool(flash_attn)
        params.flash_attn_type = 1 if self.flash_attn else 0  # LLAMA_FLASH_ATTN_TYPE_ENABLED / _DISABLED
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

    # ------------------------------------------------------------ generation

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        is_end: Callable[[int], bool],
        pick: Picker,
        parallel: Optional[int] = None,
        candidates: Optional[Sequence[Sequence[int]]] = None,
        draft: Optional[Drafter] = None,
        stats: Optional[Dict[str, int]] = None,
        jump: Optional[Jumper] = None,
        stop: Optional[Stopper] = None,
    ) -> Tuple[List[List[int]], Optional[List[List[float]]]]:
        """Greedy new tokens per prompt (ending token excluded), and with
        `candidates` each candidate's summed log-probability after the prompt.

        `pick(k, logits)` chooses prompt k's next token from its logits;
        `is_end(token)` says whether that token ends the sequence; at most
        `parallel` (default: all) sequences decode at once.

        Candidates are scored from generation's own prompt pass: the first
        token's log-probability from the logits that also give the first
        generated token, the later tokens of a longer candidate in a copy of
        the prompt's cells (`llama_memory_seq_cp`, one scratch sequence per
        candidate, freed at once). So `score` needs no second prompt pass.

        `draft(k, generated)` may propose tokens to follow prompt k's output
        so far; they are decoded with it in the same batch and kept as long
        as each is the token `pick` chooses at its position, so the output
        is the greedy output (up to float rounding), in fewer decoding steps
        where drafts are right (rejected tokens' cells are removed). `stats` (if given) counts
        sequence steps, drafted and kept tokens, and tokens jumped over.

        `jump(k, at_most)` gives the tokens that must follow prompt k's
        output so far (see the module docstring); they are appended without
        logits. Without candidates, the ones that open the output are fed
        with the prompt.

        `stop(k, generated)`, asked after each picked token, may end prompt
        k's sequence early, keeping the first tokens it says (the loop
        stop); its row goes to the next prompt."""
        if parallel is not None and parallel < 1:
            raise ValueError(f"parallel (n_parallel) must be >= 1, got {parallel}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        for k, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(f"prompt {k} has no tokens (an empty prompt and no BOS token to start from)")
        cand = [list(c) for c in candidates] if candidates is not None else None
        multi = [c for c, ids in enumerate(cand or ()) if len(ids) > 1]
        if cand is not None and any(not c for c in cand):
            raise ValueError("a candidate has no tokens")
        extra = sum(len(cand[c]) - 1 for c in multi) if cand else 0
        scratch_per = len(multi)
        n_gen = min(self.n_seq, parallel or self.n_seq)
        if scratch_per:
            # the sequences above n_gen are scratch copies for the candidates
            n_gen = min(n_gen, self.n_seq // (1 + scratch_per))
            if n_gen < 1:
                raise ValueError(f"scoring these candidates needs n_seq >= {1 + scratch_per}, have {self.n_seq}")
        scratch = list(range(n_gen, self.n_seq))
        results: List[List[int]] = [[] for _ in prompts]
        scores: Optional[List[List[float]]] = [[] for _ in prompts] if cand is not None else None
        queue = list(range(len(prompts)))
        queue.reverse()
        free_seqs = list(range(n_gen))
        active: Dict[int, Tuple[int, int]] = {}  # seq -> (prompt index, next pos)
        reserved: Dict[int, int] = {}  # seq -> cells reserved
        # cells left in a unified cache; with a stream per sequence each has
        # n_ctx of its own, so only `need <= n_ctx` (below) limits admission
        budget_left = self.n_ctx if self.kv_unified else self.n_ctx * self.n_seq
        next_token: Dict[int, int] = {}

        def first(seq: int, logits) -> None:
            k = active[seq][0]
            if scores is not None:
                scores[k] = _log_softmax_rows(logits, [c[0] for c in cand])  # type: ignore[union-attr]
            next_token[seq] = pick(k, logits)

        # each round, one batch: each prefilled sequence's next token (with
        # its forced tokens and its draft), and the new prompts, so that a
        # prompt's prefill shares the weights' pass with the others' decoding
        # step (a step of a few rows alone runs the matmuls at a fraction of
        # the rate a longer batch does)
        step = _Step(self, pick, is_end, first, results, stats, active, next_token)
        self._clear()
        while queue or active:
            for seq, (k, pos) in list(active.items()):
                token = next_token.pop(seq)
                done = is_end(token)
                if not done:
                    results[k].append(token)
                    done = len(results[k]) >= max_new_tokens or pos + 1 >= self.n_ctx or pos + 1 >= len(prompts[k]) + reserved[seq]
                    keep = stop(k, results[k]) if stop is not None else None
                    if keep is not None:
                        del results[k][keep:]
                        done = True
                forced: List[int] = []
                if not done and jump is not None:
                    # as greedy would append them one by one: up to the
                    # output's length and the last cell the sequence may fill
                    limit = min(self.n_ctx, len(prompts[k]) + reserved[seq])
                    forced = jump(k, min(max_new_tokens - len(results[k]), limit - 1 - pos, self.n_batch - 1))
                    results[k].extend(forced)
                    if stats is not None:
                        stats["jumped"] += len(forced)
                    done = len(results[k]) >= max_new_tokens or pos + len(forced) + 1 >= limit
                if done:
                    del active[seq]
                    self._llama_cpp.llama_memory_seq_rm(self._mem, seq, -1, -1)
                    budget_left += reserved.pop(seq)
                    free_seqs.append(seq)
                    continue
                last = pos + len(forced)  # the position whose logits pick the next token
                proposal: List[int] = []
                if draft is not None:
                    # drafts end one short of every limit: the token after them must still fit
                    room = min(max_new_tokens - len(results[k]), len(prompts[k]) + reserved[seq] - last, self.n_ctx - last) - 2
                    proposal = list(draft(k, results[k]))[: max(0, room)]
                    proposal = proposal[: self.n_batch - 1 - len(forced)]
                items = [(token, pos, (seq,), not forced)]
                items.extend((t, pos + 1 + j, (seq,), j == len(forced) - 1) for j, t in enumerate(forced))
                items.extend((t, last + 1 + j, (seq,), True) for j, t in enumerate(proposal))
                active[seq] = (k, last)
                step.add_sequence(seq, items, proposal)
            admitted: Dict[int, Sequence[int]] = {}
            while queue and free_seqs:
                k = queue[-1]
                # the candidates' scratch cells are freed before the output
                # grows: the larger of the two, not both
                need = len(prompts[k]) + max(max_new_tokens, extra)
                if need > self.n_ctx:
                    need = self.n_ctx  # alone in the context it gets what is left
                if need > budget_left and (active or admitted):
                    break
                queue.pop()
                seq = free_seqs.pop()
                if len(prompts[k]) + max(extra, 1) > self.n_ctx:
                    scratch_note = f" and its {extra} scratch tokens for the label candidates" if extra else ""
                    raise ValueError(f"prompt of {len(prompts[k])} tokens{scratch_note} does not fit n_ctx={self.n_ctx}")
                reserved[seq] = need
                budget_left -= need
                # the tokens that must open the output, fed with the prompt
                # (with candidates, the prompt's own last logits score them)
                limit = min(self.n_ctx, len(prompts[k]) + need)
                opening = jump(k, min(max_new_tokens, limit - len(prompts[k]))) if jump and cand is None else []
                results[k].extend(opening)
                if stats is not None:
                    stats["jumped"] += len(opening)
                end = len(prompts[k]) + len(opening)
                if opening and (len(opening) >= max_new_tokens or end >= limit):
                    # as greedy: the opening already fills the output
                    reserved.pop(seq)
                    budget_left += need
                    free_seqs.append(seq)
                    continue
                admitted[seq] = list(prompts[k]) + opening
                active[seq] = (k, end)
            for seq, tokens in admitted.items():
                step.add_prompt(seq, tokens)
            step.flush()
            if admitted and scratch_per and scores is not None:
                self._score_rest({seq: active[seq][0] for seq in admitted}, prompts, cand, multi, scratch, scores)  # type: ignore[arg-type]
        return results, scores

    def _score_rest(self, seqs: Dict[int, int], prompts, cand, multi, scratch, scores) -> None:
        """Add the later tokens of each multi-token candidate to `scores` for
        the prompts just decoded in `seqs` ({seq: prompt index}), each
        candidate in a scratch copy of its prompt's cells."""
        per = len(multi)
        order = list(seqs)
        group = max(1, len(scratch) // per)
        for start in range(0, len(order), group):
            items: List[Tuple[int, int, Sequence[int], bool]] = []
            where: List[Tuple[int, int, int]] = []
            used: List[int] = []
            for g, seq in enumerate(order[start : start + group]):
                k = seqs[seq]
                for j, c in enumerate(multi):
                    copy = scratch[g * per + j]
                    used.append(copy)
                    self._llama_cpp.llama_memory_seq_cp(self._mem, seq, copy, -1, -1)
                    ids = cand[c]
                    for i, token in enumerate(ids[:-1]):
                        items.append((token, len(prompts[k]) + i, (copy,), True))
                        where.append((k, c, ids[i + 1]))
            for b in range(0, len(items), self.n_batch):
                self._decode(items[b : b + self.n_batch])
                for i, (k, c, nxt) in enumerate(where[b : b + self.n_batch]):
                    scores[k][c] += _log_softmax_rows(self._logits(i), [nxt])[0]
            for copy in used:
                self._llama_cpp.llama_memory_seq_rm(self._mem, copy, -1, -1)

    def time_pass(self, n_tokens: int, all_logits: bool, repeat: int = 3) -> float:
        """Seconds per token of one `llama_decode` of `n_tokens` tokens of
        one sequence (at most `n_batch`; best of `repeat`), with logits for
        every token or for the last only: the kernels' rate at a shape that suits them, which
        bounds what any batching of the same tokens can reach."""
        import time

        n = max(1, min(int(n_tokens), self.n_batch, self.n_ctx))
        token = min(100, self.n_vocab - 1)  # any id: the values do not change the cost
        best = float("inf")
        for _ in range(max(1, repeat)):
            self._clear()
            start = time.perf_counter()
            self._decode([(token, pos, (0,), all_logits or pos == n - 1) for pos in range(n)])
            best = min(best, time.perf_counter() - start)
        self._clear()
        return best / n

    # --------------------------------------------------------------- scoring

    def score(self, prompts: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]]) -> List[List[float]]:
        """log P(candidate tokens | prompt), summed, for every prompt and
        candidate: `generate`'s prompt pass and candidate scoring, without
        generating (the first picked token ends each sequence)."""
        if not candidates:
            return [[] for _ in prompts]
        _, scores = self.generate(prompts, 1, lambda token: True, lambda k, logits: 0, candidates=candidates)
        return scores  # type: ignore[return-value]


class _Step:
    """One round of `SequenceBatcher.generate`: the prefilled sequences'
    next tokens (with their forced and drafted tokens) and new prompts,
    decoded in as few `llama_decode` calls as `n_batch` allows."""

    def __init__(self, engine: "SequenceBatcher", pick: Picker, is_end, first, results, stats, active,
                 next_token) -> None:
        self.engine, self.pick, self.is_end, self.first = engine, pick, is_end, first
        # generate's state, updated in place: outputs, counters, {seq: (prompt, next pos)}, {seq: picked token}
        self.results, self.stats, self.active, self.next_token = results, stats, active, next_token
        self.items: List[Tuple[int, int, Sequence[int], bool]] = []
        self.plans: List[Tuple[int, int, List[int]]] = []  # (seq, item whose logits pick, draft)
        self.firsts: List[Tuple[int, int]] = []  # (item, seq): a prompt's last token

    def add_sequence(self, seq: int, items, proposal: List[int]) -> None:
        """A sequence's items (never split across calls: its draft is verified from one batch's logits)."""
        if len(self.items) + len(items) > self.engine.n_batch:
            self.flush()
        at = len(self.items) + len(items) - len(proposal) - 1
        self.items.extend(items)
        self.plans.append((seq, at, proposal))

    def add_prompt(self, seq: int, tokens: Sequence[int]) -> None:
        """A prompt's tokens (split across calls where they do not fit: the KV cache keeps the earlier ones)."""
        for pos, token in enumerate(tokens):
            if len(self.items) == self.engine.n_batch:
                self.flush()
            last = pos == len(tokens) - 1
            if last:
                self.firsts.append((len(self.items), seq))
            self.items.append((token, pos, (seq,), last))

    def flush(self) -> None:
        """Decode what was added; pick each sequence's next token and keep
        its draft up to the first token greedy picking would not choose."""
        if not self.items:
            return
        engine, active = self.engine, self.active
        engine._decode(self.items)
        for seq, at, proposal in self.plans:
            k, pos = active[seq]
            nxt = self.pick(k, engine._logits(at))
            kept = 0
            while kept < len(proposal) and nxt == proposal[kept] and not self.is_end(nxt):
                self.results[k].append(nxt)
                kept += 1
                nxt = self.pick(k, engine._logits(at + kept))
            if kept < len(proposal):  # the rejected tokens' cells
                engine._llama_cpp.llama_memory_seq_rm(engine._mem, seq, pos + 1 + kept, -1)
            self.next_token[seq] = nxt
            active[seq] = (k, pos + 1 + kept)
            if self.stats is not None:
                self.stats["steps"] += 1
                self.stats["drafted"] += len(proposal)
                self.stats["kept"] += kept
        for at, seq in self.firsts:
            self.first(seq, engine._logits(at))
        self.items.clear()
        self.plans.clear()
        self.firsts.clear()
