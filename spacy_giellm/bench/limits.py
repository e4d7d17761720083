"""What the machine and the model allow: measured matmul GFLOPS and memory
bandwidth, the model's FLOPs and bytes per doc, and from them two ceilings
on docs/s that no decoder on this machine can pass (roofline-style).

* compute: every token passes the transformer body (2 FLOPs per weight);
  the output head (n_vocab x n_embd) runs once per generated token (and for
  the last prompt token, which gives the first one), not for the rest of
  the prompt. FLOPs per doc / matmul FLOPS = seconds per doc at best.
* bandwidth: each decoding step reads all weights once for the whole batch
  of `parallel` sequences; generated tokens per doc / parallel steps per doc
  x weight bytes / bandwidth = seconds per doc at best. Prefill reads them
  once per batch of prompts and is left out.

The matmul rate is torch's float32 GEMM at the bench's thread count (bf16
on request: what `train --profile` compares training with): llama.cpp
multiplies quantized weights with its own kernels (int8 dot products for
Q8_0), which can beat it, so the compute ceiling is a guide, not a proof.

* kernels (llama.cpp): the seconds per token of one long pass of one
  sequence through llama.cpp itself (`LlamaCppBackend.token_pass_seconds`),
  without the head for prompt tokens and with it for generated ones, times
  the tokens of a doc. Batching can at best run every token at that rate
  (a step of a few rows runs slower), so no scheduling of the same tokens
  on these kernels passes it.
"""
import time
from typing import Any, Dict, Optional


def machine_rates(threads: int, size: int = 1024, mbytes: int = 256, dtype: str = "fp32") -> Dict[str, float]:
    """{"matmul_gflops", "memory_gb_per_s"}: GEMM of size^3 in `dtype`
    ("fp32", or "bf16": AMX / AVX512-BF16 where the CPU has them, else
    emulated, slower) and a copy of `mbytes` MB (read + write counted),
    each the best of 5 after one untimed GEMM."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
        b = torch.randn(size, size, dtype=a.dtype)
        torch.mm(a, b)
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t)
        gflops = 2 * size**3 / best / 1e9
        src = torch.empty(mbytes * 2**20 // 4, dtype=torch.float32).fill_(1.0)
        dst = torch.empty_like(src)
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            dst.copy_(src)
            best = min(best, time.perf_counter() - t)
        bandwidth = 2 * src.numel() * 4 / best / 1e9
    finally:
        torch.set_num_threads(saved)
    return {"matmul_gflops": gflops, "memory_gb_per_s": bandwidth}


def gguf_costs(path: str) -> Dict[str, float]:
    """{"body_params", "head_params", "weight_bytes"} of a GGUF file: the
    head is the output matrix (the token embeddings where they are tied);
    the input embedding is a lookup and costs no FLOPs."""
    from gguf import GGUFReader

    reader = GGUFReader(path, "r")
    body = head = weight_bytes = 0
    embd_elems = 0
    has_output = False
    for t in reader.tensors:
        n = int(t.n_elements)
        weight_bytes += int(t.n_bytes)
        if t.name == "token_embd.weight":
            embd_elems = n
        elif t.name == "output.weight":
            head, has_output = n, True
        else:
            body += n
    if not has_output:
        head = embd_elems  # tied: the head reads the embedding matrix too
    return {"body_params": float(body), "head_params": float(head), "weight_bytes": float(weight_bytes)}


def hf_costs(model: Any) -> Dict[str, float]:
    """The same figures for a loaded transformers model."""
    head = model.get_output_embeddings().weight
    embed = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    tied = head.data_ptr() == embed.data_ptr()
    body = total - embed.numel() - (0 if tied else head.numel())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"body_params": float(body), "head_params": float(head.numel()), "weight_bytes": float(weight_bytes)}


def doc_limits(costs: Dict[str, float], rates: Dict[str, float], prompt_tokens: float,
               new_tokens: float, parallel: int) -> Dict[str, Optional[float]]:
    """Compute and bandwidth ceilings on docs/s for docs of `prompt_tokens`
    prompt and `new_tokens` generated tokens (the ending token not counted)."""
    flops = 2 * (costs["body_params"] * (prompt_tokens + new_tokens) + costs["head_params"] * (new_tokens + 1))
    steps = (new_tokens + 1) / max(1, parallel)
    return {
        "gflop_per_doc": flops / 1e9,
        "compute_limit_docs_per_s": rates["matmul_gflops"] * 1e9 / flops if flops else None,
        "bandwidth_limit_docs_per_s": rates["memory_gb_per_s"] * 1e9 / (steps * costs["weight_bytes"]) if steps else None,
    }


def kernel_limit(token_seconds: Dict[str, float], prompt_tokens: float, new_tokens: float) -> Dict[str, float]:
    """The docs/s ceiling from llama.cpp's own per-token pass times: each
    token passes once; the head runs for the last prompt token and every
    generated one (`new_tokens` does not count the ending token, which is
    picked, never fed back)."""
    seconds = (prompt_tokens - 1) * token_seconds["prompt"] + (new_tokens + 1) * token_seconds["generated"]
    return {"kernel_ms_per_prompt_token": token_seconds["prompt"] * 1e3,
            "kernel_ms_per_generated_token": token_seconds["generated"] * 1e3,
            "kernel_limit_docs_per_s": 1.0 / seconds}
