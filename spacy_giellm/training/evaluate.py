"""Evaluate a trained model on held-out JSONL through the `giellm` component.

Every held-out record goes through a spaCy pipeline (a tokenizer + the
`giellm` component with the HF or GGUF backend); its gold annotation comes
from the record (corpora.read_jsonl). One generation gives two scores:

* `model`: the raw generated string read with `format.parse_output`, as the
  GIELLM paper scores (strings, no alignment); a long doc the component
  generated in parts is read part by part (`model_annotation`);
* `pipeline`: what the Doc carries afterwards (`annotation_from_doc`), i.e.
  after spans were placed on tokens; spans the text does not contain are lost.

Writes `metrics.json` and a Markdown table like the paper's Table 1.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..annotation import Annotation
from ..format import parse_output
from ..scoring import calibration, score_annotations
from ..tasks import Task
from ..util import atomic_path, atomic_write_json, atomic_write_text

Pairs = List[Tuple[Annotation, Annotation]]

PathLike = Union[str, Path]


def backend_config(
    model: PathLike,
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    n_ctx: int = 2048,
    constrained: bool = False,
    settings: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """The `@giellm_backends` block for a trained model: a .gguf file ->
    giellm.LlamaCpp.v1; a LoRA adapter dir -> giellm.HF.v1 on its base model
    with the adapter; any other model dir or hub id -> giellm.HF.v1.

    `settings`: more of the backend's settings (`backends.settings`: any
    field of HFSettings or LlamaCppSettings, e.g. {"jump_forward": False});
    a string value is read by the field's type (a command line's
    `--setting name=value`). The block is validated as the backend's
    settings now: an unknown or bad setting is a ValueError naming it."""
    cfg = _model_backend_config(model, max_new_tokens=max_new_tokens, batch_size=batch_size, n_ctx=n_ctx,
                                constrained=constrained)
    from ..backends.settings import setting_value, settings_class_for

    settings_class = settings_class_for(cfg["@giellm_backends"])
    for name, value in (settings or {}).items():
        cfg[name] = setting_value(settings_class, name, value) if isinstance(value, str) else value
    settings_class(**{k: v for k, v in cfg.items() if k != "@giellm_backends"})  # validates, naming the field
    return cfg


def _model_backend_config(model: PathLike, *, max_new_tokens: int, batch_size: int, n_ctx: int,
                          constrained: bool) -> Dict[str, Any]:
    path = Path(model)
    if path.suffix == ".gguf":
        return {
            "@giellm_backends": "giellm.LlamaCpp.v1",
            "model_path": str(path.resolve()),
            "max_new_tokens": max_new_tokens,
            "n_ctx": n_ctx,
            "constrained": constrained,
        }
    cfg: Dict[str, Any] = {
        "@giellm_backends": "giellm.HF.v1",
        "model": str(path.resolve()) if path.exists() else str(model),
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "constrained": constrained,
    }
    adapter_cfg = path / "adapter_config.json"
    if adapter_cfg.is_file():
        base = json.loads(adapter_cfg.read_text(encoding="utf8")).get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{adapter_cfg} names no base model (base_model_name_or_path)")
        cfg["model"], cfg["adapter"] = base, str(path.resolve())
    return cfg


def register_backends() -> None:
    """Import the built-in backend modules so that their registrations run
    even where the `giellm_backends` entry points are not found."""
    import importlib

    for module in ("hf", "llamacpp"):
        importlib.import_module(f"spacy_giellm.backends.{module}")


def make_backend(config: Dict[str, Any]) -> Any:
    """Build a backend from its `@giellm_backends` block."""
    from ..registry import giellm_backends

    register_backends()

    args = {k: v for k, v in config.items() if k != "@giellm_backends"}
    return giellm_backends.get(config["@giellm_backends"])(**args)


def make_nlp(base: str = "blank") -> Any:
    """The pipeline the component goes into: "blank" (spacy.blank("ja"),
    SudachiPy tokens only) or a pipeline name / path such as "ja_ginza"."""
    import spacy

    return spacy.blank("ja") if base == "blank" else spacy.load(base)


def add_giellm(nlp: Any, task: Task, backend: Dict[str, Any], name: str, **options: Any) -> Any:
    """Add a `giellm` component for `task` (a Task is passed as its dict)."""
    import spacy_giellm.component  # noqa: F401  (registers the factory)

    register_backends()

    config = {"task": task.to_dict(), "backend": backend, **options}
    return nlp.add_pipe("giellm", name=name, config=config)


def load_gold(path: PathLike, resolver: Optional[Any] = None) -> Dict[Tuple[str, Optional[str]], Tuple[Task, List[Annotation]]]:
    """Gold annotations grouped by (task, instruction word). The records'
    tasks resolve through `resolver` (a TaskResolver, e.g.
    `model_tasks.model_task_resolver`), else the file's sidecar and the
    built-in tasks."""
    from ..corpora import ReadReport, read_jsonl, task_resolver
    from ..corpora.labels import tasks_from_gold

    resolver = task_resolver(resolver, path)
    golds = list(read_jsonl(path, task=resolver, report=ReadReport(path=str(path))))
    # Word levels without labels (TCREE) get the gold records' labels, so
    # that predictions are parsed anchored on them, as `evaluate` does.
    tasks = tasks_from_gold(golds, resolver)
    groups: Dict[Tuple[str, Optional[str]], Tuple[Task, List[Annotation]]] = {}
    for ann in golds:
        task = tasks[ann.task]
        key = (task.name, ann.instruction if len(task.instructions) > 1 else None)
        groups.setdefault(key, (task, []))[1].append(ann)
    if not groups:
        raise ValueError(f"{path}: no held-out records")
    return groups


def _group_name(key: Tuple[str, Optional[str]]) -> str:
    return key[0] if key[1] is None else f"{key[0]} ({key[1]})"


def model_annotation(outputs: Sequence[str], task: Task, text: Optional[str]) -> Tuple[Annotation, List[str]]:
    """What the generated strings of one doc say, and their parse problems.

    A doc the component generated in parts has one output per part: each is
    parsed on its own (joined, the second part's label and instruction word
    would be read as word-level text), and their word-level items are
    pooled. The text label is the one most parts generated (the first of
    those tied). One output is read exactly as `parse_output` reads it."""
    parses = [parse_output(out, task, text) for out in outputs] or [parse_output("", task, text)]
    if len(parses) == 1:
        return parses[0].annotation, parses[0].problems
    anns = [p.annotation for p in parses]
    labels = Counter(a.label for a in anns if a.label is not None)
    merged = Annotation(
        text=text,
        task=task.name,
        label=labels.most_common(1)[0][0] if labels else None,
        instruction=anns[0].instruction,
    )
    for ann in anns:
        merged.entities += ann.entities
        merged.sentiments += ann.sentiments
        merged.relations += ann.relations
        merged.events += ann.events
    return merged, [problem for p in parses for problem in p.problems]


def evaluate_group(
    nlp: Any, task: Task, golds: Sequence[Annotation], instruction: Optional[str] = None
) -> Tuple[Pairs, Pairs, List[Tuple[Optional[str], Dict[str, float]]], List[Dict[str, Any]]]:
    """Run the gold texts through `nlp`, whose one giellm pipe (with
    store_output) does `task`. Returns (gold, model annotation) pairs,
    (gold, Doc annotation) pairs, (gold label, doc.cats) pairs and one
    prediction row per record."""
    from ..docs import annotation_from_doc

    docs = list(nlp.pipe([g.text or "" for g in golds]))
    model_pairs, pipe_pairs, cats_pairs, rows = [], [], [], []
    for gold, doc in zip(golds, docs):
        outputs = (doc._.giellm_output or {}).get("outputs", [])
        predicted, problems = model_annotation(outputs, task, gold.text)
        model_pairs.append((gold, predicted))
        pipe_pairs.append((gold, annotation_from_doc(doc, task)))
        cats = {k: v for k, v in doc.cats.items() if k in task.text_labels}
        cats_pairs.append((gold.label, cats))
        rows.append({
            "task": task.name, "instruction": instruction, "text": gold.text, "output": "".join(outputs),
            "problems": problems, "cats": cats,
        })
    return model_pairs, pipe_pairs, cats_pairs, rows


def evaluate(
    model: PathLike,
    data: PathLike,
    output_dir: PathLike,
    *,
    nlp_base: str = "blank",
    max_new_tokens: int = 256,
    batch_size: int = 16,
    limit: int = 0,
    title: str = "",
    predictions: bool = True,
    constrained: bool = False,
    tasks: Any = None,
    cache: Optional[PathLike] = None,
    settings: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Score `model` (HF dir, LoRA adapter dir or .gguf) on held-out `data`;
    writes metrics.json, metrics.md and (optionally) predictions.jsonl to
    `output_dir`. Returns the metrics. The records' tasks resolve through
    `tasks` (the user's: names, task files), the model's own, the data's
    sidecar, the built-in ones; `metrics["tasks"]` says whose was used. With
    `cache` (a database file), the model's responses are kept there and a
    re-run reuses them (`metrics["cache"]`: hits and misses). `settings`:
    more backend settings (`backend_config`)."""
    from .model_tasks import model_task_resolver

    t0 = time.time()
    resolver = model_task_resolver(model, tasks, data)
    groups = load_gold(data, resolver)
    if limit:
        groups = {k: (t, anns[:limit]) for k, (t, anns) in groups.items()}
    backend_cfg = backend_config(model, max_new_tokens=max_new_tokens, batch_size=batch_size, constrained=constrained,
                                 settings=settings)
    nlp = make_nlp(nlp_base)
    results: Dict[str, Any] = {}
    all_model: Pairs = []
    all_pipe: Pairs = []
    rows_out: List[Dict[str, Any]] = []
    cache_cfg = {"cache": {"@misc": "giellm.cache.v1", "path": str(cache)}} if cache else {}
    cache_stats: Counter = Counter()
    for i, (key, (task, golds)) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        name = f"giellm_{i}"
        pipe = add_giellm(
            nlp, task, backend_cfg, name,
            instruction=key[1], batch_size=batch_size, store_output=True, split_tokens=True, **cache_cfg,
        )
        t_group = time.time()
        model_pairs, pipe_pairs, cats_pairs, rows = evaluate_group(nlp, task, golds, key[1])
        cache_stats.update({k: pipe.stats[k] for k in ("cache_hits", "cache_misses")})
        nlp.remove_pipe(name)
        all_model += model_pairs
        all_pipe += pipe_pairs
        rows_out += rows
        results[_group_name(key)] = {
            "sequences": len(golds),
            "seconds": round(time.time() - t_group, 1),
            "model": score_annotations(model_pairs),
            "pipeline": score_annotations(pipe_pairs),
        }
        if task.text_labels:
            results[_group_name(key)]["calibration"] = calibration(cats_pairs)
    if len(groups) > 1:
        results["ALL"] = {
            "sequences": len(all_model),
            "model": score_annotations(all_model),
            "pipeline": score_annotations(all_pipe),
        }
    metrics = {
        "title": title,
        "model": str(model),
        "backend": backend_cfg,
        "nlp": nlp_base,
        "data": str(data),
        "tasks": {name: resolver.origins[name] for name in resolver.used},
        "sequences": len(all_model),
        "seconds": round(time.time() - t0, 1),
        "results": results,
    }
    if cache:
        metrics["cache"] = {"path": str(cache), "hits": cache_stats["cache_hits"], "misses": cache_stats["cache_misses"]}
    _write_metrics(Path(output_dir), metrics, rows_out if predictions else None)
    return metrics


def _write_metrics(out_dir: Path, metrics: Dict[str, Any], rows: Optional[List[Dict[str, Any]]]) -> None:
    """metrics.json, metrics.md and, with `rows`, predictions.jsonl (each atomically)."""
    atomic_write_json(out_dir / "metrics.json", metrics)
    atomic_write_text(out_dir / "metrics.md", markdown_table(metrics))
    if rows is not None:
        with atomic_path(out_dir / "predictions.jsonl") as tmp:
            with open(tmp, "w", encoding="utf8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def markdown_table(metrics: Dict[str, Any], level: str = "model") -> str:
    """Table 1 of the paper (TL / WL / ALL accuracy) plus word-level P/R/F."""
    lines = []
    if metrics.get("title"):
        lines += [f"### {metrics['title']}", ""]
    lines += [
        f"Model: `{metrics['model']}` ({metrics['backend']['@giellm_backends']}); "
        f"held-out data: `{metrics['data']}`, {metrics['sequences']} sequences; "
        f"time: {metrics['seconds']} s. Scores: {level} level "
        f"({'generated strings' if level == 'model' else 'spans on the Doc'}), in %.",
        "",
        "| Dataset / task | n | TL | WL | ALL | WL P | WL R | WL F |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in metrics["results"].items():
        s = res[level]
        lines.append(
            f"| {name} | {res['sequences']} | {_pct(s['tl_acc'])} | {_pct(s['wl_acc'])} | "
            f"{_pct(s['all_acc'])} | {_pct(s['wl_p'])} | {_pct(s['wl_r'])} | {_pct(s['wl_f'])} |"
        )
    return "\n".join(lines) + "\n"


__all__ = ["evaluate", "evaluate_group", "model_annotation", "backend_config", "make_backend", "make_nlp", "add_giellm", "markdown_table", "load_gold"]
