"""The `demo` workflow of project.yml, shortened so it cannot rot: convert the
shipped samples, LoRA-tune a base model given as a GGUF (here the tiny
random Gemma 3 of the fixtures, standing in for Gemma 3 270M: same
architecture, same path through the GGUF loader and the cache), merge,
export to GGUF and verify, evaluate through the GGUF backend, package,
annotate."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_demo_workflow_runs_end_to_end(tmp_path, tiny_gemma_gguf):
    shutil.copy(ROOT / "project.yml", tmp_path / "project.yml")
    shutil.copytree(ROOT / "assets", tmp_path / "assets")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    env = dict(os.environ, SPACY_GIELLM_MAX_STEPS="4", SPACY_GIELLM_CACHE_DIR=str(tmp_path / "cache"),
               SPACY_GIELLM_TRAIN_OVERRIDES="--lora.r 4")
    proc = subprocess.run(
        [sys.executable, "-m", "spacy", "project", "run", "demo", str(tmp_path),
         "--vars.demo_base_model", str(tiny_gemma_gguf), "--vars.demo_gguf_type", "f32",
         "--vars.demo_max_new_tokens", "16"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "training" / "demo" / "manifest.json").read_text())
    assert manifest["steps"] == 4 and manifest["kind"] == "lora-adapter"
    # trained from configs/demo.cfg with the workflow's settings, saved beside the model
    from spacy_giellm.training.config_file import load_config

    cfg, paths = load_config(tmp_path / "training" / "demo" / "model" / "config.cfg")
    assert (cfg.max_steps, cfg.lora_r, cfg.lora_alpha, cfg.learning_rate) == (4, 4, 32, 5e-4)
    assert cfg.base_model == str(tiny_gemma_gguf) and paths["train"] == "corpus/demo/train.jsonl"
    # data-parallel (demo_processes: 2), the first process filling the base-model cache
    assert manifest["world_size"] == 2
    # the sentiment sentences oversampled (demo_sentiment_repeat: 6), the others once
    from collections import Counter

    with (tmp_path / "corpus" / "demo" / "train.jsonl").open(encoding="utf8") as f:
        seen = Counter((r["task"], r["text"]) for r in map(json.loads, f))
    assert {n for (task, _), n in seen.items() if task == "sentiment-ja"} == {6}
    assert {n for (task, _), n in seen.items() if task == "ner-ja"} == {1}
    # the GGUF base was dequantized into the cache and trained on from there
    assert manifest["base_model_given"] == str(tiny_gemma_gguf)
    assert manifest["base_model"].startswith(str(tmp_path / "cache"))
    train = manifest["data"]["train"]
    assert train["records"] == train["examples"] + train["too_long"]
    metrics = json.loads((tmp_path / "metrics" / "demo" / "metrics.json").read_text())
    assert metrics["sequences"] > 0 and metrics["backend"]["@giellm_backends"] == "giellm.LlamaCpp.v1"
    # the exported GGUF generates exactly what the merged HF model generates
    verify = json.loads((tmp_path / "training" / "demo-f32.verify.json").read_text())
    assert verify["prompts"] > 0 and verify["identical"] == verify["prompts"], verify["mismatches"]
    # ... from the trimmed vocabulary, which the GGUF carries
    trim = json.loads((tmp_path / "training" / "demo-trimmed" / "giellm-trim.json").read_text())
    assert 0 < trim["vocab_after"] <= trim["vocab_before"] and trim["texts"] > 0
    from gguf import GGUFReader

    tokens = GGUFReader(str(tmp_path / "training" / "demo-f32.gguf"), "r").get_field("tokenizer.ggml.tokens")
    assert len(tokens.contents()) == trim["vocab_after"]
    meta = json.loads((tmp_path / "packages" / "demo-pipeline" / "meta.json").read_text())
    # the Gemma terms travel with the fine-tuned weights
    assert meta["license"].startswith("Gemma Terms of Use")
    assert meta["giellm"]["license_files"] and all(
        (tmp_path / "packages" / "demo-pipeline" / f).is_file() for f in meta["giellm"]["license_files"])
    # annotate printed the example sentences with their annotations
    assert "松友美佐紀は、日本のバドミントン選手。" in proc.stdout
    assert "cats:" in proc.stdout
