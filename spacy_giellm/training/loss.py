"""The causal-LM loss on the output tokens only, computed only where it is needed.

A GIELLM training sequence is a prompt (labels -100) followed by the output
(labels = token ids). transformers' `*ForCausalLM.forward` applies the LM head
to every position and then throws most of it away in the loss. With a large
vocabulary that head dominates a step on a CPU: Gemma 3 has 262,144 tokens, so
at batch 8 x 100 positions the full logits are 800 MB of float32 before their
gradient. Here the decoder body runs as usual, the hidden states are gathered
at the positions whose *next* token is labelled, and only those rows go
through the head and the cross entropy.

The forward still goes through the model as given (asking it for the
logits of no position), and the body's output is taken with a forward
hook: a data-parallel wrapper (DistributedDataParallel, under torchrun,
`accelerate launch` or `train --processes`) only synchronises gradients of
a forward that runs through it, and calling the body directly would bypass
it. The result equals the model's own loss (same shift, same -100 masking,
same final-logit soft-capping, same reduction); `tests/test_training.py`
checks that to 1e-4 on tiny Llama and Gemma 3 models.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from .data import IGNORE_INDEX


def _causal_lm(model: Any) -> Any:
    """The `*ForCausalLM` module inside a data-parallel wrapper (`.module`)
    and a PEFT wrapper (LoRA layers are injected in place, so its parts
    still run the adapters)."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        model = model.module
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def output_token_loss(model: Any, inputs: Dict[str, Any], num_items_in_batch: Optional[Any] = None) -> Any:
    """Cross entropy over the labelled positions of `inputs` (input_ids,
    attention_mask, labels; or input_ids, position_ids, labels for packed
    rows), applying the LM head to those positions only.

    With `num_items_in_batch` (the labelled tokens of the whole accumulated
    batch, as transformers' Trainer passes it) the summed loss is divided by
    it, as `ForCausalLMLoss` does; otherwise it is the mean over this batch.
    """
    import torch
    import torch.nn.functional as F
    from torch import tanh

    lm = _causal_lm(model)
    body = lm.get_decoder()
    head = lm.get_output_embeddings()
    if body is None or head is None:
        raise TypeError(f"{type(lm).__name__} exposes no decoder body / output embeddings")
    captured: List[Any] = []
    hook = body.register_forward_hook(lambda _module, _args, output: captured.append(output.last_hidden_state))
    try:
        # logits for no position: the head is applied below, to the rows
        # that need it (one position per sequence would still cost a slow
        # small-batch bf16 product over the whole vocabulary on a CPU)
        no_position = torch.zeros(0, dtype=torch.long, device=inputs["input_ids"].device)
        # packed rows (`data.PackCollator`) carry position_ids and no mask
        model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
              position_ids=inputs.get("position_ids"), use_cache=False, logits_to_keep=no_position)
    finally:
        hook.remove()
    if len(captured) != 1:
        raise RuntimeError(f"{type(lm).__name__}'s decoder body ran {len(captured)} times in one forward, not once")
    hidden = captured[0]
    # Position t predicts token t + 1.
    targets = inputs["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    # (under CPU autocast the body may hand back float32 next to a bf16 head)
    logits = head(hidden[:, :-1][keep].to(head.weight.dtype)).float()
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    if softcap:
        logits = tanh(logits / softcap) * softcap
    if num_items_in_batch is None:
        return F.cross_entropy(logits, targets[keep], reduction="mean")
    total = F.cross_entropy(logits, targets[keep], reduction="sum")
    if hasattr(num_items_in_batch, "to"):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def output_token_trainer(trainer_cls: Any) -> Any:
    """`trainer_cls` with `compute_loss` replaced by `output_token_loss`."""

    class OutputTokenLossTrainer(trainer_cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = output_token_loss(model, inputs, num_items_in_batch)
            if num_items_in_batch is not None and self.args.average_tokens_across_devices:
                # num_items_in_batch counts the labelled tokens of every
                # process, and data parallelism averages the gradients over
                # the processes: scale back up, as Trainer.compute_loss does.
                loss = loss * (self.accelerator.num_processes if self.args.n_gpu <= 1 else self.args.n_gpu)
            # Evaluation asks for outputs; there are no logits worth returning.
            return (loss, {"loss": loss}) if return_outputs else loss

    return OutputTokenLossTrainer


__all__ = ["output_token_loss", "output_token_trainer"]
