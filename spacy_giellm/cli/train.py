"""The `train` command: fine-tune (LoRA or full) or train a tiny model from scratch."""
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import typer

from ._util import app, fail_cleanly


@app.command(
    "train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def train_cli(
    ctx: typer.Context,
    config_path: Path = typer.Argument(
        ..., metavar="CONFIG",
        help="Config file (configs/lora-cpu.cfg: the measured CPU recipe); after it, settings as --section.key value",
    ),
    output_dir: Optional[Path] = typer.Option(None, "--output", "-o", help="Checkpoints, model/, config.cfg and manifest.json go here (paths.output)"),
    processes: int = typer.Option(
        1, "--processes", min=1,
        help="Train data-parallel in this many processes on this machine, each with its share of the cores",
    ),
) -> None:
    """Fine-tune (LoRA or full) or train a tiny model from scratch, as the
    config says: `train configs/lora-cpu.cfg --paths.train T.jsonl
    --paths.dev D.jsonl --training.lr 0.001` (docs/training-config.md). The
    config run is written to OUTPUT/config.cfg and OUTPUT/model/config.cfg.
    Rerun to resume from the last checkpoint. SPACY_GIELLM_MAX_STEPS, if
    set, overrides training.max_steps (a short CI run). The old form,
    `train TRAIN.jsonl [DEV.jsonl] --lr ...`, still runs: the defaults and
    its flags as settings."""
    with fail_cleanly():
        cfg, paths = _config_of(config_path, list(ctx.args), output_dir)
    if processes > 1 and "WORLD_SIZE" not in os.environ:
        from ..training.parallel import per_process, run_data_parallel, without_option

        with fail_cleanly():
            per_process(cfg.batch_size, processes, "training.batch_size")
        raise typer.Exit(run_data_parallel(without_option(sys.argv[1:], "--processes"), processes, os.cpu_count() or 1))
    with fail_cleanly():
        from ..training.train import train

        if not paths["train"]:
            raise ValueError(f"{config_path}: no training data: set paths.train (--paths.train TRAIN.jsonl)")
        from ..training.parallel import leave_process_group

        manifest = train(paths["train"], paths["dev"], paths["output"], cfg)
        leave_process_group()
        if manifest:
            typer.echo(
                f"model: {manifest['model']} ({manifest['kind']}, {manifest['parameters']:,} parameters, "
                f"{manifest['steps']} steps, dev loss {manifest['dev_loss']}, "
                f"{manifest['seconds_total_this_run']} s)"
            )


def _config_of(config_path: Path, args: List[str], output_dir: Optional[Path]) -> Tuple[Any, Dict[str, Any]]:
    """TrainConfig and paths: the config file with the settings in `args`,
    or, for a .jsonl CONFIG (the old form), the defaults with the old flags
    and TRAIN [DEV]; then --output and SPACY_GIELLM_MAX_STEPS."""
    from ..training.config_file import default_config, load_config, parse_overrides, split_legacy_flags
    from ..training.parallel import RENDEZVOUS_ENV

    positional, settings, rest, legacy = split_legacy_flags(args)
    old_form = config_path.suffix == ".jsonl"
    if positional and not (old_form and len(positional) == 1):
        raise ValueError(f"unexpected argument(s) {positional}: settings are --section.key value")
    if old_form:
        settings.update({"paths.train": str(config_path), "paths.dev": positional[0] if positional else None})
    if legacy and os.environ.get("RANK", "0") == "0" and RENDEZVOUS_ENV not in os.environ:  # said once
        typer.echo(f"note: {', '.join(legacy)}: the old flags; as config settings: "
                   + " ".join(f"--{k} {_shown(v)}" for k, v in settings.items() if not k.startswith("paths.")), err=True)
    settings.update(parse_overrides(rest))
    if output_dir is not None:
        settings["paths.output"] = str(output_dir)
    env_steps = os.environ.get("SPACY_GIELLM_MAX_STEPS")
    if env_steps:
        settings["training.max_steps"] = int(env_steps)
    cfg, paths = default_config(settings) if old_form else load_config(config_path, settings)
    if env_steps:
        cfg.eval_steps = max(1, min(cfg.eval_steps, cfg.max_steps))
    return cfg, paths


def _shown(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)
