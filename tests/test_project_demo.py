"""The `demo` workflow of project.yml, shortened to a few training steps so it
cannot rot: convert the shipped samples, train from scratch, evaluate, export
to GGUF and verify, package, annotate through the GGUF backend."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_demo_workflow_runs_end_to_end(tmp_path):
    shutil.copy(ROOT / "project.yml", tmp_path / "project.yml")
    shutil.copytree(ROOT / "assets", tmp_path / "assets")
    env = dict(os.environ, SPACY_GIELLM_MAX_STEPS="4")
    proc = subprocess.run(
        [sys.executable, "-m", "spacy", "project", "run", "demo", str(tmp_path),
         "--vars.demo_max_new_tokens", "16"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "training" / "demo" / "manifest.json").read_text())
    assert manifest["steps"] == 4  # the shortened run, from scratch
    assert manifest["data"]["train"]["records"] == manifest["data"]["train"]["examples"] + manifest["data"]["train"]["too_long"]
    metrics = json.loads((tmp_path / "metrics" / "demo" / "metrics.json").read_text())
    assert metrics["sequences"] > 0
    # the exported GGUF generates exactly what the HF model generates
    verify = json.loads((tmp_path / "training" / "demo-f16.verify.json").read_text())
    assert verify["prompts"] > 0 and verify["identical"] == verify["prompts"], verify["mismatches"]
    assert (tmp_path / "packages" / "demo-pipeline" / "meta.json").exists()
    # annotate printed the example sentences with their annotations
    assert "松友美佐紀は、日本のバドミントン選手。" in proc.stdout
    assert "cats:" in proc.stdout
