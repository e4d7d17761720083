"""Attention over packed rows, one sequence at a time.

`data.PackCollator` lays a batch's sequences end to end in one row and
restarts `position_ids` at every sequence. transformers then builds a mask
for the whole row and its sdpa attention computes every query against every
key of the row, masked: for 8 sequences of about 145 tokens that is 8 times
the products the sequences need (1,160^2 against 8 x 145^2), in every layer,
forward and backward. Here each sequence (a run of positions counting up
from 0) gets causal attention of its own, with no mask built at all
(sliding-window layers get a band mask only where a sequence is longer than
the window). The result equals the masked attention up to float rounding;
`tests/test_training.py` checks losses and gradients on tiny models.

Registered as a transformers attention implementation (`IMPLEMENTATION`)
without a mask function, so transformers passes no mask: it is used only
for packed batches, whose rows carry `position_ids` and no padding mask.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

IMPLEMENTATION = "giellm_packed"


def sequence_bounds(positions: List[int]) -> List[Tuple[int, int]]:
    """(start, end) of each sequence in a row of positions: a sequence
    starts wherever the position does not follow the one before it."""
    bounds: List[Tuple[int, int]] = []
    start = 0
    for t in range(1, len(positions)):
        if positions[t] != positions[t - 1] + 1:
            bounds.append((start, t))
            start = t
    if positions:
        bounds.append((start, len(positions)))
    return bounds


def packed_attention_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Optional[Any],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    sliding_window: Optional[int] = None,
    **kwargs: Any,
) -> Tuple[Any, None]:
    """transformers' attention interface: query (batch, heads, T, dim), key
    and value (batch, kv heads, T, dim) -> (batch, T, heads, dim)."""
    import torch

    position_ids = kwargs.get("position_ids")
    if attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]:
        raise ValueError(
            f"{IMPLEMENTATION} attention is for packed training rows (position_ids, no mask, no cache); "
            "got " + ("a mask" if attention_mask is not None else
                      "no position_ids" if position_ids is None else "a cache")
        )
    if kwargs.get("softcap") is not None:
        raise ValueError(f"{IMPLEMENTATION} attention does not support attention logit soft-capping")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gqa = query.shape[1] != key.shape[1]
    rows = position_ids.expand(query.shape[0], -1).tolist()
    outputs = []
    # sdpa's plain matmul-and-softmax kernel: at a sequence's length (about
    # 100 tokens) its backward ran 3x faster than the CPU flash kernel's
    with sdpa_kernel(SDPBackend.MATH):
        for b, positions in enumerate(rows):
            outputs.append(_row_attention(query[b : b + 1], key[b : b + 1], value[b : b + 1], positions,
                                          dropout, scaling, sliding_window, gqa))
    return torch.cat(outputs, dim=0).transpose(1, 2).contiguous(), None


def _row_attention(query: Any, key: Any, value: Any, positions: List[int], dropout: float,
                   scaling: Optional[float], sliding_window: Optional[int], gqa: bool) -> Any:
    """One packed row's attention output (1, heads, T, dim), a sequence at a time."""
    import torch
    import torch.nn.functional as F

    parts = []
    for start, end in sequence_bounds(positions):
        q, k, v = (x[:, :, start:end] for x in (query, key, value))
        n = end - start
        mask = None
        if sliding_window is not None and n > sliding_window:
            i = torch.arange(n, device=query.device)
            # causal, and a key less than the window behind the query
            mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < sliding_window)
        parts.append(F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling, is_causal=mask is None, enable_gqa=gqa))
    return torch.cat(parts, dim=2)


def use_packed_attention(model: Any) -> None:
    """Register the implementation and switch `model` (a transformers model,
    or a PEFT model around one) to it."""
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, packed_attention_forward)
    model.set_attn_implementation(IMPLEMENTATION)


__all__ = ["IMPLEMENTATION", "packed_attention_forward", "sequence_bounds", "use_packed_attention"]
