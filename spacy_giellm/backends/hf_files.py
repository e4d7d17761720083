"""Where a transformers model comes from and what it runs in: local path or
Hub id, device, dtype, and a check of a local model's files that names the
corrupt one (transformers' own errors do not). torch is imported only to
resolve a device or dtype."""
import json
import os
import re
from pathlib import Path

__all__ = ["looks_like_local_path", "resolve_device", "resolve_dtype", "check_model_files"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def looks_like_local_path(name: str) -> bool:
    """True if `name` can only be a filesystem path, not a Hub repo id."""
    if os.path.exists(os.path.expanduser(name)):
        return True
    if name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or "\\" in name:
        return True
    return not _HUB_ID.match(name)


def resolve_device(device: str = "auto") -> str:
    """"auto" -> cuda > mps > cpu; anything else is returned as given."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str):
    """"auto" -> bfloat16 on CUDA (float16 if the GPU lacks bf16), float32 elsewhere."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    key = _DTYPES.get(str(dtype).lower())
    if key is None:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'")
    return getattr(torch, key)


_JSON_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "adapter_config.json")


def check_model_files(path: Path) -> None:
    """Raise ValueError naming a corrupt weights or JSON file in a local model
    (or adapter) directory: transformers reports these without the file's
    name (a bare SafetensorError, or a JSON error)."""
    advice = "re-export the model, or download it again"
    for f in sorted(path.glob("*.safetensors")):
        try:
            from safetensors import safe_open

            with safe_open(str(f), framework="pt"):  # reads and checks the header only
                pass
        except Exception as e:  # SafetensorError, or a truncated file's OSError
            raise ValueError(f"giellm.HF.v1: {str(f)!r} is not a readable safetensors file ({e}): {advice}") from e
    for name in _JSON_FILES:
        f = path / name
        if f.is_file():
            try:
                json.loads(f.read_text(encoding="utf-8"))
            except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                raise ValueError(f"giellm.HF.v1: {str(f)!r} is not valid JSON ({e}): {advice}") from e
