"""Fine-tune a causal LM on GIELLM pairs with transformers' Trainer.

* LoRA (PEFT) on any causal LM transformers loads (hub id or local path), or
  full fine-tuning (`full=True`), or a tiny Llama built from scratch with a
  SentencePiece tokenizer trained on the training texts (`from_scratch=True`,
  always full fine-tuning; this is what the CPU demo trains; `scratch`).
* Length-grouped batching; each batch's sequences packed end to end
  (attention inside each sequence; `data.PackCollator`) or, with
  `packing=False`, right-padded (labels padded with -100); loss on output
  tokens only (see `training.data`, `training.loss`).
* `profile=True`: time split, real tokens/s, GFLOPS and peak RSS of the
  steps in the manifest (`training.profile`).
* Gradient checkpointing and bf16 only on a GPU; fixed seed.
* Checkpoints in `<out>/checkpoints`; a rerun resumes from the last one.
* Early stopping on the dev loss, best model loaded at the end; or a time
  budget (`callbacks`).
* The final model goes to `<out>/model` atomically (temp dir + rename), in
  safetensors: the LoRA adapter, or the whole model for full fine-tuning,
  with `giellm_tasks.json`: the definitions of the tasks it was trained on
  (`model_tasks`), and `config.cfg`: the config it was trained with
  (`config_file`; also `<out>/config.cfg`). `<out>/manifest.json` (small)
  says what was trained on what.

Progress goes to the `spacy_giellm` logger.

Multi-GPU: the same code under accelerate, e.g.
    accelerate launch --num_processes 4 -m spacy_giellm train configs/paper-gpu.cfg --paths.train train.jsonl ...
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..tasks import Task
from ..util import atomic_dir, atomic_write_json, atomic_write_text
from .base_model import BaseModelNotFound, resolve_base_model
from .callbacks import clock_named, memory_release_callback, run_clock, time_budget_trainer, time_limit_callback
from .config import PRECISIONS, TinyModelConfig, TrainConfig
from .config_file import CONFIG_FILE, config_text
from .data import PackCollator, PadCollator, TrainingDataError, read_records, tokenize_records
from .loss import output_token_trainer
from ..model_tasks import write_model_tasks
from .parallel import first_process_first, join_process_group, per_process, world_size
from .scratch import build_scratch_base

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
# steps between giving the allocator's freed memory back (callbacks.memory_release_callback)
MEMORY_RELEASE_STEPS = 20
MANIFEST = "manifest.json"
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


# --- saving -----------------------------------------------------------------


def atomic_save(
    model: Any,
    tokenizer: Any,
    target: Path,
    tokenizer_source: Optional[str] = None,
    tasks: Optional[Mapping[str, Task]] = None,
    files: Optional[Mapping[str, str]] = None,
) -> Path:
    """Save model + tokenizer (+ the definitions of the `tasks` it does, if
    any, + text `files` by name, such as the training config) to `target`
    via a temp dir and a rename, so a crash never leaves a half-written
    model where a finished one is expected.

    The tokenizer files of a local `tokenizer_source` are copied verbatim
    (they may hold settings llama.cpp's converter reads that a re-save would
    change)."""
    target = Path(target)
    with atomic_dir(target) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if tasks:
            write_model_tasks(tmp, tasks)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text, encoding="utf8")
        if tokenizer_source and Path(tokenizer_source).is_dir():
            for name in TOKENIZER_FILES:
                src = Path(tokenizer_source) / name
                if src.is_file():
                    shutil.copy2(src, tmp / name)
    return target


# --- the model ----------------------------------------------------------------


def _load_tokenizer(base: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token_id is None:
        # Padding only ever sits under attention_mask 0 and label -100.
        tok.pad_token = tok.eos_token
    return tok


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def _bf16_base(precision: str, cuda: bool, mode: str) -> bool:
    """Whether a CPU LoRA run holds its frozen base weights in bf16."""
    if _check_precision(precision) == "fp32" or cuda or mode != "lora":
        return False
    if precision == "bf16":
        return True
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _cpu_autocast(cfg: TrainConfig, cuda: bool, bf16_base: bool) -> bool:
    """Whether a CPU run trains under bf16 autocast: asked for, or (None) a
    LoRA run on a bf16 base."""
    if cuda:
        return False
    return bf16_base if cfg.autocast is None else bool(cfg.autocast)


def _load_model(base: str, cfg: TrainConfig, mode: str, dtype: Any) -> Any:
    """The base model in `dtype`, with LoRA adapters for a LoRA run."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    if mode != "lora":
        return model
    from peft import LoraConfig, get_peft_model

    return get_peft_model(
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


def keep_adapter_inputs_bf16(model: Any) -> int:
    """Under CPU autocast, stop PEFT from casting each adapter's input to the
    adapters' float32: autocast casts it straight back to bf16 for the
    matmul, so the gradients are the same, but the two copies of every
    activation (and their backward) took about 5% of a step on a 2-core
    CPU (benchmarks/training-throughput.md). Returns the layers changed."""
    from peft.tuners.lora.layer import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    return len(layers)


def _count_params(model: Any) -> Tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


# --- the run ------------------------------------------------------------------


def _task_definitions(
    train_path: PathLike, dev_path: Optional[PathLike], records: Sequence[Any], cfg: TrainConfig
) -> Tuple[Dict[str, Task], Dict[str, str]]:
    """The definitions of the tasks the training records name, and whose
    each is: the user's (`cfg.task_files`), else the training data's
    sidecar, the dev data's, the built-in tasks. Training needs only the
    formatted pairs, so a task nothing defines is trained on, and said so:
    the model will not know it."""
    from ..corpora.sidecar import corpus_task_sources, record_tasks, tasks_path
    from ..tasks import TaskResolver

    sources = corpus_task_sources(train_path) + (corpus_task_sources(dev_path) if dev_path else [])
    resolver = TaskResolver.with_overrides(list(cfg.task_files), sources)
    tasks, unknown = record_tasks(records, resolver)
    if unknown:
        logger.warning(
            "no definition of task(s) %s (not built-in, not in %s, no --task): the model is trained on "
            "their pairs but will not know them; evaluate-model and package will need --task",
            unknown, tasks_path(train_path),
        )
    return tasks, {name: resolver.origins[name] for name in tasks}


def _warn_if_the_base_reads_a_schema(base: str, tasks: Mapping[str, Task]) -> None:
    """A base trained in the schema form (GIELLM-ja) was taught to read the
    labels listed in its input; a task with word labels but without
    `label_schema` would train it on prompts that list none."""
    from ..backends.stored_tasks import read_model_tasks

    try:
        stored = read_model_tasks(base) if Path(base).is_dir() else {}
    except ValueError:
        return  # its own problem, said where the model's tasks are read
    if not any(t.label_schema for t in stored.values()):
        return
    plain = sorted(n for n, t in tasks.items() if not t.label_schema and any(wl.labels for wl in t.word_levels))
    if plain:
        logger.warning(
            "the base model %s was trained with the word labels listed in its input (label_schema); task(s) %s "
            "are not: set \"label_schema\": true in their task files (and convert again) to start from what it learnt",
            base, plain,
        )


def _read_data(train_path: PathLike, dev_path: Optional[PathLike], cfg: TrainConfig) -> Tuple[List[Any], List[Any]]:
    train_records = read_records(train_path, cfg.tasks or None)
    dev_records = read_records(dev_path, None) if dev_path else []
    if cfg.tasks and dev_records:
        dev_records = [r for r in dev_records if r.get("task") in set(cfg.tasks)]
    return train_records, dev_records


def _tokenize(train_records: Sequence[Any], dev_records: Sequence[Any], tokenizer: Any, cfg: TrainConfig,
              train_path: PathLike, dev_path: Optional[PathLike]) -> Tuple[Any, Any]:
    """Tokenized train and dev data (dev None without records); sequences
    longer than max_length are skipped, and said so."""
    train_data = tokenize_records(train_records, tokenizer, cfg.max_length, name=str(train_path))
    dev_data = tokenize_records(dev_records, tokenizer, cfg.max_length, name=str(dev_path)) if dev_records else None
    for name, data in (("train", train_data), ("dev", dev_data)):
        if data is not None and data.too_long:
            logger.info(
                "%s: skipped %d of %d sequences longer than max_length=%d (longest %d): %s",
                name, data.too_long, data.n_records, cfg.max_length, data.longest, data.too_long_per_task,
            )
    return train_data, dev_data


def _version_args(training_args_cls: Any, checkpointing: bool) -> Dict[str, Any]:
    """Length-grouped batches and, if asked, activation (gradient)
    checkpointing, under the argument names this transformers version uses."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(training_args_cls)}
    out: Dict[str, Any] = (
        {"train_sampling_strategy": "group_by_length"}
        if "train_sampling_strategy" in names
        else {"group_by_length": True}
    )
    ckpt = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    out[ckpt] = checkpointing
    # Non-reentrant: works with a frozen embedding (LoRA) without making the
    # inputs require grad.
    out[f"{ckpt}_kwargs"] = {"use_reentrant": False} if checkpointing else None
    return out


def _checkpointing(cfg: TrainConfig, cuda: bool) -> bool:
    return cuda if cfg.gradient_checkpointing is None else bool(cfg.gradient_checkpointing)


def _training_args(cfg: TrainConfig, ckpt_dir: Path, has_dev: bool, cuda: bool, bf16: bool) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(ckpt_dir),
        # Without it accelerate does not set up several CPU processes
        # (torchrun) as one data-parallel run, and each trains alone.
        use_cpu=not cuda,
        per_device_train_batch_size=per_process(cfg.batch_size, world_size(), "batch_size"),
        per_device_eval_batch_size=per_process(cfg.eval_batch_size or cfg.batch_size, world_size(), "eval_batch_size"),
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup,
        lr_scheduler_type="cosine",
        **_version_args(TrainingArguments, _checkpointing(cfg, cuda)),
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


def _make_trainer(model: Any, tokenizer: Any, args: Any, cfg: TrainConfig, train_data: Any, dev_data: Any) -> Any:
    """The Trainer: output-token loss, early stopping on the dev loss, and
    the time budget, as `cfg` asks; freed memory given back every
    MEMORY_RELEASE_STEPS steps."""
    from transformers import EarlyStoppingCallback, Trainer

    has_dev = dev_data is not None
    callbacks = [memory_release_callback(MEMORY_RELEASE_STEPS)]
    if has_dev and cfg.patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.patience))
    trainer_cls = output_token_trainer(Trainer) if cfg.output_token_loss else Trainer
    if cfg.max_time > 0:
        clock = run_clock(cfg.time_clock)
        callbacks.append(time_limit_callback(cfg.max_time, clock))
        trainer_cls = time_budget_trainer(trainer_cls, cfg.max_time, cfg.warmup, cfg.max_steps, clock)
    collator: Any = (
        PackCollator(tokenizer.pad_token_id, cfg.pack_row_tokens) if _packing(cfg)
        else PadCollator(tokenizer.pad_token_id)
    )
    trainer_ref: List[Any] = []
    if cfg.profile:
        from .profile import CountingCollator, profile_callback, profiling_trainer

        collator = CountingCollator(collator)
        trainer_cls = profiling_trainer(trainer_cls)
        callbacks.append(profile_callback(trainer_ref))
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_data.examples,
        eval_dataset=dev_data.examples if has_dev else None,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer_ref.append(trainer)
    return trainer


def _packing(cfg: TrainConfig) -> bool:
    """Packed rows need the output-token loss, which passes their
    position_ids and asks for no cache (a cache would turn off
    transformers' detection of packed sequences)."""
    return cfg.packing and cfg.output_token_loss


def _profile(trainer: Any, model: Any) -> Dict[str, Any]:
    """The profile of the run's steps, over all its processes; {} in every
    process but the first, which alone measures the machine's GEMM rates
    (at all the run's threads: the others have finished)."""
    import torch

    from .profile import (combine_processes, format_profile, gather_processes, gemm_rates, model_shape,
                          peak_rss_mb, step_numbers, summarize)

    shape = model_shape(model)
    per_process, rss = gather_processes(step_numbers(trainer.step_records, shape), peak_rss_mb())
    if not trainer.is_world_process_zero():
        return {}
    rates = gemm_rates(torch.get_num_threads() * len(per_process))
    summary = summarize(combine_processes(per_process), shape, rates, rss)
    logger.info("%s", format_profile(summary))
    return summary


def _dev_loss(trainer: Any, args: Any) -> Optional[float]:
    """The best dev loss (early stopping), else the last one evaluated."""
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    dev_loss = trainer.state.best_metric if args.load_best_model_at_end else (evals[-1] if evals else None)
    if dev_loss is None:
        dev_loss = trainer.evaluate()["eval_loss"]
    return dev_loss


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
    clock_named(cfg.time_clock)
    _check_precision(cfg.precision)
    per_process(cfg.batch_size, world_size(), "batch_size")
    train_records, dev_records = _read_data(train_path, dev_path, cfg)
    tasks, task_origins = _task_definitions(train_path, dev_path, train_records, cfg)
    import torch

    cuda = torch.cuda.is_available()
    join_process_group()
    if not cfg.from_scratch:
        # a GGUF base is dequantized into the cache once, by the first process
        with first_process_first(cpu=not cuda):
            base = resolve_base_model(cfg.base_model)
        _warn_if_the_base_reads_a_schema(base, tasks)

    # 2. The base model and the data.
    from transformers import set_seed
    from transformers.trainer_utils import get_last_checkpoint

    set_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / CHECKPOINT_DIR
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if cfg.from_scratch:
        with first_process_first(cpu=not cuda):
            base = str(build_scratch_base(out, train_records, cfg, tasks))
    tokenizer = _load_tokenizer(base)
    train_data, dev_data = _tokenize(train_records, dev_records, tokenizer, cfg, train_path, dev_path)
    if dev_data is None and cfg.patience > 0 and cfg.max_steps <= 0 and cfg.max_time <= 0:
        logger.warning("no dev data, so no early stopping: training runs all %g epochs (give dev data, "
                       "or set training.epochs / max_steps)", cfg.epochs)

    mode = "full" if (cfg.full or cfg.from_scratch) else "lora"
    bf16 = bool(cuda and torch.cuda.is_bf16_supported())
    # On a CPU with native bf16 matmuls (AMX, AVX512-BF16) the frozen base
    # of a LoRA run is held in bf16: 10x the matmul rate of float32 there.
    # The adapters stay float32 (PEFT's default), and so do full and
    # from-scratch training, whose every weight is updated.
    bf16_base = _bf16_base(cfg.precision, cuda, mode)
    model = _load_model(base, cfg, mode, torch.bfloat16 if (bf16 or bf16_base) else torch.float32)
    n_params, n_trainable = _count_params(model)
    # The adapters' matmuls in bf16 too (float32 master weights): accelerate
    # runs the forward under CPU autocast (`train_speed.py` measures it).
    autocast = _cpu_autocast(cfg, cuda, bf16_base)
    if autocast and mode == "lora":
        keep_adapter_inputs_bf16(model)
    fused_layers: Dict[str, int] = {}
    if cfg.fused_layers and not cuda:
        from .fused import fuse_layers

        fused_layers = fuse_layers(model)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    # On a CPU, packed rows' attention one sequence at a time: the masked
    # attention over a whole row costs as much as the linear layers
    # (`packed_attention`). A GPU keeps transformers' kernels.
    per_sequence_attention = _packing(cfg) and not cuda
    if per_sequence_attention:
        from .packed_attention import use_packed_attention

        use_packed_attention(model)

    # 3. Training.
    args = _training_args(cfg, ckpt_dir, dev_data is not None, cuda, bf16 or autocast)
    trainer = _make_trainer(model, tokenizer, args, cfg, train_data, dev_data)
    if last:
        logger.info("resuming from %s", last)
    # CPU time of all processes of a data-parallel run
    cpu_clock = run_clock("cpu")
    t_train, cpu_train = time.time(), cpu_clock()
    result = trainer.train(resume_from_checkpoint=last)
    train_seconds, train_cpu = time.time() - t_train, cpu_clock() - cpu_train
    dev_loss = _dev_loss(trainer, args) if dev_data is not None else None
    profile = _profile(trainer, model) if cfg.profile else None

    # 4. The model and its manifest (one process writes them).
    if not trainer.is_world_process_zero():
        return {}
    # the config run, beside the model and in it (merge and export-gguf read its base model)
    config = config_text(cfg, {"train": train_path, "dev": dev_path, "output": output_dir})
    final = atomic_save(
        trainer.model, tokenizer, out / MODEL_DIR, tokenizer_source=base, tasks=tasks, files={CONFIG_FILE: config}
    )
    atomic_write_text(out / CONFIG_FILE, config)
    cfg_dict = asdict(cfg)
    cfg_dict["tasks"] = list(cfg.tasks)
    cfg_dict["task_files"] = list(cfg.task_files)
    cfg_dict["lora_target_modules"] = list(cfg.lora_target_modules)
    manifest: Dict[str, Any] = {
        "model": str(final),
        "kind": "lora-adapter" if mode == "lora" else "full-model",
        "base_model": base if not cfg.from_scratch else f"from-scratch:{base}",
        "base_model_given": cfg.base_model,
        "mode": mode,
        # what the model does: also in <model>/giellm_tasks.json (model_tasks)
        "tasks": [task.to_dict() for task in tasks.values()],
        "task_sources": task_origins,
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
        # [step, dev loss] of every evaluation: the loss against training tokens
        "dev_curve": [[h["step"], h["eval_loss"]] for h in trainer.state.log_history if "eval_loss" in h],
        "train_seconds_this_run": round(train_seconds, 1),
        "train_cpu_seconds_this_run": round(train_cpu, 1),
        "seconds_total_this_run": round(time.time() - t0, 1),
        "device": "cuda" if cuda else "cpu",
        "world_size": args.world_size,
        "bf16": bf16,
        "bf16_base_weights": bf16 or bf16_base,
        "cpu_autocast_bf16": autocast,
        # layers run as one autograd function each (training.fused)
        "fused_layers": fused_layers,
        "threads": torch.get_num_threads(),
        "gradient_checkpointing": _checkpointing(cfg, cuda),
        "packing": _packing(cfg),
        "per_sequence_attention": per_sequence_attention,
        "config": cfg_dict,
        "config_file": str(out / CONFIG_FILE),
        "versions": _versions(),
    }
    if profile is not None:
        manifest["profile"] = profile
    atomic_write_json(out / MANIFEST, manifest)
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
    "MODEL_DIR",
    "MANIFEST",
]
