"""A base model with a smaller vocabulary: fewer rows in the output head.

Gemma 3 270M spends a third of its FLOPs per generated token in its output
head: 262,144 rows of 640, most of them for scripts and code a Japanese
extraction model never writes. `trim_vocabulary` keeps the tokens that
matter and writes a new base model directory to fine-tune from; training,
`export-gguf` (llama.cpp's converter reads the trimmed `tokenizer.model`) and
inference then share the one trimmed tokenizer, and the head is computed over
the kept rows only, in transformers and in llama.cpp alike.

Which tokens are kept:

* every token of the given texts (the training records' inputs and outputs,
  so the format's labels, delimiters and Instruction Words too), as the
  original tokenizer splits them;
* with `keep_japanese` (the default), every token made of Japanese script
  (kana, kanji, Japanese punctuation, full-width forms) and ASCII with at
  least one Japanese character, and every single-character token of those
  scripts and of ASCII: unseen Japanese text then splits as before;
* with `keep_ascii_chars` = N, every ASCII token of up to N characters
  (SentencePiece's "▁" for a space counts as one): Latin words in Japanese
  text (names, products) split into pieces the model knows;
* the tokenizer's special tokens (unk, bos, eos, pad, mask) and the 256 byte
  tokens `<0x00>`..`<0xFF>` and "▁" (the space), so that any text can still
  be written;
* and the closure of all of these under BPE: every intermediate piece the
  merges build on the way to a kept token. Without it a kept token would be
  unreachable, and the texts would split differently after trimming.

The kept tokens keep their order (ids are renumbered, specials stay first)
and their SentencePiece scores; merges are kept where both parts and the
result are. The texts are re-tokenized with the trimmed tokenizer and must
give exactly the kept ids of the original split (checked; an error says
which text differs). The model's embedding rows (the head, tied or not) are
sliced to the kept ids: for a text made of kept tokens the trimmed model's
logits are the original's at the kept rows.

Needs a BPE tokenizer.json (with byte fallback) and, for the GGUF export, a
SentencePiece `tokenizer.model` beside it: what `resolve_base_model` makes of
a GGUF base, and what the tiny test models have.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence, Set, Tuple, Union

from ..util import atomic_dir, atomic_write_json

PathLike = Union[str, Path]
TRIM_FILE = "giellm-trim.json"
# Files rewritten here, or left out because they name tokens by old id or
# list special tokens the trimmed vocabulary may lack (transformers would
# add those back past the embeddings); everything else is copied.
_REWRITTEN = {
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "config.json",
    "generation_config.json", "model.safetensors", "model.safetensors.index.json",
    "special_tokens_map.json", "added_tokens.json", TRIM_FILE,
}
_SPECIAL_ROLES = ("unk_token", "bos_token", "eos_token", "pad_token", "mask_token")


class TrimError(ValueError):
    pass


def _is_japanese(ch: str) -> bool:
    o = ord(ch)
    return (
        0x3040 <= o <= 0x30FF  # hiragana, katakana
        or 0x31F0 <= o <= 0x31FF  # katakana phonetic extensions
        or 0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF  # kanji
        or 0x3000 <= o <= 0x303F  # Japanese punctuation
        or 0xFF00 <= o <= 0xFFEF  # full-width and half-width forms
    )


def _is_ascii(ch: str) -> bool:
    return ord(ch) < 0x80 or ch == "\u2581"  # SentencePiece's space


def japanese_token(token: str) -> bool:
    """Japanese script (+ ASCII) with a Japanese character, or one ASCII / Japanese character."""
    if not token or not all(_is_japanese(c) or _is_ascii(c) for c in token):
        return False
    return len(token) == 1 or any(_is_japanese(c) for c in token)


def _merge_pairs(model: Dict[str, Any]) -> List[Tuple[str, str]]:
    pairs = []
    for m in model.get("merges") or []:
        if isinstance(m, str):
            a, _, b = m.partition(" ")
        else:
            a, b = m
        pairs.append((a, b))
    return pairs


def _bpe_pieces(word: str, ranks: Dict[Tuple[str, str], int]) -> List[str]:
    """Every piece BPE builds from the characters of `word`, in order (the
    lowest-ranked adjacent pair merges first, leftmost on ties)."""
    symbols = list(word)
    built = list(symbols)
    while len(symbols) > 1:
        best = None
        for i in range(len(symbols) - 1):
            rank = ranks.get((symbols[i], symbols[i + 1]))
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, i)
        if best is None:
            break
        i = best[1]
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
        built.append(symbols[i])
    return built


def trim_vocabulary(
    base_dir: PathLike,
    out_dir: PathLike,
    texts: Iterable[str],
    *,
    keep_japanese: bool = True,
    keep_ascii_chars: int = 0,
) -> Dict[str, Any]:
    """Write `base_dir` with a trimmed vocabulary to `out_dir` (see the module
    docstring); returns a summary (also written to `out_dir/giellm-trim.json`)."""
    from tokenizers import Tokenizer

    base = Path(base_dir)
    tok_path = base / "tokenizer.json"
    if not tok_path.is_file():
        raise TrimError(f"{base}: no tokenizer.json (trimming needs a transformers fast tokenizer)")
    data = json.loads(tok_path.read_text(encoding="utf8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise TrimError(f"{tok_path}: trimming needs a BPE tokenizer with byte fallback, found {model.get('type')!r}")
    vocab: Dict[str, int] = model["vocab"]
    by_id: Dict[int, str] = {i: t for t, i in vocab.items()}
    added = {int(t["id"]): t for t in data.get("added_tokens") or []}

    original = Tokenizer.from_file(str(tok_path))
    texts = [t for t in texts if t]
    if not texts:
        raise TrimError("no texts to keep the tokens of: give the training data")
    seen: Set[int] = set()
    originals: List[List[int]] = []
    for text in texts:
        ids = original.encode(text, add_special_tokens=False).ids
        originals.append(ids)
        seen.update(ids)

    keep: Set[int] = set(seen)
    tok_cfg_path = base / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text(encoding="utf8")) if tok_cfg_path.is_file() else {}
    for role in _SPECIAL_ROLES:
        name = tok_cfg.get(role)
        if isinstance(name, dict):
            name = name.get("content")
        if isinstance(name, str):
            tid = vocab.get(name, next((i for i, t in added.items() if t["content"] == name), None))
            if tid is not None:
                keep.add(int(tid))
    keep.update(vocab[f"<0x{b:02X}>"] for b in range(256) if f"<0x{b:02X}>" in vocab)
    if "\u2581" in vocab:  # SentencePiece's space: as bytes it would decode as "▁", not " "
        keep.add(vocab["\u2581"])
    if keep_japanese:
        keep.update(i for t, i in vocab.items() if i not in added and japanese_token(t))
    if keep_ascii_chars > 0:
        keep.update(
            i for t, i in vocab.items()
            if i not in added and 0 < len(t) <= keep_ascii_chars and all(_is_ascii(c) for c in t)
        )

    # Closure under BPE: the pieces each kept token is built from.
    pairs = _merge_pairs(model)
    ranks = {pair: r for r, pair in enumerate(pairs)}
    for tid in list(keep):
        token = by_id.get(tid)
        if token is None or tid in added or len(token) < 2:
            continue
        keep.update(vocab[p] for p in _bpe_pieces(token, ranks) if p in vocab)

    # Tokens past the embedding matrix (transformers' GGUF reader may add
    # special tokens the GGUF lacks) were never usable by the model: dropped.
    rows = _embedding_rows(base)
    kept = sorted(i for i in keep if i < rows)
    new_id = {old: new for new, old in enumerate(kept)}
    with atomic_dir(Path(out_dir)) as tmp:
        _write_tokenizer_json(data, pairs, new_id, by_id, tmp / "tokenizer.json")
        _write_sentencepiece(base, new_id, by_id, tmp)
        _write_tokenizer_config(tok_cfg, new_id, tmp)
        for name in ("config.json", "generation_config.json"):
            if (base / name).is_file():
                _write_config(base / name, new_id, len(kept), tmp / name)
        _write_weights(base, kept, tmp)
        for entry in base.iterdir():
            if entry.name not in _REWRITTEN and not entry.name.startswith("."):
                (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)

        trimmed = Tokenizer.from_file(str(tmp / "tokenizer.json"))
        for text, ids in zip(texts, originals):
            got = trimmed.encode(text, add_special_tokens=False).ids
            want = [new_id[i] for i in ids]
            if got != want:
                raise TrimError(
                    f"the trimmed tokenizer splits a kept text differently (a bug): {text[:60]!r}: "
                    f"{trimmed.decode(got)!r} vs {original.decode(ids)!r}"
                )
        summary = {
            "source": str(base),
            "vocab_before": rows,
            "vocab_after": len(kept),
            "from_texts": len(seen),
            "texts": len(texts),
            "keep_japanese": keep_japanese,
            "keep_ascii_chars": keep_ascii_chars,
            # original id of each new id, for mapping ids or checking a model's origin
            "kept_ids": kept,
        }
        atomic_write_json(tmp / TRIM_FILE, summary)
    return {k: v for k, v in summary.items() if k != "kept_ids"}


def _remap_ids(node: Any, new_id: Dict[int, int]) -> Any:
    """Ids inside a post-processor template (`{"ids": [...]}`), renumbered."""
    if isinstance(node, dict):
        return {k: ([new_id[i] for i in v if i in new_id] if k == "ids" else _remap_ids(v, new_id)) for k, v in node.items()}
    if isinstance(node, list):
        return [_remap_ids(v, new_id) for v in node]
    return node


def _write_tokenizer_json(
    data: Dict[str, Any], pairs: Sequence[Tuple[str, str]], new_id: Dict[int, int], by_id: Dict[int, str], path: Path,
) -> None:
    model = dict(data["model"])
    vocab = {by_id[old]: new for old, new in new_id.items() if old in by_id}
    model["vocab"] = vocab
    list_form = bool(model.get("merges")) and not isinstance(model["merges"][0], str)
    merges = [(a, b) for a, b in pairs if a in vocab and b in vocab and a + b in vocab]
    model["merges"] = [[a, b] for a, b in merges] if list_form else [f"{a} {b}" for a, b in merges]
    out = dict(data)
    out["model"] = model
    out["added_tokens"] = [
        dict(t, id=new_id[int(t["id"])]) for t in data.get("added_tokens") or [] if int(t["id"]) in new_id
    ]
    if out.get("post_processor"):
        out["post_processor"] = _remap_ids(out["post_processor"], new_id)
    path.write_text(json.dumps(out, ensure_ascii=False), encoding="utf8")


def _write_sentencepiece(base: Path, new_id: Dict[int, int], by_id: Dict[int, str], out: Path) -> None:
    """The trimmed `tokenizer.model` (what llama.cpp's converter reads), if the base has one."""
    src = base / "tokenizer.model"
    if not src.is_file():
        return
    from sentencepiece import sentencepiece_model_pb2 as spm_pb

    proto = spm_pb.ModelProto()
    proto.ParseFromString(src.read_bytes())
    pieces = list(proto.pieces)
    for old, piece in enumerate(pieces):
        # Gemma's whitespace-run pieces are spelt with spaces here, with "▁" there.
        if old in by_id and by_id[old] not in (piece.piece, piece.piece.replace(" ", "\u2581")):
            raise TrimError(
                f"{src}: piece {old} is {piece.piece!r} but tokenizer.json says {by_id[old]!r}; "
                "the two tokenizer files disagree"
            )
    del proto.pieces[:]
    for old in sorted(new_id):
        if old < len(pieces):
            proto.pieces.add().CopyFrom(pieces[old])
    spec = proto.trainer_spec
    spec.vocab_size = len(proto.pieces)
    for name in ("unk_id", "bos_id", "eos_id", "pad_id"):
        value = getattr(spec, name)
        if value >= 0:
            setattr(spec, name, new_id.get(value, -1))
    (out / "tokenizer.model").write_bytes(proto.SerializeToString())


def _write_tokenizer_config(cfg: Dict[str, Any], new_id: Dict[int, int], out: Path) -> None:
    if not cfg:
        return
    cfg = dict(cfg)
    decoder = cfg.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        cfg["added_tokens_decoder"] = {str(new_id[int(k)]): v for k, v in decoder.items() if int(k) in new_id}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n", encoding="utf8")


def _write_config(path: Path, new_id: Dict[int, int], n_vocab: int, out: Path) -> None:
    cfg = json.loads(path.read_text(encoding="utf8"))

    def remap(value: Any) -> Any:
        if isinstance(value, list):
            return [new_id[v] for v in value if v in new_id]
        return new_id.get(value) if isinstance(value, int) else value

    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key in cfg:
            cfg[key] = remap(cfg[key])
    if "vocab_size" in cfg:
        cfg["vocab_size"] = n_vocab
    out.write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n", encoding="utf8")


_EMBEDDING_NAMES = ("embed_tokens.weight", "lm_head.weight", "wte.weight")


def _embedding_rows(base: Path) -> int:
    """Rows of the model's input embedding matrix (its vocabulary size)."""
    from safetensors import safe_open

    for f in sorted(base.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                if name.endswith(_EMBEDDING_NAMES[0]) or name.endswith(_EMBEDDING_NAMES[2]):
                    return int(st.get_slice(name).get_shape()[0])
    raise TrimError(f"{base}: no safetensors file with an input embedding matrix (embed_tokens.weight)")


def _write_weights(base: Path, kept: Sequence[int], out: Path) -> None:
    """Every safetensors file, with the rows of vocabulary-sized matrices
    (input embeddings, an untied output head) sliced to the kept ids."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    files = sorted(base.glob("*.safetensors"))
    if not files:
        raise TrimError(f"{base}: no safetensors weights")
    index = torch.tensor(kept, dtype=torch.long)
    sliced = 0
    for f in files:
        tensors = {}
        with safe_open(str(f), framework="pt") as st:
            metadata = st.metadata() or {}
            for name in st.keys():
                t = st.get_tensor(name)
                if name.endswith(_EMBEDDING_NAMES) and t.shape[0] >= len(kept):
                    t = t.index_select(0, index).contiguous()
                    sliced += 1
                tensors[name] = t
        save_file(tensors, str(out / f.name), metadata={**metadata, "format": "pt"})
    if (base / "model.safetensors.index.json").is_file():
        shutil.copy2(base / "model.safetensors.index.json", out / "model.safetensors.index.json")
    if not sliced:
        raise TrimError(f"{base}: no embedding matrix found to trim")


def training_texts(paths: Sequence[PathLike]) -> List[str]:
    """The inputs and outputs of the records in JSONL training files."""
    from .data import read_records

    texts: List[str] = []
    for p in paths:
        for rec in read_records(p):
            texts.extend((rec["input"], rec["output"]))
    return texts


__all__ = ["trim_vocabulary", "training_texts", "japanese_token", "TrimError", "TRIM_FILE"]
