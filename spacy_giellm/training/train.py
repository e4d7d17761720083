"""Fine-tune a causal LM on GIELLM pairs with transformers' Trainer.

* LoRA (PEFT) on any causal LM transformers loads (hub id or local path), or
  full fine-tuning (`full=True`), or a tiny Llama built from scratch with a
  SentencePiece tokenizer trained on the training texts (`from_scratch=True`,
  always full fine-tuning; this is what the CPU demo trains).
* Length-grouped batching, dynamic right padding (labels padded with -100),
  loss on output tokens only (see `training.data`).
* Gradient checkpointing and bf16 only on a GPU; fixed seed.
* Checkpoints in `<out>/checkpoints`; a rerun resumes from the last one.
* Early stopping on the dev loss, best model loaded at the end.
* The final model goes to `<out>/model` atomically (temp dir + rename), in
  safetensors: the LoRA adapter, or the whole model for full fine-tuning.
  `<out>/manifest.json` (small) says what was trained on what.

Multi-GPU: the same code under accelerate, e.g.
    accelerate launch --num_processes 4 -m spacy_giellm train train.jsonl dev.jsonl training/ --base-model ...
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .base_model import BaseModelNotFound, resolve_base_model
from .data import PadCollator, TrainingDataError, read_records, tokenize_records
from .loss import output_token_trainer

PathLike = Union[str, Path]
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
BASE_DIR = "base"
MANIFEST = "manifest.json"
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


@dataclass
class TinyModelConfig:
    """Size of the from-scratch Llama (`training.tiny.build_tiny_llama`)."""

    vocab_size: int = 3000
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    init_std: float = 0.02
    ginza_vectors: bool = False


@dataclass
class TrainConfig:
    base_model: Optional[str] = None
    from_scratch: bool = False
    full: bool = False
    tasks: Sequence[str] = ()
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj")
    # Apply the LM head only where the loss looks (training.loss); False runs
    # the model's own forward (full-vocabulary logits at every position).
    output_token_loss: bool = True
    # CPU LoRA: "auto" holds the frozen base in bf16 where the CPU has
    # native bf16 matmuls, "bf16" always, "fp32" never. (GPU: bf16 if supported.)
    precision: str = "auto"
    epochs: float = 3.0
    max_steps: int = -1
    # Seconds of training in this run (0: no limit); with a budget the
    # learning rate follows a cosine over the time, not over the steps.
    max_time: float = 0.0
    # "wall": max_time is wall-clock seconds; "cpu": seconds of this
    # process's CPU time (all threads), a budget other jobs on the machine
    # do not eat into.
    time_clock: str = "wall"
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup: float = 0.03
    batch_size: int = 8
    eval_batch_size: int = 0  # 0: same as batch_size
    grad_accum: int = 1
    max_length: int = 512
    eval_steps: int = 50
    patience: int = 3  # evaluations without a better dev loss; 0: off, keep the last model
    save_total_limit: int = 2
    seed: int = 0
    logging_steps: int = 10
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


# --- from-scratch base ------------------------------------------------------


def format_markers(tasks: Iterable[str]) -> List[str]:
    """Format pieces worth keeping as single tokens in a from-scratch
    tokenizer: `<label>`, `:Label;`, one-word instruction words. Pieces with
    whitespace are left out: SentencePiece and the HF tokenizer disagree on
    user-defined symbols holding a space."""
    from ..tasks import task_named

    out: List[str] = []
    for name in tasks:
        try:
            task = task_named(name)  # a name from data, never a file path
        except (KeyError, FileNotFoundError, ValueError):
            continue
        out.extend(f"<{label}>" for label in task.text_labels)
        out.extend(task.instructions)
        for wl in task.word_levels:
            if wl.is_pair:
                out.extend(f":{label};" for label in wl.labels)
            else:
                out.extend(f";{label};" for label in wl.labels)
    return list(dict.fromkeys(m for m in out if not any(c.isspace() for c in m)))


def build_scratch_base(
    out_dir: Path, records: Sequence[Dict[str, Any]], cfg: TrainConfig
) -> Path:
    """The tiny Llama + tokenizer for `from_scratch`, built once per output
    dir (a rerun that resumes must find the same tokenizer)."""
    from .tiny import build_tiny_llama

    base = out_dir / BASE_DIR
    if (base / "config.json").is_file():
        return base
    tmp = out_dir / f".{BASE_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    texts = [t for r in records for t in (r["input"], r["output"])]
    tasks = sorted({str(r.get("task")) for r in records})
    symbols = format_markers(tasks)
    t = cfg.tiny
    # SentencePiece needs a piece per character (coverage 1.0), the 256 byte
    # pieces, the specials and the markers, before any merge.
    n_chars = len({c for text in texts for c in text})
    vocab_size = max(t.vocab_size, n_chars + len(symbols) + 260 + 64)
    if vocab_size != t.vocab_size:
        print(f"[giellm train] vocab_size {t.vocab_size} -> {vocab_size}: the texts have {n_chars} distinct characters")
    build_tiny_llama(
        tmp,
        texts,
        vocab_size=vocab_size,
        hidden_size=t.hidden_size,
        num_layers=t.num_layers,
        num_heads=t.num_heads,
        intermediate_size=t.intermediate_size,
        max_position_embeddings=max(512, cfg.max_length),
        seed=cfg.seed,
        user_symbols=symbols,
        init_std=t.init_std,
    )
    if t.ginza_vectors:
        from .vectors import init_embeddings_from_vectors

        info = init_embeddings_from_vectors(tmp)
        print(f"[giellm train] token embeddings from ja_ginza vectors: {info}")
    if base.exists():
        shutil.rmtree(base)
    tmp.rename(base)
    return base


# --- callbacks ---------------------------------------------------------------


CLOCKS = {"wall": time.monotonic, "cpu": time.process_time}


def _clock(name: str):
    if name not in CLOCKS:
        raise ValueError(f"time_clock must be one of {sorted(CLOCKS)}, got {name!r}")
    return CLOCKS[name]


def _time_limit_callback(seconds: float, clock=time.monotonic):
    from transformers import TrainerCallback

    class TimeLimit(TrainerCallback):
        """Stop (with a final eval + save) after `seconds` of training."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = clock()

        def on_step_end(self, args, state, control, **kwargs):
            if clock() - self.start >= seconds:
                control.should_training_stop = True
                control.should_evaluate = args.eval_strategy != "no"
                control.should_save = True
            return control

    return TimeLimit()


def _time_budget_trainer(
    trainer_cls: Any, seconds: float, warmup: float, max_steps: int, clock=time.monotonic
) -> Any:
    """A Trainer whose learning rate follows a cosine over the time budget
    (not over a step count nobody knows in advance), or over `max_steps`
    where those run out first, after a warmup of `warmup` steps (>= 1) or
    of that fraction of the budget (< 1)."""
    import math

    from torch.optim.lr_scheduler import LambdaLR

    class TimeBudgetTrainer(trainer_cls):
        def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
            if self.lr_scheduler is None:
                start: List[float] = []

                def factor(step: int) -> float:
                    if not start:
                        start.append(clock())
                    frac = min(1.0, (clock() - start[0]) / seconds)
                    if max_steps > 0:
                        frac = max(frac, min(1.0, step / max_steps))
                    warm = min(1.0, (step + 1) / warmup) if warmup >= 1 else min(1.0, frac / warmup) if warmup > 0 else 1.0
                    return max(warm, 1e-3) * 0.5 * (1.0 + math.cos(math.pi * frac))

                self.lr_scheduler = LambdaLR(optimizer or self.optimizer, factor)
            return self.lr_scheduler

    return TimeBudgetTrainer


# --- saving -----------------------------------------------------------------


def atomic_save(model: Any, tokenizer: Any, target: Path, tokenizer_source: Optional[str] = None) -> Path:
    """Save model + tokenizer to `target` via a temp dir and a rename, so a
    crash never leaves a half-written model where a finished one is expected.

    The tokenizer files of a local `tokenizer_source` are copied verbatim
    (they may hold settings llama.cpp's converter reads that a re-save would
    change)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    if tokenizer_source and Path(tokenizer_source).is_dir():
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_source) / name
            if src.is_file():
                shutil.copy2(src, tmp / name)
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf8")
    os.replace(tmp, path)


# --- training ---------------------------------------------------------------


def _load_tokenizer(base: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token_id is None:
        # Padding only ever sits under attention_mask 0 and label -100.
        tok.pad_token = tok.eos_token
    return tok


def _version_args(training_args_cls: Any, cuda: bool) -> Dict[str, Any]:
    """Length-grouped batches and activation (gradient) checkpointing on a
    GPU, under the argument names this transformers version uses."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(training_args_cls)}
    out: Dict[str, Any] = (
        {"train_sampling_strategy": "group_by_length"}
        if "train_sampling_strategy" in names
        else {"group_by_length": True}
    )
    ckpt = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    out[ckpt] = cuda
    out[f"{ckpt}_kwargs"] = {"use_reentrant": False} if cuda else None
    return out


PRECISIONS = ("auto", "bf16", "fp32")


def _bf16_base(precision: str, cuda: bool, cuda_bf16: bool, mode: str) -> bool:
    """Whether a CPU LoRA run holds its frozen base weights in bf16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if cuda or mode != "lora" or precision == "fp32":
        return False
    if precision == "bf16":
        return True
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _count_params(model: Any) -> Tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def train(
    train_path: PathLike,
    dev_path: Optional[PathLike],
    output_dir: PathLike,
    cfg: TrainConfig,
) -> Dict[str, Any]:
    """Train; returns the manifest (also written to `<output_dir>/manifest.json`)."""
    t0 = time.time()
    out = Path(output_dir)
    # 1. Everything that can fail cheaply fails before a model is loaded.
    _clock(cfg.time_clock)
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {cfg.precision!r}")
    train_records = read_records(train_path, cfg.tasks or None)
    dev_records = read_records(dev_path, None) if dev_path else []
    if cfg.tasks and dev_records:
        dev_records = [r for r in dev_records if r.get("task") in set(cfg.tasks)]
    if not cfg.from_scratch:
        base = resolve_base_model(cfg.base_model)

    import torch
    from transformers import (
        AutoModelForCausalLM,
        EarlyStoppingCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )
    from transformers.trainer_utils import get_last_checkpoint

    set_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / CHECKPOINT_DIR
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None

    if cfg.from_scratch:
        args_probe = TrainingArguments(output_dir=str(ckpt_dir), report_to="none")
        with args_probe.main_process_first(desc="build tiny base model"):
            base = str(build_scratch_base(out, train_records, cfg))
    tokenizer = _load_tokenizer(base)

    train_data = tokenize_records(train_records, tokenizer, cfg.max_length, name=str(train_path))
    dev_data = (
        tokenize_records(dev_records, tokenizer, cfg.max_length, name=str(dev_path))
        if dev_records
        else None
    )
    for name, data in (("train", train_data), ("dev", dev_data)):
        if data is not None and data.too_long:
            print(
                f"[giellm train] {name}: skipped {data.too_long} of {data.n_records} sequences longer "
                f"than max_length={cfg.max_length} (longest {data.longest}): {data.too_long_per_task}"
            )

    cuda = torch.cuda.is_available()
    mode = "full" if (cfg.full or cfg.from_scratch) else "lora"
    bf16 = bool(cuda and torch.cuda.is_bf16_supported())
    # On a CPU with native bf16 matmuls (AMX, AVX512-BF16) the frozen base
    # of a LoRA run is held in bf16: 10x the matmul rate of float32 there.
    # The adapters stay float32 (PEFT's default), and so do full and
    # from-scratch training, whose every weight is updated.
    bf16_base = _bf16_base(cfg.precision, cuda, bf16, mode)
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=torch.bfloat16 if (bf16 or bf16_base) else torch.float32
    )
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                # PEFT takes "all-linear" as a string, not as a module name.
                target_modules=(
                    "all-linear" if list(cfg.lora_target_modules) == ["all-linear"] else list(cfg.lora_target_modules)
                ),
                task_type="CAUSAL_LM",
            ),
        )
    n_params, n_trainable = _count_params(model)

    has_dev = dev_data is not None
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size or cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup,
        lr_scheduler_type="cosine",
        **_version_args(TrainingArguments, cuda),
        eval_strategy="steps" if has_dev else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.eval_steps,
        save_total_limit=cfg.save_total_limit,
        # patience 0: no early stopping, and the last model is the result.
        load_best_model_at_end=has_dev and cfg.patience > 0,
        metric_for_best_model="eval_loss" if has_dev else None,
        greater_is_better=False if has_dev else None,
        logging_steps=cfg.logging_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=bf16,
        report_to="none",
        disable_tqdm=False,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    callbacks = []
    if has_dev and cfg.patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.patience))
    trainer_cls = output_token_trainer(Trainer) if cfg.output_token_loss else Trainer
    if cfg.max_time > 0:
        clock = _clock(cfg.time_clock)
        callbacks.append(_time_limit_callback(cfg.max_time, clock))
        trainer_cls = _time_budget_trainer(trainer_cls, cfg.max_time, cfg.warmup, cfg.max_steps, clock)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_data.examples,
        eval_dataset=dev_data.examples if has_dev else None,
        data_collator=PadCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if last:
        print(f"[giellm train] resuming from {last}")
    t_train, cpu_train = time.time(), time.process_time()
    result = trainer.train(resume_from_checkpoint=last)
    train_seconds, train_cpu = time.time() - t_train, time.process_time() - cpu_train
    dev_loss = None
    if has_dev:
        evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
        dev_loss = trainer.state.best_metric if args.load_best_model_at_end else (evals[-1] if evals else None)
        if dev_loss is None:
            dev_loss = trainer.evaluate()["eval_loss"]

    manifest: Dict[str, Any] = {}
    if trainer.is_world_process_zero():
        final = atomic_save(trainer.model, tokenizer, out / MODEL_DIR, tokenizer_source=base)
        cfg_dict = asdict(cfg)
        cfg_dict["tasks"] = list(cfg.tasks)
        cfg_dict["lora_target_modules"] = list(cfg.lora_target_modules)
        manifest = {
            "model": str(final),
            "kind": "lora-adapter" if mode == "lora" else "full-model",
            "base_model": base if not cfg.from_scratch else f"from-scratch:{base}",
            "base_model_given": cfg.base_model,
            "mode": mode,
            "parameters": n_params,
            "trainable_parameters": n_trainable,
            "data": {
                "train": {"path": str(train_path), **train_data.summary()},
                "dev": {"path": str(dev_path), **dev_data.summary()} if dev_data else None,
            },
            "steps": trainer.state.global_step,
            "max_steps": trainer.state.max_steps,
            "epochs": trainer.state.epoch,
            "resumed_from": last,
            "best_checkpoint": trainer.state.best_model_checkpoint,
            "train_loss": result.training_loss,
            "dev_loss": dev_loss,
            "train_seconds_this_run": round(train_seconds, 1),
            "train_cpu_seconds_this_run": round(train_cpu, 1),
            "seconds_total_this_run": round(time.time() - t0, 1),
            "device": "cuda" if cuda else "cpu",
            "world_size": args.world_size,
            "bf16": bf16,
            "bf16_base_weights": bf16 or bf16_base,
            "config": cfg_dict,
            "versions": _versions(),
        }
        write_json_atomic(out / MANIFEST, manifest)
    return manifest


def _versions() -> Dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "peft", "spacy-giellm"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


__all__ = [
    "TrainConfig",
    "TinyModelConfig",
    "BaseModelNotFound",
    "TrainingDataError",
    "resolve_base_model",
    "train",
    "atomic_save",
    "write_json_atomic",
    "MODEL_DIR",
    "MANIFEST",
]
