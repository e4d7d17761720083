"""One loaded model per file and settings, shared by the backends of a process.

A pipeline with several `giellm` components (one per task or instruction
word) on the same model file would otherwise load the weights once per
component. `shared_model` keeps one loaded object per key (the file's real
path, size and modification time, and the load settings) and hands out
leases: each backend gets a `SharedModel` that forwards attribute access to
the loaded object, and whose `close()` returns the lease instead of freeing
the weights. The weights are freed (the object's own `close()`) when the last
lease is returned, explicitly or by garbage collection of the lease.

Only what is read-only at run time is shared (weights, vocabulary): each
backend keeps its own decoding context.
"""
from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, Tuple, Union

__all__ = ["SharedModel", "shared_model", "shared_llama", "file_key"]

PathLike = Union[str, "os.PathLike[str]"]

_lock = threading.Lock()
# key -> [loaded object, number of leases out]
_loaded: Dict[Hashable, list] = {}


def file_key(path: PathLike) -> Tuple[str, int, int]:
    """(real path, size, mtime in ns): a file replaced or rewritten in place
    is a different key, so it is loaded anew."""
    real = os.path.realpath(Path(path).expanduser())
    st = os.stat(real)
    return real, st.st_size, st.st_mtime_ns


class SharedModel:
    """A lease on a shared loaded model: attributes are the model's, and
    `close()` returns the lease (the model is freed with the last one)."""

    # names the model's own attributes will not have (`Llama._model` exists)
    __slots__ = ("_lease_target", "_lease_release", "__weakref__")

    def __init__(self, model: Any, key: Hashable) -> None:
        object.__setattr__(self, "_lease_target", model)
        # finalize runs once: on close(), or when this lease is collected
        object.__setattr__(self, "_lease_release", weakref.finalize(self, _return_lease, key))

    def __getattr__(self, name: str) -> Any:
        model = object.__getattribute__(self, "_lease_target")
        if model is None:
            raise RuntimeError(f"shared model: this lease was closed (reading {name!r})")
        return getattr(model, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("shared model: a lease is read-only (the model is shared with other backends)")

    def close(self) -> None:
        object.__setattr__(self, "_lease_target", None)
        self._lease_release()

    def __repr__(self) -> str:
        model = object.__getattribute__(self, "_lease_target")
        return f"SharedModel({'closed' if model is None else type(model).__name__})"


def _return_lease(key: Hashable) -> None:
    with _lock:
        entry = _loaded.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _loaded[key]
    close = getattr(entry[0], "close", None)
    if callable(close):
        close()


def shared_model(key: Hashable, load: Callable[[], Any]) -> SharedModel:
    """A lease on the object `load()` returns, loaded once per `key` while
    any lease on it is out. `load` runs under the cache's lock, so two
    threads asking for the same key load it once."""
    with _lock:
        entry = _loaded.get(key)
        if entry is None:
            entry = _loaded[key] = [load(), 0]
        entry[1] += 1
        return SharedModel(entry[0], key)


def shared_llama(model_path: PathLike, **settings: Any) -> SharedModel:
    """A lease on `llama_cpp.Llama(model_path=..., **settings)`, one per file
    and settings in this process."""
    import llama_cpp

    key = ("llama_cpp.Llama", file_key(model_path), tuple(sorted(settings.items())))
    return shared_model(key, lambda: llama_cpp.Llama(model_path=str(model_path), **settings))
