"""Export a transformers model directory to GGUF with llama.cpp's own tools.

No converter is written here: `convert_to_gguf` runs llama.cpp's
`convert_hf_to_gguf.py` (with its `conversion/` package and vendored
`gguf-py`) as a subprocess, and `quantize_gguf` calls `llama_model_quantize`
from llama-cpp-python.

The converter is found (or fetched once) by `llama_cpp_converter.find_converter`.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from ..backends.gguf_check import GGUF_MAGIC, validate_gguf
from ..util import atomic_path
from .llama_cpp_converter import ConverterNotFoundError, cache_dir, find_converter, llama_cpp_version

PathLike = Union[str, "os.PathLike[str]"]

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
_GGUF_STRING_TYPE = 8  # GGUF metadata value type of a UTF-8 string

__all__ = [
    "find_converter",
    "convert_to_gguf",
    "quantize_gguf",
    "llama_cpp_version",
    "cache_dir",
    "ConverterNotFoundError",
    "QuantizationFallbackWarning",
    "TokenizerConversionWarning",
    "added_tokens_decoder",
    "set_gguf_strings",
]


class QuantizationFallbackWarning(UserWarning):
    """Some tensors could not use the requested quantization type."""


class TokenizerConversionWarning(UserWarning):
    """The GGUF tokenizer will not split text like the transformers tokenizer."""


def added_tokens_decoder(model_dir: PathLike) -> Dict[str, Dict[str, Any]]:
    """`added_tokens_decoder` entries (tokenizer_config.json format) for the
    added tokens in `model_dir/tokenizer.json`; empty if there is none.

    llama.cpp's converter takes SentencePiece token types from
    tokenizer.model, where it does not recognise user-defined pieces, and only
    marks them USER_DEFINED through tokenizer_config.json's
    `added_tokens_decoder`, which transformers v5 no longer writes.
    """
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    out: Dict[str, Dict[str, Any]] = {}
    for t in sorted(data.get("added_tokens") or [], key=lambda t: t["id"]):
        out[str(t["id"])] = {
            "content": t["content"],
            "lstrip": bool(t.get("lstrip", False)),
            "normalized": bool(t.get("normalized", False)),
            "rstrip": bool(t.get("rstrip", False)),
            "single_word": bool(t.get("single_word", False)),
            "special": bool(t.get("special", False)),
        }
    return out


def _config_missing_added_tokens(src: Path) -> Optional[Dict[str, Any]]:
    """A patched tokenizer_config.json if the converter would miss added tokens, else None."""
    cfg_path = src / "tokenizer_config.json"
    if not (src / "tokenizer.model").is_file() or not cfg_path.is_file():
        return None
    decoder = added_tokens_decoder(src)
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    have = cfg.get("added_tokens_decoder") or {}
    missing = {k: v for k, v in decoder.items() if k not in have}
    if not missing:
        return None
    cfg["added_tokens_decoder"] = {**have, **missing}
    return cfg


@contextlib.contextmanager
def _converter_source(src: Path) -> Iterator[Path]:
    """`src`, or a temp mirror of it (symlinks) with added tokens written into tokenizer_config.json."""
    patched = _config_missing_added_tokens(src)
    if patched is None:
        yield src
        return
    with tempfile.TemporaryDirectory(prefix="giellm-gguf-src-") as tmp:
        mirror = Path(tmp) / src.name
        mirror.mkdir()
        for entry in src.iterdir():
            if entry.name == "tokenizer_config.json":
                continue
            try:
                (mirror / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
            except OSError:  # no symlinks (Windows without privilege)
                if entry.is_dir():
                    shutil.copytree(entry, mirror / entry.name)
                else:
                    shutil.copy2(entry, mirror / entry.name)
        (mirror / "tokenizer_config.json").write_text(
            json.dumps(patched, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        yield mirror


def _check_added_token_types(src: Path, gguf_path: Path, shown_as: Path) -> None:
    """Warn if user-defined added tokens became NORMAL tokens in the GGUF."""
    decoder = added_tokens_decoder(src)
    user = {int(k): v["content"] for k, v in decoder.items() if not v["special"]}
    if not user:
        return
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_path), "r").get_field("tokenizer.ggml.token_type")
    if field is None:
        return
    types = field.contents()
    normal = [content for i, content in sorted(user.items()) if i < len(types) and types[i] == 1]
    if normal:
        shown = ", ".join(repr(c) for c in normal[:8]) + (" ..." if len(normal) > 8 else "")
        warnings.warn(
            f"{len(normal)} added token(s) of {str(src)!r} are ordinary tokens in {str(shown_as)!r}: "
            f"{shown}. llama.cpp will not produce them when tokenizing prompts, so its outputs will "
            f"differ from transformers'. Keep the SentencePiece tokenizer.model next to the model "
            f"(transformers v5 drops it on re-save) so they can be marked user-defined.",
            TokenizerConversionWarning,
            stacklevel=3,
        )


def _check_config(path: Path) -> None:
    """config.json must be a JSON object naming the model type: a ValueError
    naming the file, not the converter's traceback."""
    from ..tasks import load_json_text

    try:
        config = load_json_text(path.read_text(encoding="utf8"), str(path))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text: {err}") from err
    if not isinstance(config, dict) or not isinstance(config.get("model_type") or config.get("architectures"), (str, list)):
        raise ValueError(f"{path}: not a transformers model config (a JSON object with 'model_type' or 'architectures')")


def convert_to_gguf(
    hf_dir: PathLike,
    out_path: PathLike,
    outtype: str = "f16",
    *,
    llama_cpp_dir: Optional[PathLike] = None,
    timeout: Optional[float] = None,
    metadata: Optional[Dict[str, str]] = None,
) -> Path:
    """Convert the transformers model in `hf_dir` to a GGUF file at `out_path`.

    `outtype` is one of f32, f16, bf16, q8_0. The converter runs in a
    subprocess with this interpreter; `metadata` (string keys and values,
    e.g. `giellm.tasks`) is added to what it writes (`set_gguf_strings`);
    the output is validated with `validate_gguf` and moved into place
    atomically. Returns `Path(out_path)`.
    """
    outtype = outtype.lower()
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    src = Path(hf_dir).expanduser()
    if not src.is_dir():
        raise FileNotFoundError(f"model directory not found: {str(src)!r}")
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{str(src)!r} is not a transformers model directory (no config.json)")
    _check_config(src / "config.json")
    converter = find_converter(llama_cpp_dir)

    out = Path(out_path).expanduser()
    env = dict(os.environ)
    gguf_py = converter.parent / "gguf-py"
    paths = [str(converter.parent)] + ([str(gguf_py)] if gguf_py.is_dir() else [])
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("NO_LOCAL_GGUF", None)
    env.setdefault("HF_HUB_OFFLINE", "1")  # the converter must only read hf_dir
    with atomic_path(out) as tmp, _converter_source(src) as source:
        cmd = [sys.executable, str(converter), str(source), "--outfile", str(tmp), "--outtype", outtype]
        if source != src:
            cmd += ["--model-name", src.name]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-25:])
            raise RuntimeError(
                f"llama.cpp's converter failed on {str(src)!r} (exit {proc.returncode}).\n"
                f"command: {' '.join(cmd)}\n{tail}"
            )
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise RuntimeError(f"llama.cpp's converter reported success but wrote no file for {str(src)!r}")
        validate_gguf(tmp)
        if metadata:
            set_gguf_strings(tmp, metadata)
        _check_added_token_types(src, tmp, shown_as=out)
    return out


def _gguf_string(value: str) -> bytes:
    data = value.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def set_gguf_strings(path: PathLike, values: Dict[str, str]) -> Path:
    """Set string metadata `values` in the GGUF file at `path` (a key it
    has already is replaced), rewriting the file atomically. llama.cpp's
    converter has no option for keys of our own, and llama.cpp ignores keys
    it does not know. The tensor index and data are copied byte for byte:
    tensor offsets count from the start of the data section, which only
    moves (to the file's alignment)."""
    from gguf import GGUFReader

    path = Path(path)
    reader = GGUFReader(str(path), "r")
    version = int(reader.fields["GGUF.version"].parts[-1][0])
    if version < 2 or not reader.tensors:
        raise ValueError(f"{str(path)!r}: GGUF version {version} with {len(reader.tensors)} tensors: cannot add metadata")

    def span(field: Any) -> Tuple[int, int]:
        return field.offset, field.offset + sum(int(part.nbytes) for part in field.parts)

    kept = sorted(
        (span(f) for name, f in reader.fields.items() if not name.startswith("GGUF.") and name not in values)
    )
    index_start, index_end = span(reader.tensors[0].field)[0], span(reader.tensors[-1].field)[1]
    data_start, alignment, n_tensors = int(reader.data_offset), int(reader.alignment), len(reader.tensors)
    del reader  # its memory map, before the file is replaced
    with open(path, "rb") as f:
        head = f.read(index_end)  # header, metadata, tensor index: no tensor data
    meta = b"".join(
        [GGUF_MAGIC, struct.pack("<IQQ", version, n_tensors, len(kept) + len(values))]
        + [head[a:b] for a, b in kept]
        + [_gguf_string(key) + struct.pack("<I", _GGUF_STRING_TYPE) + _gguf_string(value) for key, value in values.items()]
        + [head[index_start:index_end]]
    )
    with atomic_path(path) as tmp, open(tmp, "wb") as out, open(path, "rb") as src:
        out.write(meta + b"\0" * (-len(meta) % alignment))
        src.seek(data_start)
        shutil.copyfileobj(src, out, 1 << 24)
    validate_gguf(path)
    return path


def _ftype_constant(ftype: str) -> int:
    import llama_cpp

    name = "LLAMA_FTYPE_MOSTLY_" + ftype.upper()
    if not hasattr(llama_cpp, name):
        known = sorted(n[len("LLAMA_FTYPE_MOSTLY_"):] for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_MOSTLY_"))
        raise ValueError(f"unknown quantization type {ftype!r}; known: {', '.join(known)}")
    return int(getattr(llama_cpp, name))


def _k_quant(ftype: str) -> bool:
    f = ftype.upper()
    return "_K" in f or f.startswith("IQ")


def _tensor_rows(path: Path) -> Dict[str, List[int]]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path), "r")
    return {t.name: [int(x) for x in t.shape] for t in reader.tensors}


def _tensor_types(path: Path) -> Dict[str, str]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path), "r")
    return {t.name: t.tensor_type.name for t in reader.tensors}


def quantize_gguf(
    in_path: PathLike,
    out_path: PathLike,
    ftype: str = "Q4_K_M",
    *,
    nthread: int = 0,
    verbose: bool = False,
) -> Path:
    """Quantize a GGUF file with llama.cpp's `llama_model_quantize`.

    `ftype` names a llama.cpp file type without the LLAMA_FTYPE_MOSTLY_ prefix
    (Q4_K_M, Q5_K_M, Q8_0, ...). K-quants need rows whose length is a multiple
    of 256; llama.cpp quantizes other tensors with a fallback type. When that
    happens a `QuantizationFallbackWarning` lists them (a tiny test model with
    hidden size 64 falls back entirely). llama.cpp's per-tensor log goes to
    stderr only with `verbose=True`. Returns `Path(out_path)`.
    """
    import logging

    import llama_cpp

    src = Path(in_path).expanduser()
    validate_gguf(src)
    code = _ftype_constant(ftype)
    out = Path(out_path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)

    fallback: List[str] = []
    if _k_quant(ftype):
        for name, shape in _tensor_rows(src).items():
            if len(shape) >= 2 and shape[0] % 256 != 0:
                fallback.append(f"{name} (row length {shape[0]})")

    # llama-cpp-python routes llama.cpp's log through this logger's level.
    lc_logger = logging.getLogger("llama-cpp-python")
    old_level = lc_logger.level
    if not verbose:
        lc_logger.setLevel(logging.ERROR)
    try:
        with atomic_path(out) as tmp:
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = code
            params.nthread = int(nthread)
            rc = llama_cpp.llama_model_quantize(str(src).encode("utf-8"), str(tmp).encode("utf-8"), ctypes.byref(params))
            if rc != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
                raise RuntimeError(f"llama_model_quantize failed on {str(src)!r} -> {ftype} (return code {rc})")
            validate_gguf(tmp)
            types = _tensor_types(tmp)
    finally:
        lc_logger.setLevel(old_level)

    if fallback:
        counts: Dict[str, int] = {}
        for t in types.values():
            counts[t] = counts.get(t, 0) + 1
        summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        shown = "; ".join(fallback[:8]) + (f"; ... ({len(fallback)} in all)" if len(fallback) > 8 else "")
        warnings.warn(
            f"{ftype} needs row lengths divisible by 256; {len(fallback)} tensor(s) of {str(src)!r} "
            f"are not, so llama.cpp quantized them with a fallback type instead: {shown}. "
            f"Tensor types in {str(out)!r}: {summary}.",
            QuantizationFallbackWarning,
            stacklevel=2,
        )
    return out
