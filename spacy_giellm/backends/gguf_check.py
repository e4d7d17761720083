"""Check a GGUF file in Python before llama.cpp sees it.

llama.cpp reports some malformed files by aborting the whole process (for
example a tokenizer whose size disagrees with the embedding matrix), which
would take the spaCy pipeline, a notebook or a test session down with it.
`validate_gguf` reads the header, metadata and tensor index with
`gguf.GGUFReader` (memory-mapped, no tensor data is copied) and raises an
ordinary Python exception naming the file instead.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

GGUF_MAGIC = b"GGUF"

__all__ = ["validate_gguf", "GGUF_MAGIC"]


def _field(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    if field is None:
        return None
    return field.contents()


def _field_len(reader: Any, key: str) -> Optional[int]:
    field = reader.get_field(key)
    if field is None:
        return None
    return len(field.data)


# architectures whose attn_q/k/v rows are exactly heads * head size (others
# fuse a gate into Q, or compress K/V, and are left to llama.cpp)
_PLAIN_ATTENTION = ("llama", "mistral", "gemma", "gemma2", "gemma3", "qwen2", "qwen3")
MAX_CONTEXT = 1 << 24  # 16M tokens: above any real model; 0xFFFFFFFF is a broken header


def _numbers(reader: Any, key: str, kind: type) -> Optional[List[Any]]:
    """A scalar or per-layer array field as a list of `kind` (int or float),
    None if absent; ValueError if it holds something else."""
    field = reader.get_field(key)
    if field is None:
        return None
    value = field.contents()
    values = value if isinstance(value, list) else [value]
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not values or not ok or (kind is int and any(isinstance(v, float) for v in values)):
        raise _BadKey(key, value, f"is not {'an integer' if kind is int else 'a number'} (or a list of them)")
    return [kind(v) for v in values]


class _BadKey(ValueError):
    def __init__(self, key: str, value: Any, why: str) -> None:
        shown = repr(value) if not isinstance(value, list) or len(value) <= 8 else f"[{len(value)} values]"
        super().__init__(f"{key} = {shown} {why}")


def _check_hparams(path: str, reader: Any, arch: str, tensors: Dict[str, Any]) -> None:
    """The hyperparameters llama.cpp trusts (some it asserts on, which aborts
    the process): layer count against the blk.N tensors, norm epsilons,
    context length, attention head counts against the width."""
    try:
        _check_hparams_or_raise(reader, arch, tensors)
    except _BadKey as e:
        raise ValueError(f"GGUF file {path!r} has a bad header: {e}") from None


def _check_hparams_or_raise(reader: Any, arch: str, tensors: Dict[str, Any]) -> None:
    key = f"{arch}.block_count"
    blocks = {int(m.group(1)) for name in tensors if (m := re.match(r"blk\.(\d+)\.", name))}
    n_layer = _numbers(reader, key, int)
    if n_layer is not None:
        n = n_layer[0]
        if n < 1:
            raise _BadKey(key, n, "must be at least 1")
        if blocks and blocks != set(range(n)):
            raise _BadKey(key, n, f"but the file has tensors for blocks {min(blocks)}..{max(blocks)} ({len(blocks)} blocks)")

    for key in (f"{arch}.attention.layer_norm_rms_epsilon", f"{arch}.attention.layer_norm_epsilon"):
        for eps in _numbers(reader, key, float) or ():
            if not math.isfinite(eps) or eps <= 0:
                raise _BadKey(key, eps, "must be a finite number > 0")

    key = f"{arch}.context_length"
    for ctx in _numbers(reader, key, int) or ():
        if not 0 < ctx <= MAX_CONTEXT:
            raise _BadKey(key, ctx, f"must be between 1 and {MAX_CONTEXT}")

    key = f"{arch}.embedding_length"
    n_embd = _numbers(reader, key, int)
    if n_embd is not None and n_embd[0] < 1:
        raise _BadKey(key, n_embd[0], "must be at least 1")

    heads_key, kv_key = f"{arch}.attention.head_count", f"{arch}.attention.head_count_kv"
    heads = _numbers(reader, heads_key, int)
    kv = _numbers(reader, kv_key, int)
    for key, values in ((heads_key, heads), (kv_key, kv)):
        if values is not None and len(values) > 1 and n_layer is not None and len(values) != n_layer[0]:
            raise _BadKey(key, values, f"has {len(values)} per-layer values for {n_layer[0]} layers")
        if values is not None and min(values) < 0:
            raise _BadKey(key, values, "must not be negative")
    if heads is None:
        return
    if max(heads) == 0:  # attention-free models (Mamba) write 0
        if any(".attn_q." in name for name in tensors):
            raise _BadKey(heads_key, heads[0], "but the file has attention tensors")
        return
    kv = kv if kv is not None else heads
    layers = max(len(heads), len(kv))
    for il in range(layers):
        h, k = heads[il % len(heads)], kv[il % len(kv)]
        # query heads are shared out among the KV heads: ggml asserts it
        if k and (h == 0 or h % k):
            raise _BadKey(kv_key, k, f"must divide {heads_key} = {h} (layer {il})")
    # without an explicit head size llama.cpp takes width / heads (Gemma 3
    # states key_length, and its heads * head size need not be the width)
    k_len = _numbers(reader, f"{arch}.attention.key_length", int)
    v_len = _numbers(reader, f"{arch}.attention.value_length", int)
    if n_embd is not None and k_len is None and n_embd[0] % heads[0]:
        raise _BadKey(heads_key, heads[0], f"must divide {arch}.embedding_length = {n_embd[0]}")
    if arch not in _PLAIN_ATTENTION:
        return
    head_k = k_len[0] if k_len else (n_embd[0] // heads[0] if n_embd else 0)
    head_v = v_len[0] if v_len else (n_embd[0] // heads[0] if n_embd else 0)
    for il in range(n_layer[0] if n_layer else 0):
        h, k = heads[il % len(heads)], kv[il % len(kv)]
        for name, key, n, size in (("attn_q", heads_key, h, head_k), ("attn_k", kv_key, k, head_k),
                                   ("attn_v", kv_key, k, head_v)):
            t = tensors.get(f"blk.{il}.{name}.weight")
            rows = int(t.shape[1]) if t is not None and len(t.shape) > 1 else None
            if rows is not None and size and rows != n * size:
                raise _BadKey(key, n, f"times the head size {size} is {n * size}, "
                                      f"but blk.{il}.{name}.weight has {rows} rows")


_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value types
_STRING, _ARRAY = 8, 9


def _first_bad_key(path: Path, size: int) -> Optional[str]:
    """Walk the metadata section and name the first key whose string or
    array length runs past the end of the file (GGUFReader only says that
    something did). None if the walk finds nothing wrong."""
    import struct

    with open(path, "rb") as f:
        f.seek(8)  # magic, version
        head = f.read(16)
        if len(head) < 16:
            return None
        _, n_kv = struct.unpack("<QQ", head)

        def u(fmt: str) -> int:
            data = f.read(struct.calcsize(fmt))
            if len(data) < struct.calcsize(fmt):
                raise EOFError
            return struct.unpack("<" + fmt, data)[0]

        def skip(n: int, what: str) -> None:
            if n > size - f.tell():
                raise OverflowError(f"{what} of {n} bytes runs past the end of the {size}-byte file")
            f.seek(n, 1)

        key = "(header)"
        try:
            for _ in range(min(n_kv, size)):
                n = u("Q")
                skip(n, f"the key name after {key}")
                f.seek(-n, 1)
                key = f.read(n).decode("utf-8", "replace")
                vtype = u("I")
                count, item = 1, vtype
                if vtype == _ARRAY:
                    item, count = u("I"), u("Q")
                if item == _STRING:
                    for _ in range(count if count <= size else 1):
                        skip(u("Q"), f"{key}: a string")
                    if count > size:
                        raise OverflowError(f"{key}: an array of {count} strings cannot fit a {size}-byte file")
                elif item in _SCALAR_SIZES:
                    skip(count * _SCALAR_SIZES[item], f"{key}: {count} values")
                else:
                    return f"{key}: unknown value type {item}"
        except OverflowError as e:
            return str(e)
        except EOFError:
            return f"{key}: the file ends inside it"
    return None


def validate_gguf(path: Union[str, "os.PathLike[str]"]) -> Dict[str, Any]:
    """Validate the GGUF file at `path` and return its basic metadata.

    Raises FileNotFoundError if there is no such file, and ValueError (naming
    the path, and the key where one is at fault) if it is not a GGUF file, is
    truncated or unreadable, lacks `general.architecture`, its token list and
    `token_embd.weight` disagree on the vocabulary size, or a hyperparameter
    is out of range (`_check_hparams`).

    The returned dict has: path, version, architecture, name, file_type,
    n_tensors, n_vocab, n_embd, n_layers, context_length, tokenizer_model,
    bos_token_id, eos_token_id, add_bos_token, add_space_prefix.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"GGUF model file not found: {str(p)!r}")
    if not p.is_file():
        raise ValueError(f"GGUF model path is not a file: {str(p)!r}")
    st = p.stat()
    # a file already found good, unchanged since: Gemma's 262k-token
    # vocabulary takes seconds to read, and every backend on it validates
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key in _VALID:
        return dict(_VALID[key], path=str(p))
    meta = _validate(p, st.st_size)
    _VALID[key] = meta
    return dict(meta)


# (real path, size, mtime, inode) -> metadata of files that passed
_VALID: Dict[Tuple[str, int, int, int], Dict[str, Any]] = {}


def _validate(p: Path, size: int) -> Dict[str, Any]:
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ValueError(f"cannot read GGUF file {str(p)!r}: {e}") from e
    if magic != GGUF_MAGIC:
        raise ValueError(
            f"{str(p)!r} is not a GGUF file (magic bytes {magic!r}, expected {GGUF_MAGIC!r})"
        )

    try:
        from gguf import GGUFReader
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "validating GGUF files needs the 'gguf' package: pip install 'spacy-giellm[llamacpp]'"
        ) from e

    try:
        reader = GGUFReader(str(p), "r")
    except Exception as e:  # truncated header, bad field types, short tensor data...
        where = _first_bad_key(p, size)
        raise ValueError(
            f"{str(p)!r} is not a readable GGUF file (truncated or corrupt?)"
            + (f": {where}" if where else "") + f": {e}"
        ) from e

    try:
        version = _field(reader, "GGUF.version")
        arch = _field(reader, "general.architecture")
        if not arch or not isinstance(arch, str):
            raise ValueError(f"GGUF file {str(p)!r} has no 'general.architecture' metadata")

        tensors = {t.name: t for t in reader.tensors}
        for t in reader.tensors:
            end = int(t.data_offset) + int(t.n_bytes)
            if end > size:
                raise ValueError(
                    f"GGUF file {str(p)!r} is truncated: tensor {t.name!r} ends at byte {end}, "
                    f"file has {size} bytes"
                )

        n_tokens = _field_len(reader, "tokenizer.ggml.tokens")
        embd = tensors.get("token_embd.weight")
        n_embd = n_rows = None
        if embd is not None:
            shape = [int(x) for x in embd.shape]  # ggml order: ne0 = n_embd, ne1 = n_vocab
            n_embd = shape[0]
            n_rows = shape[1] if len(shape) > 1 else 1
        if n_tokens is not None and n_rows is not None and n_tokens != n_rows:
            raise ValueError(
                f"GGUF file {str(p)!r} is inconsistent: the tokenizer has {n_tokens} tokens "
                f"but token_embd.weight has {n_rows} rows"
            )
        out = tensors.get("output.weight")
        if out is not None and n_tokens is not None and len(out.shape) > 1 and int(out.shape[1]) != n_tokens:
            raise ValueError(
                f"GGUF file {str(p)!r} is inconsistent: the tokenizer has {n_tokens} tokens "
                f"but output.weight has {int(out.shape[1])} rows"
            )
        n_vocab_meta = _field(reader, f"{arch}.vocab_size")
        if n_vocab_meta is not None and n_tokens is not None and int(n_vocab_meta) != n_tokens:
            raise ValueError(
                f"GGUF file {str(p)!r} is inconsistent: {arch}.vocab_size is {n_vocab_meta} "
                f"but the tokenizer has {n_tokens} tokens"
            )
        _check_hparams(str(p), reader, arch, tensors)
        for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
            tid = _field(reader, key)
            if tid is not None and n_tokens is not None and not 0 <= int(tid) < n_tokens:
                raise ValueError(
                    f"GGUF file {str(p)!r} is inconsistent: {key} = {tid} is outside the "
                    f"vocabulary of {n_tokens} tokens"
                )

        return {
            "path": str(p),
            "version": version,
            "architecture": arch,
            "name": _field(reader, "general.name"),
            "file_type": _field(reader, "general.file_type"),
            "n_tensors": len(reader.tensors),
            "n_vocab": n_tokens if n_tokens is not None else n_rows,
            "n_embd": n_embd if n_embd is not None else _field(reader, f"{arch}.embedding_length"),
            "n_layers": _field(reader, f"{arch}.block_count"),
            "context_length": _field(reader, f"{arch}.context_length"),
            "tokenizer_model": _field(reader, "tokenizer.ggml.model"),
            "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
            "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
            "add_bos_token": _field(reader, "tokenizer.ggml.add_bos_token"),
            "add_space_prefix": _field(reader, "tokenizer.ggml.add_space_prefix"),
        }
    except ValueError:
        raise
    except Exception as e:  # e.g. undecodable strings in the metadata
        raise ValueError(f"{str(p)!r} is not a readable GGUF file: {type(e).__name__}: {e}") from e
