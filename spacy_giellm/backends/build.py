"""A trained model as a backend: the `@giellm_backends` block for a model
directory, adapter or .gguf file (`backend_config`), and the backend built
from such a block (`make_backend`). Used by `evaluate-model`, `export-gguf
--verify`, `package` and `annotate`; nothing heavy is imported here (the
backend modules import torch / llama_cpp only when a model is loaded).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

PathLike = Union[str, Path]


def backend_config(
    model: PathLike,
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    n_ctx: int = 2048,
    constrained: bool = False,
    settings: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """The `@giellm_backends` block for a trained model: a .gguf file ->
    giellm.LlamaCpp.v1; a LoRA adapter dir -> giellm.HF.v1 on its base model
    with the adapter; any other model dir or hub id -> giellm.HF.v1.

    `settings`: more of the backend's settings (`backends.settings`: any
    field of HFSettings or LlamaCppSettings, e.g. {"jump_forward": False});
    a string value is read by the field's type (a command line's
    `--setting name=value`). The block is validated as the backend's
    settings now: an unknown or bad setting is a ValueError naming it."""
    cfg = _model_backend_config(model, max_new_tokens=max_new_tokens, batch_size=batch_size, n_ctx=n_ctx,
                                constrained=constrained)
    from .settings import setting_value, settings_class_for

    settings_class = settings_class_for(cfg["@giellm_backends"])
    for name, value in (settings or {}).items():
        cfg[name] = setting_value(settings_class, name, value) if isinstance(value, str) else value
    settings_class(**{k: v for k, v in cfg.items() if k != "@giellm_backends"})  # validates, naming the field
    return cfg


def _model_backend_config(model: PathLike, *, max_new_tokens: int, batch_size: int, n_ctx: int,
                          constrained: bool) -> Dict[str, Any]:
    path = Path(model)
    if path.suffix == ".gguf":
        return {
            "@giellm_backends": "giellm.LlamaCpp.v1",
            "model_path": str(path.resolve()),
            "max_new_tokens": max_new_tokens,
            "n_ctx": n_ctx,
            "constrained": constrained,
        }
    cfg: Dict[str, Any] = {
        "@giellm_backends": "giellm.HF.v1",
        "model": str(path.resolve()) if path.exists() else str(model),
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "constrained": constrained,
    }
    adapter_cfg = path / "adapter_config.json"
    if adapter_cfg.is_file():
        base = json.loads(adapter_cfg.read_text(encoding="utf8")).get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{adapter_cfg} names no base model (base_model_name_or_path)")
        cfg["model"], cfg["adapter"] = base, str(path.resolve())
    return cfg


def register_backends() -> None:
    """Import the built-in backend modules so that their registrations run
    even where the `giellm_backends` entry points are not found."""
    import importlib

    for module in ("hf", "llamacpp"):
        importlib.import_module(f"spacy_giellm.backends.{module}")


def make_backend(config: Dict[str, Any]) -> Any:
    """Build a backend from its `@giellm_backends` block."""
    from ..registry import giellm_backends

    register_backends()

    args = {k: v for k, v in config.items() if k != "@giellm_backends"}
    return giellm_backends.get(config["@giellm_backends"])(**args)


__all__ = ["backend_config", "make_backend", "register_backends"]
