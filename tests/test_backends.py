"""Backends: transformers vs llama.cpp parity, batching, errors, lazy imports.

Uses the session-scoped tiny model fixtures from conftest.py (random weights,
built offline; converted to an f32 GGUF with llama.cpp's own converter).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent

PROMPTS = [
    "松友美佐紀は、日本のバドミントン選手。<社会><文芸><学問><技術><自然>Named Entity Recognition",
    "高橋礼華は、奈良県出身のバドミントン選手である。<社会><文芸><学問><技術><自然>Relation Extraction",
    "人工知能の技術は急速に進歩している。<社会><文芸><学問><技術><自然>Text Classification",
    "東京は日本の首都",
    "猫",
    "富士山は静岡県と山梨県にまたがる活火山である。",
    "未知の漢字𠮷と English words 123",
    "<社会>Named Entity Recognition:人名;",
]


def _run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        timeout=timeout,
    )


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The tiny model gains nothing from threads, and spinning OpenMP threads
    make it very slow when other processes load the (2-core) machine."""
    torch = pytest.importorskip("torch")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def hf_backend(tiny_model_dir):
    from spacy_giellm.backends.hf import make_hf_backend

    return make_hf_backend(model=str(tiny_model_dir), device="cpu", max_new_tokens=16, batch_size=4).load()


@pytest.fixture(scope="module")
def gguf_backend(tiny_gguf):
    from spacy_giellm.backends.llamacpp import make_llamacpp_backend

    backend = make_llamacpp_backend(model_path=str(tiny_gguf), n_ctx=256, max_new_tokens=16, n_threads=1).load()
    yield backend
    backend.close()


# ------------------------------------------------------------------ tiny model


def test_tiny_tokenizer_reloads_and_round_trips(tiny_model_dir, tiny_texts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for text in tiny_texts[:10] + tiny_texts[-4:] + ["未知の漢字𠮷と English words 123"]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
    # format markers are single tokens, and decode keeps them
    ids = tok("<社会>Named Entity Recognition:人名;松友美佐紀", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids[:3]) == ["<社会>", "Named Entity Recognition", ":人名;"]
    assert tok.decode(ids, skip_special_tokens=True) == "<社会>Named Entity Recognition:人名;松友美佐紀"
    # no dummy prefix: a word tokenizes the same at the start as after a marker
    alone = tok("松友美佐紀", add_special_tokens=False)["input_ids"]
    assert ids[3:] == alone
    cfg = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    assert cfg["vocab_size"] == len(tok)


def test_gguf_metadata(tiny_gguf, tiny_model_dir):
    from spacy_giellm.backends.gguf_check import validate_gguf

    meta = validate_gguf(tiny_gguf)
    cfg = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    assert meta["architecture"] == "llama"
    assert meta["n_vocab"] == cfg["vocab_size"]
    assert meta["n_embd"] == cfg["hidden_size"]
    assert meta["tokenizer_model"] == "llama"
    assert meta["add_space_prefix"] is False
    assert (meta["bos_token_id"], meta["eos_token_id"]) == (cfg["bos_token_id"], cfg["eos_token_id"])


# ------------------------------------------------------------------ parity


def test_hf_and_gguf_tokenize_prompts_identically(hf_backend, gguf_backend):
    for prompt in PROMPTS:
        assert gguf_backend.encode_prompt(prompt) == hf_backend.encode_prompt(prompt), prompt


def test_hf_and_gguf_greedy_outputs_identical(hf_backend, gguf_backend):
    hf_ids = hf_backend.generate_ids(PROMPTS)
    gg_ids = gguf_backend.generate_ids(PROMPTS)
    assert gg_ids == hf_ids
    assert any(len(ids) == 16 for ids in hf_ids)  # not all stopping at EOS immediately
    hf_text = hf_backend.generate(PROMPTS)
    gg_text = gguf_backend.generate(PROMPTS)
    assert gg_text == hf_text
    assert all(isinstance(t, str) for t in hf_text) and any(hf_text)
    # decode of the same ids agrees too (byte-fallback runs, markers, specials)
    for ids in hf_ids:
        assert gguf_backend.decode(ids) == hf_backend.decode(ids)


def test_decode_drops_specials_and_keeps_markers(hf_backend, gguf_backend):
    tok = hf_backend.tokenizer
    marker_ids = tok("<社会>:人名;日本", add_special_tokens=False)["input_ids"]
    byte_ids = tok.convert_tokens_to_ids(["<0xE6>", "<0x9C>"])  # an incomplete UTF-8 sequence
    ids = [tok.bos_token_id] + marker_ids + [tok.pad_token_id, tok.unk_token_id] + byte_ids + marker_ids
    expected = "<社会>:人名;日本\ufffd\ufffd<社会>:人名;日本"
    assert hf_backend.decode(ids) == expected
    assert gguf_backend.decode(ids) == expected


def test_hf_batched_equals_one_at_a_time(hf_backend):
    assert hf_backend.batch_size == 4
    batched = hf_backend.generate_ids(PROMPTS)  # two left-padded batches of 4
    single = []
    with hf_backend.configured(batch_size=1):
        for prompt in PROMPTS:
            single.extend(hf_backend.generate_ids([prompt]))
    assert hf_backend.batch_size == 4  # the old settings back
    assert batched == single
    assert hf_backend.generate([]) == []


def test_backends_satisfy_protocol(hf_backend, gguf_backend):
    from spacy_giellm.backends.base import Backend

    assert isinstance(hf_backend, Backend)
    assert isinstance(gguf_backend, Backend)
    assert hf_backend.count_tokens("猫") == len(hf_backend.encode_prompt("猫"))
    assert gguf_backend.count_tokens("猫") == hf_backend.count_tokens("猫")


# ------------------------------------------------------------------ errors


def test_hf_missing_local_path_names_path(tmp_path):
    from spacy_giellm.backends.hf import make_hf_backend

    missing = tmp_path / "no-such-model"
    backend = make_hf_backend(model=str(missing))  # lazy: no error yet
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        backend.generate(["猫"])


def test_hf_unreachable_hub_id_names_id(monkeypatch):
    import huggingface_hub.constants

    from spacy_giellm.backends.hf import make_hf_backend

    # Offline mode makes "unreachable" immediate instead of retrying the network.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    backend = make_hf_backend(model="giellm-test-org/definitely-not-a-model")
    with pytest.raises(OSError, match="giellm-test-org/definitely-not-a-model") as info:
        backend.load()
    assert isinstance(info.value.__cause__, OSError)


def test_hf_adapter_errors(tiny_model_dir, tmp_path):
    peft = pytest.importorskip("peft")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from spacy_giellm.backends.hf import make_hf_backend

    with pytest.raises(FileNotFoundError, match="no-adapter"):
        make_hf_backend(model=str(tiny_model_dir), adapter=str(tmp_path / "no-adapter")).load()

    # A LoRA trained on a different base (hidden size 32 instead of 64).
    torch.manual_seed(0)
    cfg = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    other = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=cfg["vocab_size"], hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        )
    )
    lora = peft.get_peft_model(other, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    wrong = tmp_path / "wrong-adapter"
    lora.save_pretrained(str(wrong))
    backend = make_hf_backend(model=str(tiny_model_dir), adapter=str(wrong))
    with pytest.raises(ValueError, match="wrong-adapter"):
        backend.load()


def test_hf_adapter_merge_matches_unmerged(tiny_model_dir, tmp_path):
    peft = pytest.importorskip("peft")
    import torch
    from transformers import AutoModelForCausalLM

    from spacy_giellm.backends.hf import make_hf_backend

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    lora = peft.get_peft_model(
        base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    with torch.no_grad():  # make the adapter matter
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    good = tmp_path / "good-adapter"
    lora.save_pretrained(str(good))
    kw = dict(model=str(tiny_model_dir), adapter=str(good), device="cpu", max_new_tokens=8)
    merged = make_hf_backend(merge_adapter=True, **kw)
    unmerged = make_hf_backend(merge_adapter=False, **kw)
    assert merged.generate_ids(PROMPTS[:3]) == unmerged.generate_ids(PROMPTS[:3])
    assert not isinstance(merged.model, peft.PeftModel)
    assert isinstance(unmerged.model, peft.PeftModel)


def _write_gguf_with_bad_vocab(path: Path, n_tokens: int = 10, n_rows: int = 12, n_embd: int = 8) -> None:
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("bad-vocab")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"tok{i}".encode() for i in range(n_tokens)])
    w.add_token_scores([0.0] * n_tokens)
    w.add_token_types([1] * n_tokens)
    w.add_tensor("token_embd.weight", np.zeros((n_rows, n_embd), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones((n_embd,), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def bad_ggufs(tmp_path_factory, tiny_gguf):
    d = tmp_path_factory.mktemp("bad-gguf")
    not_gguf = d / "not-a-model.gguf"
    not_gguf.write_bytes(b"this is not a GGUF file\n" * 10)
    truncated = d / "truncated.gguf"
    data = Path(tiny_gguf).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    header_only = d / "header-only.gguf"
    header_only.write_bytes(data[:20])
    bad_vocab = d / "bad-vocab.gguf"
    _write_gguf_with_bad_vocab(bad_vocab)
    return {
        "missing": d / "missing.gguf",
        "not_gguf": not_gguf,
        "truncated": truncated,
        "header_only": header_only,
        "bad_vocab": bad_vocab,
    }


def test_validate_gguf_errors_name_the_path(bad_ggufs):
    from spacy_giellm.backends.gguf_check import validate_gguf

    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        validate_gguf(bad_ggufs["missing"])
    with pytest.raises(ValueError, match="not-a-model.gguf.*not a GGUF"):
        validate_gguf(bad_ggufs["not_gguf"])
    with pytest.raises(ValueError, match="truncated.gguf"):
        validate_gguf(bad_ggufs["truncated"])
    with pytest.raises(ValueError, match="header-only.gguf"):
        validate_gguf(bad_ggufs["header_only"])
    with pytest.raises(ValueError, match=r"bad-vocab.gguf.*10 tokens.*12 rows"):
        validate_gguf(bad_ggufs["bad_vocab"])


def test_llamacpp_backend_errors_leave_interpreter_alive(bad_ggufs):
    """Loading each bad file through the backend raises; the process exits normally."""
    paths = {k: str(v) for k, v in bad_ggufs.items()}
    proc = _run_python(
        f"""
        import json
        from spacy_giellm.backends.llamacpp import make_llamacpp_backend
        results = {{}}
        for name, path in {paths!r}.items():
            backend = make_llamacpp_backend(model_path=path)
            try:
                backend.generate(["猫"])
                results[name] = ["no error", ""]
            except Exception as e:
                results[name] = [type(e).__name__, str(e)]
        print("RESULTS " + json.dumps(results))
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULTS ")][-1]
    results = json.loads(line[len("RESULTS ") :])
    assert results["missing"][0] == "FileNotFoundError"
    for name in ("not_gguf", "truncated", "header_only", "bad_vocab"):
        assert results[name][0] == "ValueError", (name, results[name])
    for name, (_, msg) in results.items():
        assert paths[name] in msg, (name, msg)
    assert "10" in results["bad_vocab"][1] and "12" in results["bad_vocab"][1]


# ------------------------------------------------------------------ lazy import


@pytest.fixture(scope="module")
def import_probe(tmp_path_factory):
    """One subprocess: registry lookups and backend construction, then which modules got imported."""
    d = tmp_path_factory.mktemp("probe")
    proc = _run_python(
        f"""
        import json, sys
        import spacy  # thinc itself imports torch when it is installed
        before = set(sys.modules)
        import spacy_giellm.registry
        out = {{}}
        try:  # through the entry points declared in setup.cfg only
            spacy.registry.giellm_backends.get("giellm.HF.v1")
            out["entry_points"] = "ok"
        except Exception as e:
            out["entry_points"] = f"{{type(e).__name__}}: {{e}}"
        import spacy_giellm.backends.hf, spacy_giellm.backends.llamacpp
        hf = spacy.registry.giellm_backends.get("giellm.HF.v1")(model={str(d / "m")!r})
        ll = spacy.registry.giellm_backends.get("giellm.LlamaCpp.v1")(model_path={str(d / "m.gguf")!r})
        hf2 = spacy_giellm.backends.hf.make_hf_backend(model="org/model", adapter="x", device="cuda")
        out["types"] = [type(hf).__name__, type(ll).__name__]
        out["new_heavy"] = sorted(
            m for m in ("torch", "transformers", "peft", "llama_cpp", "gguf", "sentencepiece", "numpy")
            if m in set(sys.modules) - before
        )
        print("PROBE " + json.dumps(out))
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("PROBE ")][-1]
    return json.loads(line[len("PROBE ") :])


def test_constructing_backends_imports_no_heavy_modules(import_probe):
    assert import_probe["types"] == ["HFBackend", "LlamaCppBackend"]
    heavy = [m for m in import_probe["new_heavy"] if m != "numpy"]
    assert heavy == [], f"importing/constructing backends imported {heavy}"


def test_backends_found_through_entry_points(import_probe):
    # registry.create("giellm_backends", entry_points=True) reads the
    # 'thinc_giellm_backends' group that setup.cfg declares.
    assert import_probe["entry_points"] == "ok"


# ------------------------------------------------------------------ conversion


def test_converter_source_restores_added_tokens(tiny_model_dir, tmp_path):
    """A transformers v5 re-save drops added_tokens_decoder; the converter then gets a patched mirror."""
    import shutil

    from spacy_giellm.training.gguf_export import _converter_source

    src = tmp_path / "resaved"
    shutil.copytree(tiny_model_dir, src)
    cfg = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    del cfg["added_tokens_decoder"]
    (src / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    with _converter_source(src) as mirror:
        assert mirror != src and mirror.name == src.name
        patched = json.loads((mirror / "tokenizer_config.json").read_text(encoding="utf-8"))
        by_content = {v["content"]: v for v in patched["added_tokens_decoder"].values()}
        assert by_content["<社会>"]["special"] is False
        assert by_content["</s>"]["special"] is True
        assert (mirror / "model.safetensors").resolve() == (src / "model.safetensors").resolve()
    assert not mirror.exists()
    with _converter_source(Path(tiny_model_dir)) as same:  # already complete: used as is
        assert same == Path(tiny_model_dir)


def test_converter_fetched_once_from_the_sdist_without_building_its_build_deps(tmp_path, monkeypatch):
    """The converter comes out of llama-cpp-python's sdist, fetched by pip once and cached.

    pip must be told `--no-binary llama-cpp-python`, not `:all:`: the latter also
    builds cmake and ninja from source to prepare the sdist's metadata (278 s
    against 5 s on a 2-core machine). pip is faked here: no network in tests.
    """
    import io
    import tarfile

    from spacy_giellm.training import llama_cpp_converter as lcc

    monkeypatch.setenv("SPACY_GIELLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SPACY_GIELLM_LLAMA_CPP_DIR", raising=False)
    monkeypatch.setattr(lcc, "llama_cpp_version", lambda: "9.9.9")
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        dest.mkdir(parents=True)
        with tarfile.open(dest / "llama_cpp_python-9.9.9.tar.gz", "w:gz") as tar:
            for name, body in {
                "vendor/llama.cpp/convert_hf_to_gguf.py": b"# converter\n",
                "vendor/llama.cpp/gguf-py/gguf/__init__.py": b"",
                "vendor/llama.cpp/src/llama.cpp": b"// C++ source, not needed\n",
            }.items():
                info = tarfile.TarInfo(f"llama_cpp_python-9.9.9/{name}")
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(lcc.subprocess, "run", fake_pip)
    found = lcc.find_converter()
    assert found.read_text() == "# converter\n"
    assert found.is_relative_to(tmp_path / "cache" / "llama-cpp-python-9.9.9")
    assert (found.parent / "gguf-py" / "gguf" / "__init__.py").is_file()
    assert not (found.parent / "src").exists()
    (cmd,) = calls
    assert cmd[cmd.index("--no-binary") + 1] == "llama-cpp-python"
    assert ":all:" not in cmd and "llama-cpp-python==9.9.9" in cmd
    assert lcc.find_converter() == found and len(calls) == 1  # cached: pip not run again


# ------------------------------------------------------------------ quantize


def test_quantize_k_quant_falls_back_with_warning(tiny_gguf, tmp_path):
    from spacy_giellm.backends.gguf_check import validate_gguf
    from spacy_giellm.training.gguf_export import QuantizationFallbackWarning, quantize_gguf

    out = tmp_path / "tiny-q4km.gguf"
    with pytest.warns(QuantizationFallbackWarning, match="divisible by 256"):
        quantize_gguf(tiny_gguf, out, "Q4_K_M")
    meta = validate_gguf(out)
    assert meta["n_vocab"] == validate_gguf(tiny_gguf)["n_vocab"]
    assert not list(tmp_path.glob(".*.tmp"))

    from spacy_giellm.backends.llamacpp import make_llamacpp_backend

    backend = make_llamacpp_backend(model_path=str(out), n_ctx=128, max_new_tokens=4, n_threads=1)
    try:
        outputs = backend.generate(PROMPTS[:2])
    finally:
        backend.close()
    assert len(outputs) == 2
