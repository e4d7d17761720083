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
    # (a random tiny model has greedy near-ties, which float rounding may
    # flip: each mismatch must be one, as the HF model's own logits say)
    assert verify["prompts"] > 0 and verify["identical"] + verify["near_ties"] == verify["prompts"], verify["mismatches"]
    # how many ties there are depends on the tiny adapter the 4 steps make
    # (2 of 8 after the LoRA dropout went to 0): most outputs still agree
    assert verify["identical"] >= verify["prompts"] // 2
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


def test_giellm_ja_workflow_builds_a_starting_model_and_its_pipeline(tmp_path, tiny_gemma_gguf):
    """The `giellm-ja` workflow on the shipped samples (the tiny Gemma 3 GGUF
    standing in for Gemma 3 270M): schema-form data with augmented label
    sets, a trimmed base, LoRA, merge, GGUF, evaluation, a pipeline with a
    NER and a sentiment component that `spacy.load` loads; and the merged
    starting model is a base `train` takes."""
    shutil.copy(ROOT / "project.yml", tmp_path / "project.yml")
    shutil.copytree(ROOT / "assets", tmp_path / "assets")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    env = dict(os.environ, SPACY_GIELLM_MAX_STEPS="3", SPACY_GIELLM_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "spacy", "project", "run", "giellm-ja", str(tmp_path),
         "--vars.demo_base_model", str(tiny_gemma_gguf), "--vars.giellm_ja_gguf_type", "f32",
         "--vars.giellm_ja_ner", "stockmark-ner-sample.json", "--vars.giellm_ja_pn", "sentiment-sample.tsv",
         "--vars.giellm_ja_n_sentiment", "60", "--vars.giellm_ja_dev", "10", "--vars.giellm_ja_test", "12",
         "--vars.giellm_ja_processes", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    corpus = tmp_path / "corpus" / "giellm-ja"
    with (corpus / "train-aug.jsonl").open(encoding="utf8") as f:
        records = [json.loads(line) for line in f]
    with (corpus / "train.jsonl").open(encoding="utf8") as f:
        n_train = sum(1 for _ in f)
    assert len(records) == 2 * n_train  # each sentence and one variant
    ner = [r for r in records if r["task"] == "giellm-ja-ner"]
    assert ner and all(r["input"].endswith("]Named Entity Recognition") for r in ner)
    assert any(r.get("augmented", {}).get("labels") and len(r["augmented"]["labels"]) < 8 for r in ner)
    manifest = json.loads((tmp_path / "training" / "giellm-ja" / "manifest.json").read_text())
    assert manifest["steps"] == 3 and manifest["base_model"] == "training/giellm-ja-base"  # as the workflow names it
    stored = {t["name"]: t for t in manifest["tasks"]}
    assert stored["giellm-ja-ner"]["label_schema"] is True and "sentiment-ja" in stored
    metrics = json.loads((tmp_path / "metrics" / "giellm-ja" / "metrics.json").read_text())
    assert metrics["sequences"] == 24
    import spacy

    nlp = spacy.load(tmp_path / "packages" / "giellm-ja")
    giellm_pipes = {name: pipe for name, pipe in nlp.pipeline if hasattr(pipe, "task")}
    assert {pipe.task.name for pipe in giellm_pipes.values()} == {"giellm-ja-ner", "sentiment-ja"}
    ner_pipe = next(p for p in giellm_pipes.values() if p.task.name == "giellm-ja-ner")
    assert ner_pipe.task.label_schema and "施設名" in ner_pipe.task.word_levels[0].labels
    doc = nlp("トヨタは愛知県の会社です。")
    assert set(doc.cats) == {"positive", "neutral", "negative"}
    # a user's task starts from the merged starting model
    user = tmp_path / "user.jsonl"
    user.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ner[:8]), encoding="utf8")
    shutil.copy(corpus / "train-aug.tasks.json", tmp_path / "user.tasks.json")
    proc = subprocess.run(
        [sys.executable, "-m", "spacy_giellm", "train", str(user), "--output", str(tmp_path / "user-run"),
         "--base-model", str(tmp_path / "training" / "giellm-ja-merged"), "--max-steps", "2", "--batch-size", "4",
         "--lora-r", "4"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    user_manifest = json.loads((tmp_path / "user-run" / "manifest.json").read_text())
    assert user_manifest["base_model"] == str(tmp_path / "training" / "giellm-ja-merged")
