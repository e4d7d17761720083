"""llama.cpp's `convert_hf_to_gguf.py`, matching the installed llama.cpp.

Where it comes from (`find_converter`):

1. an explicit llama.cpp checkout (`llama_cpp_dir`, or the environment variable
   `SPACY_GIELLM_LLAMA_CPP_DIR`); a llama-cpp-python checkout works too
   (its `vendor/llama.cpp` is used);
2. a cached copy of the llama-cpp-python source distribution matching the
   installed llama_cpp version, under
   `~/.cache/spacy-giellm/llama-cpp-python-<version>/` (the cache root can be
   moved with `SPACY_GIELLM_CACHE_DIR`, else `$XDG_CACHE_HOME/spacy-giellm`);
3. otherwise it is fetched once with
   `pip download --no-deps --no-binary llama-cpp-python llama-cpp-python==<version>`
   and the conversion files are unpacked into that cache. `--no-binary` names
   the package alone: `:all:` would also make pip build the sdist's build
   dependencies (cmake, ninja, scikit-build-core) from source to prepare its
   metadata, which took 278 s on a 2-core machine against 5 s for this.

The converter matching the installed llama.cpp matters: GGUF metadata and
tensor layouts change between llama.cpp versions.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

CONVERTER = "convert_hf_to_gguf.py"
# Parts of vendor/llama.cpp the converters need (the rest is C/C++ sources).
_KEEP_TOP_FILES = (CONVERTER, "convert_lora_to_gguf.py", "LICENSE", "requirements.txt")
_KEEP_DIRS = ("conversion/", "gguf-py/", "models/templates/", "requirements/")

__all__ = ["find_converter", "llama_cpp_version", "cache_dir", "ConverterNotFoundError", "CONVERTER"]


class ConverterNotFoundError(FileNotFoundError):
    """llama.cpp's convert_hf_to_gguf.py could not be found or fetched."""



def llama_cpp_version() -> str:
    """Version of the installed llama-cpp-python (= llama_cpp.__version__)."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("llama_cpp_python")
        except PackageNotFoundError:
            pass
    except ImportError:  # pragma: no cover
        pass
    try:
        import llama_cpp
    except ImportError as e:
        raise ConverterNotFoundError(
            "llama-cpp-python is not installed, so the matching llama.cpp converter cannot be "
            "located; install it (pip install 'spacy-giellm[llamacpp]') or pass llama_cpp_dir="
        ) from e
    return str(llama_cpp.__version__)


def cache_dir() -> Path:
    """Root of spacy-giellm's cache (SPACY_GIELLM_CACHE_DIR, else XDG cache)."""
    env = os.environ.get("SPACY_GIELLM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spacy-giellm"


def _converter_in(root: Path) -> Optional[Path]:
    for cand in (root / CONVERTER, root / "vendor" / "llama.cpp" / CONVERTER):
        if cand.is_file():
            return cand
    return None


def find_converter(llama_cpp_dir: Optional[PathLike] = None) -> Path:
    """Path of llama.cpp's convert_hf_to_gguf.py; see the module docstring for the search order."""
    explicit = llama_cpp_dir if llama_cpp_dir is not None else os.environ.get("SPACY_GIELLM_LLAMA_CPP_DIR")
    if explicit:
        root = Path(explicit).expanduser()
        found = _converter_in(root)
        if found is None:
            raise ConverterNotFoundError(
                f"no {CONVERTER} in the llama.cpp directory {str(root)!r} "
                f"(looked in it and in its vendor/llama.cpp)"
            )
        return found

    ver = llama_cpp_version()
    target = cache_dir() / f"llama-cpp-python-{ver}"
    found = _converter_in(target)
    if found is not None:
        return found
    _fetch_sdist(ver, target)
    found = _converter_in(target)
    if found is None:  # pragma: no cover - sdist layout changed
        raise ConverterNotFoundError(
            f"the llama-cpp-python {ver} source distribution has no vendor/llama.cpp/{CONVERTER}"
        )
    return found


def _fetch_sdist(ver: str, target: Path) -> None:
    """pip-download the llama-cpp-python sdist and unpack the converter files into `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=str(target.parent)) as tmp:
        dl = Path(tmp) / "dl"
        cmd = [
            sys.executable, "-m", "pip", "download",
            "--no-deps", "--no-binary", "llama-cpp-python",
            "--disable-pip-version-check", "--quiet",
            "-d", str(dl),
            f"llama-cpp-python=={ver}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = sorted(dl.glob("llama_cpp_python-*.tar.gz")) + sorted(dl.glob("llama-cpp-python-*.tar.gz"))
        if not archives:
            tail = (proc.stderr or proc.stdout or "").strip()[-2000:]
            raise ConverterNotFoundError(
                f"could not download the llama-cpp-python {ver} source distribution to get "
                f"llama.cpp's {CONVERTER} (command: {' '.join(cmd)}; exit {proc.returncode}): {tail}\n"
                f"Alternatively pass llama_cpp_dir= a llama.cpp checkout of a matching version."
            )
        unpacked = Path(tmp) / "unpacked"
        unpacked.mkdir()
        staging = _extract_converter_files(archives[0], unpacked)
        if _converter_in(staging) is None:
            raise ConverterNotFoundError(
                f"{archives[0].name} has no vendor/llama.cpp/{CONVERTER}"
            )
        try:
            os.replace(staging, target)
        except OSError:
            # Another process filled the cache first; use theirs.
            if _converter_in(target) is None:
                raise


def _extract_converter_files(archive: Path, dest: Path) -> Path:
    """Unpack only the converter files of vendor/llama.cpp; returns the sdist's top directory."""
    with tarfile.open(archive, "r:gz") as tar:
        members = []
        tops = set()
        for m in tar.getmembers():
            parts = m.name.split("/", 1)
            if len(parts) != 2 or not parts[1].startswith("vendor/llama.cpp/"):
                continue
            if not (m.isfile() or m.isdir()):
                continue
            rel = parts[1][len("vendor/llama.cpp/"):]
            if rel in _KEEP_TOP_FILES or any(rel.startswith(d) for d in _KEEP_DIRS):
                members.append(m)
                tops.add(parts[0])
        if len(tops) != 1:
            raise ConverterNotFoundError(f"unexpected layout of {archive.name}: top directories {sorted(tops)}")
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=members, **kwargs)
    return dest / tops.pop()
