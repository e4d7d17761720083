"""Constrained greedy decoding with a transformers model, the LM head applied
only to the tokens the format allows.

`HFConstraintProcessor` under `model.generate` masks the logits of a full
head: with Gemma 3's 262,144-token vocabulary that head is 168M of the
model's 268M parameters, computed at every step for a handful of tokens
that may follow (label markers, delimiters, tokens of the input text).
Here the decoder body runs as usual and the head is applied to the rows of
the batch's allowed tokens only, which is where the time of a generated
token goes on a CPU. The pick is the one masking makes: the highest
(soft-capped) logit among the allowed tokens, the lowest id on a tie.

Jump-forward: the tokens the format forces after a pick (the rest of the
output's opening, `TokenAutomaton.forced`) are fed in the same forward as
the pick, and those forced from the start with the prompt; each row's fed
tokens are right-aligned in a block, the gaps masked out of attention.
A row that has ended leaves the batch and its KV cache (`generate` keeps
computing it to the longest row's end).

Also here: the two names transformers versions give the KV cache
(`output_cache`, `cache_argument`), which the backend's other passes use.
torch and transformers are imported only when they run.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["body_and_head", "constrained_greedy", "loop_stopping_criteria", "output_cache", "cache_argument"]

# Above this share of the vocabulary the batch's allowed tokens are taken
# from the full head (a free-text label allows almost every token).
FULL_HEAD_SHARE = 0.25


def body_and_head(model: Any) -> Optional[Tuple[Any, Any]]:
    """(decoder body, output embeddings) of a causal LM, also inside a PEFT
    wrapper (its LoRA layers run in the body in place); None for a model
    that does not expose them, or whose head is more than a plain linear
    layer (a LoRA on the head is not in its weight rows)."""
    import torch

    get_base = getattr(model, "get_base_model", None)
    lm = get_base() if callable(get_base) else model
    get_body = getattr(lm, "get_decoder", None)
    get_head = getattr(lm, "get_output_embeddings", None)
    if not callable(get_body) or not callable(get_head):
        return None
    body, head = get_body(), get_head()
    if body is None or type(head) is not torch.nn.Linear:
        return None
    return body, head


def constrained_greedy(model: Any, ids: Any, mask: Any, pos: Any, automata: Sequence[Any],
                       max_new_tokens: int, pad_id: int, cache: Any = None, jump: bool = True,
                       stats: Optional[Dict[str, int]] = None,
                       stop: Optional[Callable[[int, List[int]], Optional[int]]] = None) -> List[List[int]]:
    """Greedy new token ids per row (EOS not included) of a left-padded batch.

    `ids`, `mask`, `pos`: the prompts' input ids, attention mask and position
    ids; `automata`: one `TokenAutomaton` per row; `cache`: a KV cache that
    already holds every prompt token but the last (then only that one runs
    before decoding). Rows keep to their automaton; a row ends at EOS,
    after `max_new_tokens` tokens, or where `stop(row, its tokens)` gives
    how many of them to keep (`base.loop_stopper`). `stats["jumped"]`
    counts the forced tokens."""
    import numpy as np
    import torch

    parts = body_and_head(model)
    if parts is None:
        raise TypeError(f"{type(model).__name__} exposes no decoder body / output embeddings")
    body, head = parts
    weight, bias = head.weight, getattr(head, "bias", None)
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    cache_kw = cache_argument(body.forward)
    device = ids.device
    n_rows, vocab_size = ids.shape[0], weight.shape[0]

    states: List[Any] = [a.start() for a in automata]
    new: List[List[int]] = [[] for _ in range(n_rows)]
    # What each row feeds next: its pick and the tokens forced after it
    # (at the start: the forced tokens, after the prompt's).
    fed: List[List[int]] = [[] for _ in range(n_rows)]
    jumped = 0
    if jump:
        for i, automaton in enumerate(automata):
            fed[i], states[i] = automaton.forced(states[i], max_new_tokens)
            new[i].extend(fed[i])
            jumped += len(fed[i])
    start = ids.shape[1] - 1 if cache is not None else 0
    feed_ids, feed_pos = ids[:, start:], pos[:, start:]
    full_mask, last_pos = mask, pos[:, -1].tolist()
    order = list(range(n_rows))  # the rows still in the batch, by batch position
    with torch.inference_mode():
        while True:
            width = max(len(fed[i]) for i in order)
            if width:  # right-aligned, the gaps masked out of attention
                extra_ids = torch.full((len(order), width), pad_id, dtype=ids.dtype)
                extra_mask = torch.zeros((len(order), width), dtype=mask.dtype)
                extra_pos = torch.zeros((len(order), width), dtype=pos.dtype)
                for b, i in enumerate(order):
                    k = len(fed[i])
                    extra_pos[b] = last_pos[b]
                    if k:
                        extra_ids[b, width - k :] = torch.tensor(fed[i])
                        extra_mask[b, width - k :] = 1
                        extra_pos[b, width - k :] = last_pos[b] + 1 + torch.arange(k)
                        last_pos[b] += k
                feed_ids = torch.cat([feed_ids, extra_ids.to(device)], dim=1)
                feed_pos = torch.cat([feed_pos, extra_pos.to(device)], dim=1)
                full_mask = torch.cat([full_mask, extra_mask.to(device)], dim=1)
            out = body(input_ids=feed_ids, attention_mask=full_mask, position_ids=feed_pos, use_cache=True,
                       **({cache_kw: cache} if cache is not None else {}))
            cache = output_cache(out)
            # each row's last real token: the block's end, or (nothing fed
            # in the block: only at the start) the prompt's
            ends = [feed_ids.shape[1] - 1 - (0 if fed[i] else width) for i in order]
            hidden = out.last_hidden_state[torch.arange(len(order), device=device), torch.tensor(ends, device=device)]
            going = [b for b, i in enumerate(order) if len(new[i]) < max_new_tokens]
            if not going:
                break
            allowed = [automata[order[b]].allowed_array(states[order[b]]) for b in going]
            if not all(len(ok) for ok in allowed):  # pragma: no cover - the automaton allows EOS when nothing fits
                raise RuntimeError("constrained decoding reached a state that allows no token")
            union = np.unique(np.concatenate(allowed))
            if len(union) > FULL_HEAD_SHARE * vocab_size:
                union = None
            logits = _head_logits(hidden[going], weight, bias, union, softcap).float().cpu()
            keep = torch.full(logits.shape, float("-inf"))
            for r, ok in enumerate(allowed):
                keep[r, torch.from_numpy(np.searchsorted(union, ok) if union is not None else ok)] = 0.0
            best = (logits + keep).argmax(-1).tolist()
            still = []
            for r, b in enumerate(going):
                i = order[b]
                token = int(union[best[r]]) if union is not None else int(best[r])
                automaton = automata[i]
                if automaton.is_eos(token):
                    continue
                states[i] = automaton.advance(states[i], token)
                new[i].append(token)
                fed[i] = [token]
                if jump:
                    forced, states[i] = automaton.forced(states[i], max_new_tokens - len(new[i]))
                    new[i].extend(forced)
                    fed[i].extend(forced)
                    jumped += len(forced)
                kept = stop(i, new[i]) if stop is not None else None
                if kept is not None:
                    del new[i][kept:]
                elif len(new[i]) < max_new_tokens:
                    still.append(b)
                # else: its last tokens need no forward (nothing follows them)
            if not still:
                break
            if len(still) < len(order):  # finished rows leave the batch (and the KV cache)
                index = torch.tensor(still, device=device)
                cache.batch_select_indices(index)
                full_mask = full_mask.index_select(0, index)
                last_pos = [last_pos[b] for b in still]
                order = [order[b] for b in still]
            feed_ids, feed_pos = ids[: len(order), :0], pos[: len(order), :0]
    if stats is not None:
        stats["jumped"] = stats.get("jumped", 0) + jumped
    return new


def loop_stopping_criteria(stop: Callable[[int, List[int]], Optional[int]], prompt_width: int,
                           eos_ids: Sequence[int]) -> Any:
    """A transformers StoppingCriteria ending each row of a left-padded
    batch (prompts `prompt_width` wide) where `stop(row, its new tokens)`
    says so; `.kept[row]`: how many of its new tokens to keep. A row that
    has reached EOS is not asked again (generate has ended it)."""
    import torch
    from transformers import StoppingCriteria

    eos = set(eos_ids)

    class LoopStopping(StoppingCriteria):
        def __init__(self) -> None:
            self.kept: Dict[int, int] = {}

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = []
            for k, row in enumerate(input_ids[:, prompt_width:].tolist()):
                if k not in self.kept and not eos.intersection(row):
                    kept = stop(k, row)
                    if kept is not None:
                        self.kept[k] = kept
                done.append(k in self.kept)
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return LoopStopping()


def _head_logits(hidden: Any, weight: Any, bias: Any, rows: Any, softcap: Optional[float]) -> Any:
    """Logits of `hidden` for the head's `rows` (all of them for None),
    soft-capped as the model's forward does."""
    import torch

    if rows is not None:
        index = torch.from_numpy(rows).to(weight.device)
        weight = weight.index_select(0, index)
        bias = bias.index_select(0, index) if bias is not None else None
    logits = torch.nn.functional.linear(hidden, weight, bias)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def output_cache(out: Any) -> Any:
    """The KV cache of a model output (transformers 5 names it `cache`, 4.x `past_key_values`)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def cache_argument(fn: Any) -> str:
    """The keyword `fn` (a model's forward or generate) takes the KV cache
    by: `cache` from transformers 5 on (where `past_key_values` is deprecated)."""
    import inspect

    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        return "cache"
    params = inspect.signature(fn).parameters
    return "cache" if "cache" in params else "past_key_values"
