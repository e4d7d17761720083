"""`train`'s config file: spaCy's config system (thinc's `Config`, the
format of spaCy's `config.cfg`) on top of `TrainConfig`, both ways.

    [paths]      train, dev, output
    [model]      base_model, from_scratch, full, tasks, task_files
    [lora]       r, alpha, dropout, targets
    [training]   lr, and every other TrainConfig field under its own name
    [tiny]       TinyModelConfig's fields (the from-scratch model's size)

The keys come from the dataclasses' fields: a field added to TrainConfig is
a `[training]` key of the same name (unless `FIELD_KEYS` places it
elsewhere), with nothing to add here. A key a file leaves out takes
TrainConfig's default, so the defaults are the config of a file with no
settings at all; `configs/lora-cpu.cfg` writes them out. An unknown section
or key, or a value of the wrong type, is an error naming the setting and the
file. Overrides are `--section.key value` pairs, parsed as `spacy train`
parses them (`spacy.cli._util.parse_config_overrides`), also from
$SPACY_GIELLM_TRAIN_OVERRIDES; values may refer to others
(`${paths.output}`), as in spaCy's configs.

`train` writes the config it ran (overrides applied) as `config.cfg` beside
the model and in it (`CONFIG_FILE`); `merge` and `export-gguf` read the base
model from there (`read_model_config`).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence as SequenceABC
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union, get_args, get_origin, get_type_hints

from .config import PRECISIONS, TinyModelConfig, TrainConfig

PathLike = Union[str, Path]
CONFIG_FILE = "config.cfg"
# Settings for every `train` run, as spaCy's SPACY_CONFIG_OVERRIDES is for
# `spacy train`: "--training.lr 0.0001 --lora.r 8" (they win over the
# command line's, as spaCy's do). For a project workflow's run.
OVERRIDES_ENV = "SPACY_GIELLM_TRAIN_OVERRIDES"
PATHS = ("train", "dev", "output")
DEFAULT_OUTPUT = "training"
TINY = "tiny"
SECTIONS = ("paths", "model", "lora", "training", TINY)
# TrainConfig fields that are not a [training] key of their own name
FIELD_KEYS: Dict[str, Tuple[str, str]] = {
    "base_model": ("model", "base_model"),
    "from_scratch": ("model", "from_scratch"),
    "full": ("model", "full"),
    "tasks": ("model", "tasks"),
    "task_files": ("model", "task_files"),
    "lora_r": ("lora", "r"),
    "lora_alpha": ("lora", "alpha"),
    "lora_dropout": ("lora", "dropout"),
    "lora_target_modules": ("lora", "targets"),
    "learning_rate": ("training", "lr"),
}
# What a value must be beyond its type.
RANGES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "lora_r": (lambda v: v >= 1, "at least 1"),
    "lora_alpha": (lambda v: v > 0, "above 0"),
    "lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "learning_rate": (lambda v: v > 0, "above 0"),
    "epochs": (lambda v: v > 0, "above 0"),
    "warmup": (lambda v: v >= 0, "0 or more"),
    "max_time": (lambda v: v >= 0, "0 or more"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "eval_batch_size": (lambda v: v >= 0, "0 or more"),
    "grad_accum": (lambda v: v >= 1, "at least 1"),
    "max_length": (lambda v: v >= 1, "at least 1"),
    "eval_steps": (lambda v: v >= 1, "at least 1"),
    "patience": (lambda v: v >= 0, "0 or more"),
    "precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "time_clock": (lambda v: v in ("wall", "cpu"), "wall or cpu"),
}


class ConfigError(ValueError):
    pass


def field_keys() -> Dict[str, Tuple[str, str]]:
    """Every TrainConfig field (the `tiny` model's too, as `tiny.<field>`)
    -> its (section, key)."""
    keys = {f.name: FIELD_KEYS.get(f.name, ("training", f.name)) for f in dataclasses.fields(TrainConfig)}
    del keys[TINY]
    keys.update({f"{TINY}.{f.name}": (TINY, f.name) for f in dataclasses.fields(TinyModelConfig)})
    return keys


def field_types() -> Dict[str, Any]:
    hints = dict(get_type_hints(TrainConfig))
    hints.update({f"{TINY}.{name}": hint for name, hint in get_type_hints(TinyModelConfig).items()})
    return hints


def section_keys() -> Dict[str, List[str]]:
    """The keys each section takes."""
    out: Dict[str, List[str]] = {section: [] for section in SECTIONS}
    out["paths"] = list(PATHS)
    for section, key in field_keys().values():
        out[section].append(key)
    return out


# --- values ---------------------------------------------------------------------------------------


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` as a field of type `hint` holds it (a sequence as a tuple;
    "a,b" as ("a", "b")), or a ConfigError."""
    args = get_args(hint)
    if get_origin(hint) is Union and type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        ok, wanted = isinstance(value, bool), "true or false"
    elif hint is int:
        ok, wanted = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif hint is float:
        ok, wanted = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        value = float(value) if ok else value
    elif hint is str:
        ok, wanted = isinstance(value, str), "a string"
    elif get_origin(hint) in (SequenceABC, list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        ok, wanted = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value), "a list of strings"
        value = tuple(value) if ok else value
    else:  # a type this module does not check
        return value
    if not ok:
        raise ConfigError(f"{where} must be {wanted}, got {value!r}")
    return value


def _path(value: Any, where: str) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # a name like 2024
        return str(value)
    raise ConfigError(f"{where} must be a path, got {value!r}")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# --- file <-> TrainConfig -------------------------------------------------------------------------


def config_dict(cfg: TrainConfig, paths: Optional[Mapping[str, Any]] = None) -> Dict[str, Dict[str, Any]]:
    """The config (sections of keys) of `cfg` and `paths`."""
    paths = paths or {}
    out: Dict[str, Dict[str, Any]] = {section: {} for section in SECTIONS}
    out["paths"] = {
        name: (str(paths[name]) if paths.get(name) is not None else None) for name in PATHS
    }
    if out["paths"]["output"] is None:
        out["paths"]["output"] = DEFAULT_OUTPUT
    for name, (section, key) in field_keys().items():
        owner, attr = (cfg.tiny, key) if section == TINY else (cfg, name)
        out[section][key] = _plain(getattr(owner, attr))
    return out


def config_text(cfg: TrainConfig, paths: Optional[Mapping[str, Any]] = None) -> str:
    from thinc.api import Config

    return Config(config_dict(cfg, paths), section_order=list(SECTIONS)).to_str()


def from_config(
    raw: Mapping[str, Any], overrides: Optional[Mapping[str, Any]] = None, source: str = "the config"
) -> Tuple[TrainConfig, Dict[str, Optional[str]]]:
    """TrainConfig and the paths of a config (sections of keys, not yet
    interpolated) with `overrides` ({"section.key": value}) applied. A key
    neither gives takes TrainConfig's default."""
    from thinc.api import Config

    known = section_keys()
    data: Dict[str, Dict[str, Any]] = {section: {} for section in SECTIONS}
    for section, values in raw.items():
        if section not in known:
            raise ConfigError(f"{source}: unknown section [{section}] (the sections: {', '.join(SECTIONS)})")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: [{section}] must be a section of keys")
        for key, value in values.items():
            _check_key(section, key, known, source, f"[{section}] {key}")
            data[section][key] = value
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if section not in known:
            raise ConfigError(f"--{dotted}: unknown section {section!r} in {source} (the sections: {', '.join(SECTIONS)})")
        _check_key(section, key, known, source, f"--{dotted}")
        data[section][key] = value
    try:
        data = Config(data, section_order=list(SECTIONS)).interpolate()
    except Exception as err:  # thinc's ConfigValidationError and configparser's errors
        raise ConfigError(f"{source}: {err}") from None
    types = field_types()
    values: Dict[str, Any] = {}
    for name, (section, key) in field_keys().items():
        if key in data[section]:
            values[name] = _coerce(data[section][key], types[name], f"{source}: {section}.{key}")
            check = RANGES.get(name)
            if check and not check[0](values[name]):
                raise ConfigError(f"{source}: {section}.{key} must be {check[1]}, got {values[name]!r}")
    tiny = {name[len(TINY) + 1:]: values.pop(name) for name in list(values) if name.startswith(f"{TINY}.")}
    cfg = TrainConfig(**values, tiny=TinyModelConfig(**tiny))
    paths = {name: _path(data["paths"].get(name), f"{source}: paths.{name}") for name in PATHS}
    paths["output"] = paths["output"] or DEFAULT_OUTPUT
    return cfg, paths


def _check_key(section: str, key: str, known: Mapping[str, List[str]], source: str, where: str) -> None:
    if key not in known[section]:
        raise ConfigError(f"{where}: no setting {section}.{key} in {source} (the keys of [{section}]: {', '.join(known[section])})")


def load_config(
    path: PathLike, overrides: Optional[Mapping[str, Any]] = None
) -> Tuple[TrainConfig, Dict[str, Optional[str]]]:
    """TrainConfig and the paths of the config file `path`, `overrides` applied."""
    from thinc.api import Config

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such config file: {path}")
    try:
        raw = Config().from_disk(path, interpolate=False)
    except Exception as err:  # configparser's and thinc's errors: the file is not a config
        raise ConfigError(f"{path}: not a config file: {err}") from None
    return from_config(raw, overrides, str(path))


def default_config(overrides: Optional[Mapping[str, Any]] = None) -> Tuple[TrainConfig, Dict[str, Optional[str]]]:
    """TrainConfig's defaults (the measured recipe), `overrides` applied."""
    return from_config({}, overrides, "the default config")


def write_config(path: PathLike, cfg: TrainConfig, paths: Optional[Mapping[str, Any]] = None) -> Path:
    from ..util import atomic_write_text

    atomic_write_text(path, config_text(cfg, paths))
    return Path(path)


def read_model_config(model_dir: PathLike) -> Optional[TrainConfig]:
    """The TrainConfig a model was trained with (its `config.cfg`), or None
    for a model without one (trained before the file existed, or not here)."""
    path = Path(model_dir) / CONFIG_FILE
    return load_config(path)[0] if path.is_file() else None


def parse_overrides(args: List[str]) -> Dict[str, Any]:
    """`--section.key value` / `--section.key=value` pairs as `spacy train`
    reads them (values as JSON where they parse, else as strings), and those
    of $SPACY_GIELLM_TRAIN_OVERRIDES."""
    from spacy.cli._util import parse_config_overrides

    return parse_config_overrides(list(args), env_var=OVERRIDES_ENV)


# --- the flags `train` took before the config file ------------------------------------------------

# Old flags whose field is not their name with - as _; True/False: the
# value a flag without one sets.
LEGACY_FLAGS: Dict[str, Tuple[str, Optional[bool]]] = {
    "--lr": ("learning_rate", None),
    "--lora-targets": ("lora_target_modules", None),
    "-b": ("base_model", None),
    "--task": ("task_files", None),
    "-t": ("task_files", None),
    "--full-logits": ("output_token_loss", False),
    "--no-gradient-checkpointing": ("gradient_checkpointing", False),
}
REPEATED = ("task_files",)


def _is_number(arg: str) -> bool:
    try:
        float(arg)
    except ValueError:
        return False
    return True


def _legacy_field(flag: str) -> Optional[Tuple[str, Optional[bool]]]:
    if flag in LEGACY_FLAGS:
        return LEGACY_FLAGS[flag]
    if not flag.startswith("--"):
        return None
    name = flag[2:].replace("-", "_")
    keys = field_keys()
    for field in (name, f"{TINY}.{name}"):
        if field in keys:
            return field, None
    # --no-X for a bool setting X (--no-packing, --no-autocast)
    if name.startswith("no_") and field_types().get(name[3:]) in (bool, Optional[bool]):
        return name[3:], False
    return None


def split_legacy_flags(args: List[str]) -> Tuple[List[str], Dict[str, Any], List[str], List[str]]:
    """`args` sorted into (positional arguments, the old flags' settings as
    {"section.key": value}, the `--section.key value` arguments, the old
    flags given). A bool setting's flag takes no value; `--task` repeats."""
    keys, types = field_keys(), field_types()
    positional: List[str] = []
    settings: Dict[str, Any] = {}
    rest: List[str] = []
    used: List[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        flag, eq, value = arg.partition("=")
        legacy = _legacy_field(flag) if arg.startswith("-") and not _is_number(arg) else None
        if legacy is None:
            if arg.startswith("--") and "." in flag:  # --section.key [value]
                rest.append(arg)
                if not eq and i < len(args) and not args[i].startswith("--"):
                    rest.append(args[i])
                    i += 1
            elif arg.startswith("-") and not _is_number(arg):
                raise ConfigError(f"no such option: {flag} (settings are --section.key value)")
            else:
                positional.append(arg)
            continue
        field, fixed = legacy
        used.append(flag)
        section, key = keys[field]
        hint = types[field]
        if fixed is not None or hint in (bool, Optional[bool]):
            parsed: Any = fixed if fixed is not None else (json.loads(value) if eq else True)
        else:
            if not eq:
                if i >= len(args):
                    raise ConfigError(f"{flag} needs a value")
                value = args[i]
                i += 1
            parsed = _json_or_string(value)
        dotted = f"{section}.{key}"
        if field in REPEATED:
            settings[dotted] = list(settings.get(dotted, [])) + [str(parsed)]
        else:
            settings[dotted] = parsed
    return positional, settings, rest, used


def _json_or_string(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


__all__ = [
    "CONFIG_FILE", "ConfigError", "config_dict", "config_text", "default_config", "field_keys", "from_config",
    "load_config", "parse_overrides", "read_model_config", "section_keys", "write_config",
]
