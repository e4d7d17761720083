"""End to end, as a user ships a trained model: `python -m spacy_giellm
package`, `python -m spacy package --build wheel`, the wheel installed into a
fresh venv, the original GGUF and pipeline deleted, and `spacy.load(name)` in
a new process from another directory generates what the pipeline generated
before packaging.

The fresh venv gets its dependencies (spaCy, llama-cpp-python, spacy-giellm)
from the environment running the tests through a .pth file, without copying
them; it sees neither the pipeline directory nor the GGUF, and the wheel is
installed with --no-deps --no-index (no network).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import spacy

import spacy_giellm

pytestmark = pytest.mark.slow

TEXTS = ["松友美佐紀は、日本のバドミントン選手。", "トヨタは東京に本社を置く。"]
NAME = "giellm_wheeltest"  # the package: xx_giellm_wheeltest

# Run in the fresh venv: the installed package's outputs and where its model is.
LOAD_AND_RUN = """
import json, sys
import spacy
nlp = spacy.load(sys.argv[1])
docs = [nlp.make_doc(t) for t in json.loads(sys.argv[2])]
pipes = [(n, p) for n, p in nlp.pipeline if n.startswith("giellm")]
print(json.dumps({
    "outputs": {n: [[part.output for part in p.parts] for p in pipe.predict(docs)] for n, pipe in pipes},
    "models": sorted({pipe.backend.model_path for _, pipe in pipes}),
    "package": spacy.util.get_package_path(sys.argv[1]).as_posix(),
    "spacy_giellm": __import__("spacy_giellm").__file__,
}))
"""


def outputs(nlp):
    docs = [nlp.make_doc(t) for t in TEXTS]
    return {
        name: [[part.output for part in p.parts] for p in pipe.predict(docs)]
        for name, pipe in nlp.pipeline if name.startswith("giellm")
    }


def sh(*args, **kwargs):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def fresh_venv(path: Path) -> Path:
    """A venv whose site-packages sees this environment's packages (and the
    spacy_giellm under test first), nothing copied. Its python."""
    sh(sys.executable, "-m", "venv", "--without-pip", path)
    python = path / "bin" / "python"
    site = Path(sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    source_root = Path(spacy_giellm.__file__).resolve().parent.parent
    (site / "giellm_test_deps.pth").write_text(
        f"{source_root}\nimport site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n", encoding="utf8"
    )
    return python


def test_wheel_installs_and_annotates_offline_elsewhere(package_inputs, tmp_path):
    pytest.importorskip("build")
    work = tmp_path / "work"  # everything here is deleted before the installed package runs
    work.mkdir()
    shutil.copyfile(package_inputs["gguf"], work / "model.gguf")
    env = {**os.environ, "PYTHONPATH": str(Path(spacy_giellm.__file__).resolve().parent.parent)}
    sh(sys.executable, "-m", "spacy_giellm", "package", "model.gguf", "pipeline", "--data", package_inputs["data"],
       "--base", package_inputs["base"], "--name", NAME, "--version", "1.2.3", "--license", "MIT", cwd=work, env=env)
    before = outputs(spacy.load(work / "pipeline"))
    assert len(before) == 2 and any(o for rows in before.values() for doc in rows for o in doc)

    (work / "dist").mkdir()
    sh(sys.executable, "-m", "spacy", "package", "pipeline", "dist", "--build", "wheel", cwd=work, env=env)
    wheels = list((work / "dist").rglob("*.whl"))
    assert [w.name for w in wheels] == [f"xx_{NAME}-1.2.3-py3-none-any.whl"]
    wheel = tmp_path / wheels[0].name
    shutil.copyfile(wheels[0], wheel)

    python = fresh_venv(tmp_path / "venv")
    sh(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--no-cache-dir",
       "-q", wheel)
    shutil.rmtree(work)  # the original GGUF, pipeline and package directory are gone
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = sh(python, "-c", LOAD_AND_RUN, f"xx_{NAME}", json.dumps(TEXTS), cwd=elsewhere, env=clean_env)
    after = json.loads(result.stdout.strip().splitlines()[-1])

    package = Path(after["package"])
    assert (tmp_path / "venv") in package.parents  # the installed copy, not a leftover
    assert after["models"] == [str(package / f"xx_{NAME}-1.2.3" / "giellm_model" / "model.gguf")]
    assert Path(after["spacy_giellm"]).resolve() == Path(spacy_giellm.__file__).resolve()
    assert after["outputs"] == before
