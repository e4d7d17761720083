"""After training: merge LoRA weights, export to GGUF and check the GGUF
against the HF model. A spaCy pipeline on the GGUF: `packaging`.

The GGUF conversion itself is llama.cpp's (`training.gguf_export`).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from ..backends.build import backend_config, make_backend
from ..evaluation import load_gold
from ..util import CPUINFO, atomic_dir, cpuinfo
from .train import atomic_save

PathLike = Union[str, Path]
FLOAT_TYPES = ("f32", "f16", "bf16", "q8_0")
# `export-gguf --type auto`: the type that decodes fastest on this CPU
AUTO_TYPE = "auto"


def cpu_flags(path: str = CPUINFO) -> Optional[set]:
    """The CPU's feature flags (Linux), None where /proc/cpuinfo has none."""
    for block in cpuinfo(path) or ():
        for key in ("flags", "Features"):  # x86, ARM
            if key in block:
                return set(block[key].split())
    return None


def llama_cpp_features() -> Optional[str]:
    """llama.cpp's own list of the instruction sets it was built with, or
    None without llama-cpp-python."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp.llama_print_system_info().decode("utf-8", "replace")


def fastest_weight_type(flags: Optional[set] = None, built: Optional[str] = None) -> Tuple[str, str]:
    """(GGUF type, why) that decodes fastest here: bf16 where the CPU has
    native bf16 dot products (AVX512-BF16 or AMX) and llama.cpp was built
    to use them, else q8_0. Measured: bf16 1.25x Q8_0's docs/s with the same
    entity F on an AVX512-BF16 CPU, 0.80x on a build without those
    instructions (benchmarks/batching-and-bf16.md)."""
    flags = cpu_flags() if flags is None else flags
    if not flags or not ({"avx512_bf16", "amx_bf16"} & flags):
        return "q8_0", "the CPU has no native bf16 (AVX512-BF16 or AMX): Q8_0 decodes faster"
    built = llama_cpp_features() if built is None else built
    if built is not None and "AVX512_BF16 = 1" not in built and "AMX" not in built:
        return "q8_0", "this llama.cpp build does not use the CPU's bf16 instructions: Q8_0 decodes faster"
    return "bf16", "the CPU multiplies bf16 natively (AVX512-BF16 or AMX): bf16 decodes faster than Q8_0"


def is_adapter(model_dir: PathLike) -> bool:
    return (Path(model_dir) / "adapter_config.json").is_file()


def merge_base(adapter_dir: PathLike, base_model: Optional[str] = None) -> Tuple[str, str]:
    """The base model to merge the LoRA adapter `adapter_dir` into, and
    where that came from: `base_model` if given, else the base of the
    adapter's `config.cfg` (resolved as `train` resolves it: a .gguf file or
    a model package to its dequantized copy in the cache, made again if the
    cache was cleared), else the path the adapter recorded."""
    from .base_model import BaseModelNotFound, resolve_base_model
    from .config_file import CONFIG_FILE, read_model_config

    src = Path(adapter_dir)
    recorded = json.loads((src / "adapter_config.json").read_text(encoding="utf8"))["base_model_name_or_path"]
    if base_model:
        return resolve_base_model(base_model), "--base-model"
    cfg = read_model_config(src)
    if cfg is not None and cfg.base_model:
        try:
            return resolve_base_model(cfg.base_model), str(src / CONFIG_FILE)
        except BaseModelNotFound:
            if not Path(recorded).is_dir():  # e.g. a relative path given in another directory
                raise
    return recorded, str(src / "adapter_config.json")


def merge(model_dir: PathLike, out_dir: PathLike, base_model: Optional[str] = None) -> Dict[str, Any]:
    """LoRA adapter -> base weights with the adapter merged in, saved as
    safetensors (with the tokenizer, the adapter's `giellm_tasks.json` and
    its training `config.cfg`). The base: `merge_base`. A full model is
    copied as it is."""
    from .config_file import CONFIG_FILE
    from ..model_tasks import read_model_tasks

    src, out = Path(model_dir), Path(out_dir)
    if not (src / "config.json").is_file() and not is_adapter(src):
        raise FileNotFoundError(f"{src} is neither a model nor a LoRA adapter directory")
    t0 = time.time()
    if not is_adapter(src):
        with atomic_dir(out) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
        return {
            "merged": False, "model": str(out), "source": str(src), "tasks": sorted(read_model_tasks(out)),
            "seconds": round(time.time() - t0, 1),
        }
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tasks = read_model_tasks(src)  # before the slow part: a malformed file fails here
    base, base_from = merge_base(src, base_model)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(src)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    config = src / CONFIG_FILE
    files = {CONFIG_FILE: config.read_text(encoding="utf8")} if config.is_file() else None
    atomic_save(model, tokenizer, out, tokenizer_source=str(src), tasks=tasks, files=files)
    return {
        "merged": True, "model": str(out), "base": base, "base_from": base_from, "adapter": str(src),
        "tasks": sorted(tasks), "seconds": round(time.time() - t0, 1),
    }


@contextmanager
def merged_model(model_dir: PathLike, near: PathLike, base_model: Optional[str] = None) -> Iterator[Path]:
    """`model_dir` itself, or, for a LoRA adapter, the adapter merged into
    its base (`merge_base`) in a temporary directory beside `near`."""
    if not is_adapter(model_dir):
        yield Path(model_dir)
        return
    Path(near).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".giellm-merged-", dir=Path(near).parent) as tmp:
        merge(model_dir, Path(tmp) / "merged", base_model)
        yield Path(tmp) / "merged"


def export_gguf(
    model_dir: PathLike, out_path: PathLike, outtype: str = "f16", *, keep_float: bool = True
) -> Dict[str, Any]:
    """HF dir -> GGUF. `outtype` f32/f16/bf16/q8_0 converts directly; a
    llama.cpp quantization type (Q4_K_M, Q5_K_M, ...) converts to f16 first
    and then quantizes (the f16 file is kept next to it if `keep_float`).
    The model's tasks (`giellm_tasks.json`) go into the GGUF's metadata as
    `giellm.tasks`; the quantizer copies them."""
    from ..backends.gguf_check import validate_gguf
    from .gguf_export import convert_to_gguf, quantize_gguf
    from ..model_tasks import GGUF_TASKS_KEY, read_gguf_tasks, read_model_tasks, tasks_json_string

    if is_adapter(model_dir):
        raise ValueError(f"{model_dir} is a LoRA adapter: merge it first (the `merge` command)")
    t0 = time.time()
    out = Path(out_path)
    tasks = read_model_tasks(model_dir)
    metadata = {GGUF_TASKS_KEY: tasks_json_string(tasks)} if tasks else None
    if outtype.lower() in FLOAT_TYPES:
        convert_to_gguf(model_dir, out, outtype.lower(), metadata=metadata)
        source = None
    else:
        source = out.with_name(out.stem + ".f16.gguf")
        convert_to_gguf(model_dir, source, "f16", metadata=metadata)
        quantize_gguf(source, out, outtype.upper())
        if not keep_float:
            source.unlink()
    info = validate_gguf(out)
    if read_gguf_tasks(out) != tasks:
        raise RuntimeError(f"{out}: the {GGUF_TASKS_KEY} metadata does not hold {model_dir}'s tasks {sorted(tasks)}")
    return {
        "gguf": str(out),
        "outtype": outtype,
        "from": str(model_dir),
        "float_gguf": str(source) if source and keep_float else None,
        "bytes": out.stat().st_size,
        "n_vocab": info["n_vocab"],
        "n_layers": info["n_layers"],
        "n_embd": info["n_embd"],
        "tasks": sorted(tasks),
        "seconds": round(time.time() - t0, 1),
    }


# A logit difference this small between the HF model's greedy token and the
# GGUF's, at the first position they differ, is float rounding (llama.cpp
# and torch sum in other orders), not a conversion error.
NEAR_TIE_LOGITS = 1e-3


def _hf_margin(hf: Any, prompt: str, prefix: Sequence[int], hf_token: int, gguf_token: int) -> float:
    """How much the HF model prefers its own token to the GGUF's after
    `prompt` + `prefix` (float32 logits)."""
    import torch

    model = hf.model
    ids = torch.tensor([hf.encode_prompt(prompt) + list(prefix)], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1].float()
    return float(logits[hf_token] - logits[gguf_token])


def verify_gguf(
    gguf: PathLike,
    hf_model: PathLike,
    data: PathLike,
    n: int = 8,
    max_new_tokens: int = 64,
) -> Dict[str, Any]:
    """Greedy outputs of the GGUF (llama.cpp) and the HF model on the first
    `n` held-out prompts of each task; mismatches are listed. A float GGUF
    should match exactly, but for greedy near-ties: each mismatch says how
    much the HF model preferred its token (`hf_margin`), and `near_ties`
    counts those under NEAR_TIE_LOGITS. A quantized GGUF may differ more."""
    from ..backends.gguf_check import validate_gguf
    from ..format import build_input
    from ..model_tasks import model_task_resolver

    t0 = time.time()
    prompts: List[str] = []
    groups = load_gold(data, model_task_resolver(hf_model, data=data))  # the model's tasks, else the data's
    for (task_name, instruction), (task, golds) in sorted(groups.items(), key=lambda kv: str(kv[0])):
        prompts += [build_input(g.text or "", task, instruction) for g in golds[:n]]
    info = validate_gguf(gguf)
    n_ctx = int(info.get("context_length") or 2048)
    hf = make_backend(backend_config(hf_model, max_new_tokens=max_new_tokens))
    # the file is checked, not the kernels: llama.cpp's most precise attention
    cfg = backend_config(gguf, max_new_tokens=max_new_tokens, n_ctx=min(n_ctx, 4096), settings={"flash_attn": False})
    lc = make_backend(cfg)
    hf_ids, lc_ids = hf.generate_ids(prompts), lc.generate_ids(prompts)
    mismatches = []
    for prompt, a, b in zip(prompts, hf_ids, lc_ids):
        if a != b:
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            # one output ended where the other goes on: no token pair to weigh
            margin = _hf_margin(hf, prompt, a[:first], a[first], b[first]) if first < min(len(a), len(b)) else None
            mismatches.append({
                "prompt": prompt,
                "hf": hf.decode(a),
                "gguf": lc.decode(b),
                "first_different_token": first,
                "hf_margin": margin,
            })
    return {
        "gguf": str(gguf),
        "hf_model": str(hf_model),
        "file_type": info.get("file_type"),
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "identical": len(prompts) - len(mismatches),
        "near_ties": sum(m["hf_margin"] is not None and abs(m["hf_margin"]) < NEAR_TIE_LOGITS for m in mismatches),
        "mismatches": mismatches,
        "seconds": round(time.time() - t0, 1),
    }


__all__ = ["merge", "export_gguf", "verify_gguf", "is_adapter", "merged_model"]
