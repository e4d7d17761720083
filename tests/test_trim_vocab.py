"""Vocabulary trimming: fewer head rows, the same model on the kept tokens,
one tokenizer for transformers and llama.cpp."""
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from spacy_giellm.training.trim_vocab import TRIM_FILE, TrimError, japanese_token, trim_vocabulary  # noqa: E402

# What the trimmed model is fine-tuned on (its tokens are kept) ...
KEPT_TEXTS = [
    "松友美佐紀は、日本のバドミントン選手。<社会><文芸><学問><技術><自然>Named Entity Recognition",
    "<社会>Named Entity Recognition:人名;松友美佐紀:地名;日本",
    "東京は日本の首都。Named Entity Recognition",
]
# ... and text it never saw, written with whatever tokens are left.
UNSEEN = "トヨタは日産と電池の共同開発で提携した。Relation Extraction Zq"


@pytest.fixture(scope="module")
def trimmed(tiny_gemma_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trimmed") / "model"
    summary = trim_vocabulary(tiny_gemma_dir, out, KEPT_TEXTS, keep_japanese=False, keep_ascii_chars=0)
    return out, summary


def test_the_head_shrinks_and_kept_texts_split_as_before(tiny_gemma_dir, trimmed):
    from transformers import AutoConfig, AutoTokenizer

    out, summary = trimmed
    before, after = AutoTokenizer.from_pretrained(str(tiny_gemma_dir)), AutoTokenizer.from_pretrained(str(out))
    kept = json.loads((out / TRIM_FILE).read_text())["kept_ids"]
    assert summary["vocab_before"] == len(before) and summary["vocab_after"] == len(after) == len(kept)
    assert 256 < len(after) < len(before) // 2
    assert AutoConfig.from_pretrained(str(out)).vocab_size == len(after)
    for text in KEPT_TEXTS:
        assert after(text)["input_ids"] == [kept.index(i) for i in before(text)["input_ids"]]
    for role in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert before.convert_ids_to_tokens(getattr(before, role)) == after.convert_ids_to_tokens(getattr(after, role))
    # Text with dropped tokens is still written (smaller pieces, bytes) and read back.
    ids = after(UNSEEN, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(before(UNSEEN, add_special_tokens=False)["input_ids"])
    assert after.decode(ids) == UNSEEN


def test_the_trimmed_model_is_the_original_on_the_kept_rows(tiny_gemma_dir, trimmed):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = trimmed
    kept = torch.tensor(json.loads((out / TRIM_FILE).read_text())["kept_ids"])
    before = AutoModelForCausalLM.from_pretrained(str(tiny_gemma_dir), dtype=torch.float32).eval()
    after = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert after.get_output_embeddings().weight.shape[0] == len(kept)
    ids_before = AutoTokenizer.from_pretrained(str(tiny_gemma_dir))(KEPT_TEXTS[0], return_tensors="pt")["input_ids"]
    ids_after = AutoTokenizer.from_pretrained(str(out))(KEPT_TEXTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        full = before(ids_before).logits[0]
        small = after(ids_after).logits[0]
    torch.testing.assert_close(small, full[:, kept], rtol=1e-5, atol=1e-5)


def test_llama_cpp_reads_the_trimmed_tokenizer_as_transformers_does(trimmed, tmp_path):
    pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    from spacy_giellm.backends.build import backend_config, make_backend
    from spacy_giellm.training.gguf_export import ConverterNotFoundError, convert_to_gguf

    out, _ = trimmed
    try:
        gguf = convert_to_gguf(out, tmp_path / "trimmed.gguf", outtype="f32")
    except ConverterNotFoundError as e:
        pytest.skip(f"llama.cpp converter unavailable: {e}")
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    tok = AutoTokenizer.from_pretrained(str(out))
    assert llm.n_vocab() == len(tok)
    for text in KEPT_TEXTS + [UNSEEN]:
        assert llm.tokenize(text.encode("utf8"), add_bos=True, special=True) == tok(text)["input_ids"], text
    # and the two runtimes generate the same ids from the trimmed model
    hf, cpp = (make_backend(backend_config(m, max_new_tokens=10)) for m in (out, gguf))
    assert hf.generate_ids(KEPT_TEXTS[::2]) == cpp.generate_ids(KEPT_TEXTS[::2])


def test_japanese_tokens():
    assert japanese_token("日本") and japanese_token("▁東京") and japanese_token("。") and japanese_token("a")
    assert not japanese_token("the") and not japanese_token("Привет") and not japanese_token("")


def test_cli_trims_from_training_data_and_says_what_is_wrong(tiny_gemma_dir, tmp_path):
    from typer.testing import CliRunner

    from spacy_giellm.cli import app

    data = tmp_path / "train.jsonl"
    data.write_text(
        "\n".join(json.dumps({"input": KEPT_TEXTS[0], "output": KEPT_TEXTS[1]}, ensure_ascii=False) for _ in range(2)),
        encoding="utf8",
    )
    out = tmp_path / "trimmed"
    result = CliRunner().invoke(app, ["trim-vocab", str(tiny_gemma_dir), str(out), "--data", str(data), "--data-only",
                                      "--keep-ascii", "0"])
    assert result.exit_code == 0, result.output
    n_data_only = json.loads(result.output)["vocab_after"]
    assert n_data_only == json.loads((out / TRIM_FILE).read_text())["vocab_after"]
    # --keep-ascii 2: every ASCII token of up to 2 characters too
    result = CliRunner().invoke(app, ["trim-vocab", str(tiny_gemma_dir), str(out), "--data", str(data), "--data-only",
                                      "--keep-ascii", "2"])
    assert result.exit_code == 0, result.output
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    before = json.loads((Path(tiny_gemma_dir) / "tokenizer.json").read_text())["model"]["vocab"]
    short_ascii = {t for t in before if len(t) <= 2 and all(ord(c) < 0x80 or c == "\u2581" for c in t)}
    assert short_ascii and short_ascii <= set(vocab) and len(vocab) > n_data_only

    no_tokenizer = tmp_path / "bare"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text("{}")
    result = CliRunner().invoke(app, ["trim-vocab", str(no_tokenizer), str(tmp_path / "x"), "--data", str(data)])
    assert result.exit_code != 0 and "no tokenizer.json" in result.output and str(no_tokenizer) in result.output
    with pytest.raises(TrimError, match="no texts"):
        trim_vocabulary(tiny_gemma_dir, tmp_path / "y", [])
