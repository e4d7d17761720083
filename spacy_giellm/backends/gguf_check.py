"""Check a GGUF file in Python before llama.cpp sees it.

llama.cpp reports some malformed files by aborting the whole process (for
example a tokenizer whose size disagrees with the embedding matrix), which
would take the spaCy pipeline, a notebook or a test session down with it.
`validate_gguf` reads the header, metadata and tensor index with
`gguf.GGUFReader` (memory-mapped, no tensor data is copied) and raises an
ordinary Python exception naming the file instead.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

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


def validate_gguf(path: Union[str, "os.PathLike[str]"]) -> Dict[str, Any]:
    """Validate the GGUF file at `path` and return its basic metadata.

    Raises FileNotFoundError if there is no such file, and ValueError (naming
    the path) if it is not a GGUF file, is truncated or unreadable, lacks
    `general.architecture`, or its token list and `token_embd.weight` disagree
    on the vocabulary size.

    The returned dict has: path, version, architecture, name, file_type,
    n_tensors, n_vocab, n_embd, n_layers, context_length, tokenizer_model,
    bos_token_id, eos_token_id, add_bos_token, add_space_prefix.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"GGUF model file not found: {str(p)!r}")
    if not p.is_file():
        raise ValueError(f"GGUF model path is not a file: {str(p)!r}")
    size = p.stat().st_size
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
        raise ValueError(f"{str(p)!r} is not a readable GGUF file (truncated or corrupt?): {e}") from e

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
