"""Training-time layers as one autograd function each, for training on a CPU.

On a 2-core CPU a LoRA step's matrix products run near the machine's bf16
rate; much of the rest is elementwise passes over whole activations, each
its own kernel, with its own saved tensors and backward. Two kinds of layer
are written out here by hand, forward and backward, in fewer passes.

**LoRA linear layers.** PEFT computes `base(x) + lora_B(lora_A(x)) *
scaling`: the scaling and the sum are two more passes over the layer's
whole output, and their backward two more again, in each of a model's ~130
adapted layers. Here

    out = x W^T (+ bias);  out += (x A^T) (s B)^T       (one in-place addmm)

and the gradient of `x` is `g W + (g sB) A`, accumulated in place; the
adapters' gradients are the two small products; the frozen base weight
gets none. The low-rank term is added in the product's own accumulator
instead of being rounded to the output dtype first (and `s B` is rounded to
that dtype once; at the recipes' scaling of 2 that is exact), so in bf16 the
result is PEFT's up to rounding and no farther from float32.

Only the plain case is fused: one active adapter, not merged, no dropout
(the CPU recipes use none), no DoRA or other variant, an `nn.Linear` base
whose weight and input are in the dtype the product runs in (autocast's,
else the adapters' own). Any other call runs PEFT's own forward; saving, merging
and unloading are PEFT's.

**Gemma's RMS norms** (`(1 + w) * x / rms(x)` in float32, six a layer in
Gemma 3): about ten elementwise kernels forward and more backward, saving
several float32 copies. Here the forward is the same arithmetic (the same
output bit for bit) saving only the input and the per-row scale, and the
backward is the closed form `(g' - x̂ mean(g' x̂)) / rms(x)` with
`g' = g (1 + w)`: 2-3x faster for the shapes of Gemma 3 270M.

`tests/test_training.py` compares losses and gradients with the layers as
transformers and PEFT write them, on tiny models.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear


class _LoraLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Any, weight: Any, bias: Optional[Any], lora_a: Any, lora_b: Any, scaling: float) -> Any:
        dtype = weight.dtype
        a = lora_a.to(dtype)
        scaled_b = (lora_b * scaling).to(dtype)
        rows = x.reshape(-1, x.shape[-1])
        low = rows @ a.t()
        out = torch.nn.functional.linear(rows, weight, bias)
        out.addmm_(low, scaled_b.t())
        ctx.save_for_backward(rows, weight, a, scaled_b, low)
        ctx.scaling = scaling
        ctx.input_shape = x.shape
        ctx.adapter_dtypes = (lora_a.dtype, lora_b.dtype)
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad_out: Any) -> Any:
        rows, weight, a, scaled_b, low = ctx.saved_tensors
        grad = grad_out.reshape(-1, grad_out.shape[-1]).to(weight.dtype)
        grad_low = grad @ scaled_b
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ weight
            grad_x.addmm_(grad_low, a)
            grad_x = grad_x.view(ctx.input_shape)
        if ctx.needs_input_grad[3]:
            grad_a = (grad_low.t() @ rows).to(ctx.adapter_dtypes[0])
        if ctx.needs_input_grad[4]:
            grad_b = (grad.t() @ low).to(ctx.adapter_dtypes[1]).mul_(ctx.scaling)
        # the frozen base weight and bias get none (checked when fusing)
        return grad_x, None, None, grad_a, grad_b, None


class FusedLoraLinear(PeftLoraLinear):
    """PEFT's LoRA `Linear`, with the plain training case fused
    (`_LoraLinearFunction`). Set as the class of existing layers by
    `fuse_layers`; it adds no state of its own."""

    def _fused_weights(self, x: Any, args: Any, kwargs: Any) -> Optional[Any]:
        """(A, B, scaling) of the one active adapter if this call can be fused."""
        if args or kwargs or self.disable_adapters or self.merged:
            return None
        active = [name for name in self.active_adapters if name in self.lora_A]
        if len(active) != 1 or active[0] in self.lora_variant:
            return None
        name = active[0]
        base = self.base_layer
        if type(base) is not torch.nn.Linear or self.fan_in_fan_out:
            return None
        if not isinstance(self.lora_dropout[name], torch.nn.Identity):
            return None
        if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
            return None
        lora_a, lora_b = self.lora_A[name].weight, self.lora_B[name].weight
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
        else:  # without autocast PEFT runs the adapters in their own dtype
            dtype = lora_a.dtype
        if x.device.type != "cpu" or x.dtype != dtype or base.weight.dtype != dtype:
            return None
        if base.bias is not None and base.bias.dtype != dtype:
            return None
        return lora_a, lora_b, self.scaling[name]

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        weights = self._fused_weights(x, args, kwargs)
        if weights is None:
            return super().forward(x, *args, **kwargs)
        lora_a, lora_b, scaling = weights
        # the products run in `x`'s dtype with autocast off, as decided above
        with torch.autocast("cpu", enabled=False):
            return _LoraLinearFunction.apply(x, self.base_layer.weight, self.base_layer.bias, lora_a, lora_b, scaling)


class _GemmaRMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Any, weight: Any, eps: float) -> Any:
        as_float = x.float()
        inv_rms = torch.rsqrt(as_float.pow(2).mean(-1, keepdim=True).add_(eps))
        scale = weight.float() + 1.0
        ctx.save_for_backward(x, inv_rms, scale)
        return (as_float * inv_rms).mul_(scale).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Any) -> Any:
        x, inv_rms, scale = ctx.saved_tensors
        # copies, then in place (.float() of a float32 tensor is that tensor)
        normed = x.to(torch.float32, copy=True).mul_(inv_rms)
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad_out.float() * normed).reshape(-1, normed.shape[-1]).sum(0).to(scale.dtype)
        grad_normed = grad_out.to(torch.float32, copy=True).mul_(scale)
        dot = (grad_normed * normed).mean(-1, keepdim=True)
        grad_x = grad_normed.sub_(normed.mul_(dot)).mul_(inv_rms).to(x.dtype)
        return grad_x, grad_weight, None


# Gemma's norm classes (`(1 + w)` scaling, float32 inside), by name: the
# modeling modules are imported only if the model uses them.
GEMMA_NORMS = ("GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm")
_FUSED_NORM_CLASSES: Dict[type, type] = {}


def _fused_norm_forward(self: Any, x: Any) -> Any:
    with torch.autocast("cpu", enabled=False):
        return _GemmaRMSNormFunction.apply(x, self.weight, self.eps)


def _fused_norm_class(cls: type) -> type:
    if cls not in _FUSED_NORM_CLASSES:
        fused = type(f"Fused{cls.__name__}", (cls,), {"forward": _fused_norm_forward, "__module__": __name__})
        _FUSED_NORM_CLASSES[cls] = fused
    return _FUSED_NORM_CLASSES[cls]


def fuse_layers(model: Any, lora: bool = True, norms: bool = True) -> Dict[str, int]:
    """Make `model`'s PEFT LoRA `Linear` layers `FusedLoraLinear`s (`lora`)
    and its Gemma RMS norms fused ones (`norms`), in place (their classes
    swapped; subclasses and other kinds are left alone). Returns how many
    of each changed."""
    counts = {"lora": 0, "norm": 0}
    for module in model.modules():
        cls = type(module)
        if lora and cls is PeftLoraLinear:
            module.__class__ = FusedLoraLinear
            counts["lora"] += 1
        elif norms and cls.__name__ in GEMMA_NORMS and cls.__module__.startswith("transformers."):
            module.__class__ = _fused_norm_class(cls)
            counts["norm"] += 1
    return counts


def unfuse_layers(model: Any) -> Dict[str, int]:
    """Undo `fuse_layers`. Returns how many of each changed."""
    counts = {"lora": 0, "norm": 0}
    originals = {fused: cls for cls, fused in _FUSED_NORM_CLASSES.items()}
    for module in model.modules():
        cls = type(module)
        if cls is FusedLoraLinear:
            module.__class__ = PeftLoraLinear
            counts["lora"] += 1
        elif cls in originals:
            module.__class__ = originals[cls]
            counts["norm"] += 1
    return counts


__all__ = ["FusedLoraLinear", "GEMMA_NORMS", "fuse_layers", "unfuse_layers"]
