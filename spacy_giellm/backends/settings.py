"""One frozen, validated settings object per backend.

Each backend's registered factory (its config block) builds its settings
dataclass from its keyword arguments; the backend keeps it as `settings`
and reads every setting from there. A field's metadata says what the
setting does to the outputs (`effect`):

* `OUTPUTS`: it can change a generated text or a label score (even if only
  by float rounding): its value is part of the response cache's key
  (`generation_settings`);
* `MODEL`: it names the model: the key holds the model's identity instead
  (`model_identity`: the content hash of the files, a hub id and commit,
  or the identity the cache config declares for a server), so that a moved
  or copied model keeps its cached answers;
* `SPEED`: only speed, memory or error handling, with the same outputs.

The settings are frozen: a backend's settings change only through
`reconfigure(dataclasses.replace(backend.settings, ...))` (validated as at
construction; a change that the loaded model depends on frees it, and the
next call loads it again), or `with backend.configured(n_parallel=1): ...`,
which puts the old settings back afterwards. Setting a backend's setting
attribute raises AttributeError (`SettingAttribute`).

Only the standard library here: importing the settings loads no model
library.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Iterator, Optional, Tuple, Type, TypeVar

__all__ = [
    "OUTPUTS", "MODEL", "SPEED", "setting", "BackendSettings", "HFSettings", "LlamaCppSettings", "ServerSettings",
    "Configurable", "SettingAttribute", "output_fields", "SERVER_KINDS", "base_url", "point_at_model_file",
    "settings_class_for", "setting_value",
]

OUTPUTS = "outputs"
MODEL = "model"
SPEED = "speed"
_EFFECTS = (OUTPUTS, MODEL, SPEED)

S = TypeVar("S", bound="BackendSettings")


def setting(default: Any, effect: str, *, load: bool = False, repr: bool = True) -> Any:
    """A settings field: `effect` is OUTPUTS, MODEL or SPEED (see the module
    docstring); `load`: the loaded model (or decoding context) depends on
    it, so that changing it frees the model."""
    if effect not in _EFFECTS:
        raise ValueError(f"effect must be one of {_EFFECTS}, got {effect!r}")
    return field(default=default, repr=repr, metadata={"effect": effect, "load": load})


def output_fields(settings_class: Type["BackendSettings"]) -> Tuple[str, ...]:
    """The names of the fields whose value is part of the cache key."""
    return tuple(f.name for f in fields(settings_class) if f.metadata["effect"] == OUTPUTS)


@dataclass(frozen=True)
class BackendSettings:
    """What every backend's settings share: validation on construction
    (`dataclasses.replace` validates too) and the values that change outputs."""

    backend_name = "giellm backend"  # not a field: a class attribute

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ValueError naming the first bad field; may normalize a value."""

    def _set(self, name: str, value: Any) -> None:
        """Normalize a field while validating (the dataclass is frozen)."""
        object.__setattr__(self, name, value)

    def _positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{self.backend_name}: {name} must be >= 1, got {value}")

    def output_values(self) -> Dict[str, Any]:
        """{name: value} of the OUTPUTS fields (the cache key's settings)."""
        return {name: getattr(self, name) for name in output_fields(type(self))}

    def load_fields(self) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(self) if f.metadata["load"])


@dataclass(frozen=True)
class HFSettings(BackendSettings):
    """`giellm.HF.v1`'s settings (its config block's arguments but `task`)."""

    backend_name = "giellm.HF.v1"

    # a Hub id or a local directory: identified by content (or hub commit)
    model: str = setting("", MODEL, load=True)
    adapter: Optional[str] = setting(None, MODEL, load=True)
    # merged LoRA weights round differently from base + adapter at run time
    merge_adapter: bool = setting(False, OUTPUTS, load=True)
    # other kernels (cuda, mps, cpu) give other float rounding
    device: str = setting("auto", OUTPUTS, load=True)
    # bf16 / fp16 / fp32 weights give other logits
    dtype: str = setting("auto", OUTPUTS, load=True)
    # prompts in one left-padded batch: the padding and the batched matmuls
    # change float rounding (near-ties can flip)
    batch_size: int = setting(16, OUTPUTS)
    # cuts the output
    max_new_tokens: int = setting(256, OUTPUTS)
    # the model's own modeling code instead of transformers' may compute otherwise
    trust_remote_code: bool = setting(False, OUTPUTS, load=True)
    # which weight files may load (.bin beside .safetensors)
    use_safetensors_only: bool = setting(True, OUTPUTS, load=True)
    # keeps every output to the task's format
    constrained: bool = setting(False, OUTPUTS)
    # forced tokens fed in one pass, not one step each: float rounding
    jump_forward: bool = setting(True, OUTPUTS)
    # ends an output before a run of pieces that repeat earlier ones and
    # cannot be placed in the text (prediction.LoopStop): a shorter output
    stop_loops: bool = setting(True, OUTPUTS)

    def validate(self) -> None:
        if not self.model:
            raise ValueError("giellm.HF.v1: 'model' must be a Hub id or a local path")
        self._set("model", str(self.model))
        self._set("adapter", str(self.adapter) if self.adapter else None)
        self._set("jump_forward", bool(self.jump_forward))
        self._set("stop_loops", bool(self.stop_loops))
        self._positive("batch_size", "max_new_tokens")
        from .hf_files import _DTYPES  # no torch: a table of names

        if self.dtype != "auto" and str(self.dtype).lower() not in _DTYPES:
            raise ValueError(f"giellm.HF.v1: unknown dtype {self.dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'")


@dataclass(frozen=True)
class LlamaCppSettings(BackendSettings):
    """`giellm.LlamaCpp.v1`'s settings (its config block's arguments but `task`)."""

    backend_name = "giellm.LlamaCpp.v1"

    # the GGUF file: identified by its SHA-256
    model_path: str = setting("", MODEL, load=True)
    # decides which prompts fit (a longer one is refused) and how many
    # sequences decode together
    n_ctx: int = setting(2048, OUTPUTS, load=True)
    # None: the physical cores less the busy ones (default_threads).
    # Speed only: llama.cpp splits the rows of a matmul over threads, each
    # row computed the same way
    n_threads: Optional[int] = setting(None, SPEED, load=True)
    # layers on the GPU run other kernels: other float rounding
    n_gpu_layers: int = setting(0, OUTPUTS, load=True)
    # cuts the output
    max_new_tokens: int = setting(256, OUTPUTS)
    # greedy decoding uses no sampler, so no random numbers
    seed: int = setting(0, SPEED, load=True)
    # llama.cpp's logging only
    verbose: bool = setting(False, SPEED, load=True)
    # sequences decoding in one batch: batched matmuls round otherwise
    # (near-ties can flip)
    n_parallel: int = setting(32, OUTPUTS)
    # keeps every output to the task's format
    constrained: bool = setting(False, OUTPUTS)
    # drafted tokens verified in multi-token batches: float rounding
    prompt_lookup: int = setting(0, OUTPUTS)
    # forced tokens fed without a decoding step each: float rounding
    jump_forward: bool = setting(True, OUTPUTS)
    # ends an output before a run of pieces that repeat earlier ones and
    # cannot be placed in the text (prediction.LoopStop): a shorter output
    stop_loops: bool = setting(True, OUTPUTS)
    # llama.cpp's flash-attention kernels: other float rounding
    flash_attn: bool = setting(True, OUTPUTS, load=True)

    def validate(self) -> None:
        if not self.model_path:
            raise ValueError("giellm.LlamaCpp.v1: 'model_path' must be the path of a .gguf file")
        self._set("model_path", str(self.model_path))
        self._set("jump_forward", bool(self.jump_forward))
        self._set("stop_loops", bool(self.stop_loops))
        self._set("flash_attn", bool(self.flash_attn))
        self._positive("max_new_tokens", "n_ctx", "n_parallel")
        if self.prompt_lookup < 0:
            raise ValueError(f"giellm.LlamaCpp.v1: prompt_lookup must be >= 0, got {self.prompt_lookup}")


SERVER_KINDS = ("llama.cpp", "vllm")


def base_url(url: str) -> str:
    """The server's address without a trailing /v1, /completions or /v1/completions."""
    url = url.rstrip("/")
    for suffix in ("/v1/completions", "/completions", "/v1"):
        if url.endswith(suffix):
            return url[: -len(suffix)]
    return url


@dataclass(frozen=True)
class ServerSettings(BackendSettings):
    """`giellm.Server.v1`'s settings (its config block's arguments but `task`)."""

    backend_name = "giellm.Server.v1"

    # where: the model it serves is named by the cache's declared model_identity
    url: str = setting("", MODEL)
    # the served model asked for (a server may serve several)
    model: Optional[str] = setting(None, OUTPUTS)
    # cuts the output
    max_new_tokens: int = setting(256, OUTPUTS)
    # one request per prompt: requests in flight do not see each other
    concurrency: int = setting(4, SPEED)
    timeout: float = setting(60.0, SPEED)
    retries: int = setting(3, SPEED)
    backoff: float = setting(0.5, SPEED)
    max_backoff: float = setting(8.0, SPEED)
    # cuts the output
    stop: Tuple[str, ...] = setting((), OUTPUTS)
    # the grammar sent with each request
    constrained: bool = setting(False, OUTPUTS)
    # which grammar field and repetition-penalty name the request carries
    server_kind: str = setting("llama.cpp", OUTPUTS)
    # who asks, not what is answered; never part of a key or a repr
    api_key: Optional[str] = setting(None, SPEED, repr=False)
    # anything else the request carries (sampling options...)
    extra_body: Optional[Dict[str, Any]] = setting(None, OUTPUTS)

    def validate(self) -> None:
        if not self.url or not self.url.startswith(("http://", "https://")):
            raise ValueError(f"giellm.Server.v1: 'url' must be an http(s) URL, got {self.url!r}")
        self._set("url", base_url(self.url))
        if self.server_kind not in SERVER_KINDS:
            raise ValueError(f"giellm.Server.v1: server_kind must be one of {SERVER_KINDS}, got {self.server_kind!r}")
        if self.max_new_tokens < 1 or self.concurrency < 1 or self.retries < 0 or self.timeout <= 0 or self.backoff < 0:
            raise ValueError(
                "giellm.Server.v1: max_new_tokens and concurrency must be >= 1, retries and backoff >= 0, timeout > 0"
            )
        self._set("stop", tuple(self.stop))
        self._set("extra_body", dict(self.extra_body or {}))


class SettingAttribute:
    """A backend attribute that reads its settings' field `name` and cannot
    be set: settings change through `reconfigure` / `configured`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __set_name__(self, owner: type, attr: str) -> None:
        self.attr = attr

    def __get__(self, obj: Any, owner: Optional[type] = None) -> Any:
        if obj is None:
            return self
        return getattr(obj.settings, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(
            f"{type(obj).__name__}.{self.attr} is a setting: use "
            f"backend.reconfigure(dataclasses.replace(backend.settings, {self.name}=...)), "
            f"or `with backend.configured({self.name}=...):`"
        )


class Configurable:
    """A backend whose settings are a `BackendSettings` (`settings_class`):
    `settings` (read-only), `reconfigure`, `configured`, and each field
    readable as an attribute of the same name (or the alias `_aliases` gives)."""

    settings_class: Type[BackendSettings] = BackendSettings
    _settings: BackendSettings

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        aliases = cls.__dict__.get("_aliases", {})
        for f in fields(cls.settings_class) if "settings_class" in cls.__dict__ else ():
            attr = aliases.get(f.name, f.name)
            if attr is None or attr in cls.__dict__:
                continue  # the class reads it its own way
            descriptor = SettingAttribute(f.name)
            descriptor.attr = attr
            setattr(cls, attr, descriptor)

    def _configure_from(self, arguments: Dict[str, Any]) -> None:
        """`__init__`'s work: the settings from the config block's arguments
        (its `locals()`: every field, and `task`), validated; `task` bound."""
        values = {f.name: arguments[f.name] for f in fields(self.settings_class)}
        self._setup(self.settings_class(**values), arguments.get("task"))

    @classmethod
    def from_settings(cls, settings: BackendSettings, task: Any = None) -> Any:
        """A new backend with these settings (e.g. `dataclasses.replace(
        other.settings, batch_size=1)`): as the factory makes it."""
        if type(settings) is not cls.settings_class:
            raise TypeError(f"{cls.__name__}: expected {cls.settings_class.__name__}, got {type(settings).__name__}")
        backend = cls.__new__(cls)
        backend._setup(settings, task)
        return backend

    def _setup(self, settings: Any, task: Any) -> None:
        """The backend's own state, under `settings`, bound to `task` if given."""
        raise NotImplementedError

    @property
    def settings(self) -> Any:
        """The backend's settings (frozen; see `reconfigure`)."""
        return self._settings

    def generation_settings(self) -> Dict[str, Any]:
        """Plain data of every setting that can change an output (the
        response cache's key): the OUTPUTS fields of `settings`, and what
        `_key_extras` adds (values resolved at run time, library versions)."""
        return {"backend": self._settings.backend_name, **self._settings.output_values(), **self._key_extras()}

    def _key_extras(self) -> Dict[str, Any]:
        return {}

    def _unload(self) -> None:
        """Free what was loaded under the old settings (the next call loads again)."""

    def reconfigure(self, settings: BackendSettings) -> "Configurable":
        """Run under `settings` from now on (e.g. `dataclasses.replace(
        backend.settings, n_parallel=1)`), validated as at construction. A
        change to a setting the loaded model depends on (`load` fields:
        the model path, dtype, n_ctx...) frees the model: the next call
        loads it again. Returns the backend."""
        if type(settings) is not type(self._settings):
            raise TypeError(f"{type(self).__name__}.reconfigure: expected {type(self._settings).__name__}, "
                            f"got {type(settings).__name__}")
        old = self._settings
        if any(getattr(old, name) != getattr(settings, name) for name in old.load_fields()):
            self._unload()
        self._settings = settings
        return self

    @contextlib.contextmanager
    def configured(self, **changes: Any) -> Iterator["Configurable"]:
        """`with backend.configured(n_parallel=1): ...`: the backend under
        `dataclasses.replace(backend.settings, **changes)` inside the block,
        its old settings back after it."""
        saved = self._settings
        self.reconfigure(dataclasses.replace(saved, **changes))
        try:
            yield self
        finally:
            self.reconfigure(saved)


def point_at_model_file(backend: Any, path: Any) -> bool:
    """Have `backend` read its model from `path` from now on (a pipeline's
    own copy of the file), freeing a model loaded from elsewhere. False
    where its settings take no `model_path`."""
    if not isinstance(backend, Configurable) or "model_path" not in {f.name for f in fields(backend.settings)}:
        return False
    backend.reconfigure(dataclasses.replace(backend.settings, model_path=str(path)))
    return True


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def settings_class_for(backend_name: str) -> Type[BackendSettings]:
    """The settings dataclass of a built-in backend (its registered name)."""
    for cls in (HFSettings, LlamaCppSettings, ServerSettings):
        if cls.backend_name == backend_name:
            return cls
    raise ValueError(f"no settings known for the backend {backend_name!r}")


def setting_value(settings_class: Type[BackendSettings], name: str, text: str) -> Any:
    """The value of the field `name` that `text` writes (a command line's
    `--setting name=value`), by the field's type: bool (true/false),
    int, float, str, an Optional one ("none"), a tuple of strings (JSON
    list, or comma-separated), a dict (JSON object)."""
    import json

    known = {f.name: f for f in fields(settings_class)}
    if name not in known:
        raise ValueError(f"{settings_class.backend_name}: no setting {name!r}; its settings: {', '.join(known)}")
    kind = str(known[name].type).replace("typing.", "")
    if kind.startswith("Optional["):
        if text.strip().lower() in ("none", "null"):
            return None
        kind = kind[len("Optional["):-1]
    try:
        if kind == "bool":
            if text.strip().lower() not in _TRUE + _FALSE:
                raise ValueError("not true or false")
            return text.strip().lower() in _TRUE
        if kind in ("int", "float"):
            return int(text) if kind == "int" else float(text)
        if kind.startswith("Tuple"):
            items = json.loads(text) if text.lstrip().startswith("[") else [t for t in text.split(",") if t]
            return tuple(str(item) for item in items)
        if kind.startswith("Dict"):
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            return value
    except ValueError as e:
        raise ValueError(f"{settings_class.backend_name}: {name}={text!r}: expected {kind} ({e})") from None
    return text
