"""Build a tiny random-weight Llama (tokenizer + model) fully offline.

Used by the tests, the demo and the benchmarks: nothing is downloaded. The
tokenizer is a SentencePiece BPE model trained on the given texts and wrapped
as a transformers `LlamaTokenizer` (a `tokenizers`-backed tokenizer in
transformers v5); the model is a `LlamaForCausalLM` with seeded random
weights. Both are saved with `save_pretrained` (safetensors), and the
directory keeps `tokenizer.model` so that llama.cpp's converter sees the
SentencePiece vocabulary.

SentencePiece settings that matter for HF / llama.cpp agreement:

* `model_type="bpe"`: llama.cpp's SPM tokenizer merges by piece score, which
  is BPE; transformers builds a BPE model with merges ordered by piece id.
* `add_dummy_prefix=False` (and `add_prefix_space=False` on the HF side, which
  llama.cpp's converter copies into `tokenizer.ggml.add_space_prefix`):
  Japanese text without spaces then tokenizes the same at the start of an
  output as inside a prompt.
* `normalization_rule_name="identity"`, `remove_extra_whitespaces=False`: HF's
  Llama tokenizer has no normalizer and llama.cpp does not apply NFKC either.
* `byte_fallback=True`: characters outside the vocabulary become `<0x..>`
  byte pieces instead of `<unk>`.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

PathLike = Union[str, "os.PathLike[str]"]

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
SPM_MODEL_NAME = "tokenizer.model"


def _clean_texts(texts: Iterable[str]) -> List[str]:
    out = [t.strip("\n") for t in texts]
    out = [t for t in out if t.strip()]
    if not out:
        raise ValueError("train_sentencepiece needs at least one non-empty text")
    return out


def train_sentencepiece(
    texts: Iterable[str],
    out_dir: PathLike,
    vocab_size: int = 1000,
    user_symbols: Sequence[str] = (),
    *,
    character_coverage: float = 1.0,
    model_type: str = "bpe",
    model_name: str = SPM_MODEL_NAME,
) -> Path:
    """Train a SentencePiece model on `texts` and write it to `out_dir/model_name`.

    Ids: <unk>=0, <s>=1, </s>=2, <pad>=3, then `user_symbols` (format markers
    such as "<社会>" or ":人名;", kept as single pieces wherever they occur),
    then byte-fallback pieces and learned pieces. If the corpus is too small
    for `vocab_size`, the largest size SentencePiece accepts is used instead
    (`hard_vocab_limit=False`). Returns the path of the .model file.
    """
    import sentencepiece as spm

    texts = _clean_texts(texts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    symbols = list(dict.fromkeys(s for s in user_symbols if s))
    for s in symbols:
        if s in (UNK, BOS, EOS, PAD):
            raise ValueError(f"user symbol {s!r} clashes with a reserved special token")
    prefix = out / Path(model_name).stem
    try:
        _train_spm(spm, texts, prefix, vocab_size, model_type, character_coverage, symbols)
    except RuntimeError as e:
        m = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", str(e))
        if m:
            raise ValueError(
                f"vocab_size={vocab_size} is too small for these texts: SentencePiece needs at least "
                f"{m.group(2)} pieces (every character, the 256 byte pieces, the 4 specials and the "
                f"{len(symbols)} user symbols) before any merge"
            ) from e
        raise
    model_path = prefix.with_suffix(".model")
    if model_path.name != model_name:
        model_path = model_path.rename(out / model_name)
    vocab_file = prefix.with_suffix(".vocab")
    if vocab_file.exists():
        vocab_file.unlink()
    return model_path


def _train_spm(spm, texts, prefix, vocab_size, model_type, character_coverage, symbols) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        byte_fallback=True,
        character_coverage=character_coverage,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        user_defined_symbols=symbols,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=PAD_ID,
        unk_piece=UNK,
        bos_piece=BOS,
        eos_piece=EOS,
        pad_piece=PAD,
        hard_vocab_limit=False,
        max_sentence_length=1 << 16,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=2,
    )


def load_llama_tokenizer(spm_dir: PathLike):
    """Wrap a directory holding `tokenizer.model` as a transformers Llama tokenizer.

    transformers v5 no longer has a sentencepiece-backed "slow" Llama
    tokenizer: `LlamaTokenizer` is `tokenizers`-backed, and calling its
    constructor with only `vocab_file=` gives an empty 3-token vocabulary. The
    supported route is `from_pretrained` on a directory with `tokenizer.model`,
    which converts the SentencePiece proto (vocab, merges, user-defined pieces
    as added tokens). `legacy=False` + `add_prefix_space=False` give the
    Metaspace pre-tokenizer with `prepend_scheme="never"`, matching
    `add_dummy_prefix=False`.
    """
    from transformers import LlamaTokenizer

    tok = LlamaTokenizer.from_pretrained(
        str(spm_dir),
        legacy=False,
        add_prefix_space=False,
        add_bos_token=True,
        add_eos_token=False,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
    )
    # The conversion lists SentencePiece user-defined pieces (format markers)
    # as extra special tokens. They are added tokens with special=False, so
    # `decode(skip_special_tokens=True)` keeps them, but listing them in
    # `all_special_ids` would mislead other code; keep only the named ones.
    tok.extra_special_tokens = []
    return tok


def _check_tokenizer(tok, spm_path: Path, texts: Sequence[str]) -> None:
    """HF tokenization must equal SentencePiece's, and decode must round-trip."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    if len(tok) != sp.get_piece_size():
        raise RuntimeError(
            f"HF tokenizer has {len(tok)} tokens, SentencePiece model {spm_path} has {sp.get_piece_size()}"
        )
    ids = {"unk": tok.unk_token_id, "bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id}
    want = {"unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID, "pad": PAD_ID}
    if ids != want:
        raise RuntimeError(f"special token ids {ids} differ from the SentencePiece ids {want}")
    for text in texts:
        hf_ids = tok(text, add_special_tokens=False)["input_ids"]
        sp_ids = sp.encode(text)
        if hf_ids != sp_ids:
            raise RuntimeError(
                f"HF tokenizer and SentencePiece disagree on {text!r}: {hf_ids} vs {sp_ids}"
            )
        back = tok.decode(hf_ids, skip_special_tokens=True)
        if back != text:
            raise RuntimeError(f"tokenizer does not round-trip {text!r}: got {back!r}")


def build_tiny_llama(
    out_dir: PathLike,
    texts: Iterable[str],
    vocab_size: int = 1000,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    seed: int = 0,
    *,
    user_symbols: Sequence[str] = (),
    num_kv_heads: Optional[int] = None,
    init_std: float = 0.2,
    check_texts: Optional[Sequence[str]] = None,
) -> Path:
    """Train a tokenizer on `texts` and save a random-weight Llama next to it.

    `init_std` is the std of the normal init of all linear / embedding
    weights. It is much larger than Llama's 0.02 on purpose: with 0.02 a tiny
    random model has almost flat logits, so greedy decoding hits near-ties that
    float rounding resolves differently in transformers and llama.cpp. Returns
    `Path(out_dir)`, which `AutoTokenizer` / `AutoModelForCausalLM` and
    llama.cpp's `convert_hf_to_gguf.py` can all read.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    def make(n_vocab: int):
        return LlamaForCausalLM(LlamaConfig(
            **_shape(n_vocab, hidden_size, intermediate_size, num_layers, num_heads, max_position_embeddings, init_std),
            num_key_value_heads=num_kv_heads or num_heads,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            tie_word_embeddings=False,
        ))

    return _build_tiny(out_dir, texts, vocab_size, user_symbols, check_texts, make, seed, init_std)


def build_tiny_gemma3(
    out_dir: PathLike,
    texts: Iterable[str],
    vocab_size: int = 1000,
    hidden_size: int = 64,
    num_layers: int = 6,
    num_heads: int = 4,
    num_kv_heads: int = 1,
    head_dim: int = 16,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    seed: int = 0,
    *,
    user_symbols: Sequence[str] = (),
    init_std: float = 0.3,
    embed_std: float = 0.05,
    check_texts: Optional[Sequence[str]] = None,
) -> Path:
    """A random-weight Gemma 3 text model of Gemma 3 270M's architecture
    (tied embeddings, sliding-window + global layers, query-key norms, head
    size independent of the width), tiny: the offline stand-in for the
    pretrained base in tests. Same tokenizer as `build_tiny_llama`. Its
    embeddings get a smaller std than the other weights: Gemma scales them by
    sqrt(width) and ties the head to them, so at 0.2 a random model repeats
    one token forever; the other weights get a larger one (0.3), so that
    greedy decoding meets no near-ties that float rounding would resolve
    differently in transformers and llama.cpp (0.05 everywhere: 7 of 8
    prompts identical after a short LoRA run)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    # Every 6th layer global, the rest sliding-window, as in the real model
    # (and as llama.cpp and transformers' GGUF reader assume for gemma3).
    layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(num_layers)]

    def make(n_vocab: int):
        return Gemma3ForCausalLM(Gemma3TextConfig(
            **_shape(n_vocab, hidden_size, intermediate_size, num_layers, num_heads, max_position_embeddings, init_std),
            num_key_value_heads=num_kv_heads,
            head_dim=head_dim,
            query_pre_attn_scalar=head_dim,
            sliding_window=32,
            layer_types=layer_types,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
        ))

    return _build_tiny(out_dir, texts, vocab_size, user_symbols, check_texts, make, seed, init_std, embed_std)


def _shape(n_vocab, hidden, intermediate, layers, heads, max_positions, init_std) -> dict:
    """Config fields both tiny architectures share (special ids: the tokenizer's)."""
    return dict(
        vocab_size=n_vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=max_positions, initializer_range=init_std,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
    )


def _build_tiny(out_dir, texts, vocab_size, user_symbols, check_texts, make_model, seed, init_std, embed_std=None) -> Path:
    import torch

    texts = _clean_texts(texts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spm_path = train_sentencepiece(texts, out, vocab_size=vocab_size, user_symbols=user_symbols)
    tok = load_llama_tokenizer(out)
    _check_tokenizer(tok, spm_path, list(check_texts) if check_texts is not None else texts[:20])

    torch.manual_seed(seed)
    model = make_model(len(tok))
    # Re-initialise explicitly (seeded) rather than rely on the library's init
    # order, which changes between transformers versions. Norm weights: 1 for
    # Llama's x * w, 0 for Gemma's x * (1 + w).
    gemma_norms = model.config.model_type.startswith("gemma")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name.rsplit(".", 2)[-2]:
                p.fill_(0.0 if gemma_norms else 1.0)
            else:
                std = embed_std if (embed_std is not None and "embed_tokens" in name) else init_std
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    model.generation_config.bos_token_id = BOS_ID
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.do_sample = False
    model.eval()

    tok.save_pretrained(str(out))
    model.save_pretrained(str(out), safe_serialization=True)
    if not (out / SPM_MODEL_NAME).is_file():  # save_pretrained should have kept it
        raise RuntimeError(f"{out / SPM_MODEL_NAME} is missing after save_pretrained")
    _fix_tokenizer_config(out)
    return out


def _fix_tokenizer_config(out: Path) -> None:
    """Make the saved tokenizer_config.json explicit about what llama.cpp reads.

    llama.cpp's converter copies `add_prefix_space` into
    `tokenizer.ggml.add_space_prefix` (its SPM default is True, which would
    prepend "▁" to every prompt) and `add_bos_token` / `add_eos_token` into the
    GGUF. It takes token types from the SentencePiece model, where it does not
    recognise user-defined pieces (they would become NORMAL tokens that
    llama.cpp's tokenizer never produces, so "<社会>" would be split into
    "<", "社会", ">"); it only marks them USER_DEFINED through
    `added_tokens_decoder` in tokenizer_config.json, which transformers v5 no
    longer writes (added tokens live in tokenizer.json). So write it back.
    """
    from .gguf_export import added_tokens_decoder

    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    decoder = added_tokens_decoder(out)
    cfg.update(
        {
            "add_prefix_space": False,
            "legacy": False,
            "add_bos_token": True,
            "add_eos_token": False,
            "added_tokens_decoder": decoder,
        }
    )
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


__all__ = ["train_sentencepiece", "build_tiny_llama", "build_tiny_gemma3", "load_llama_tokenizer"]
