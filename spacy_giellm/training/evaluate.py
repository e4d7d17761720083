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
from ..backends.build import backend_config
from ..evaluation import load_gold, markdown_table
from ..format import parse_output
from ..scoring import calibration, score_annotations
from ..tasks import Task
from ..util import atomic_path, atomic_write_json, atomic_write_text

Pairs = List[Tuple[Annotation, Annotation]]

PathLike = Union[str, Path]


def make_nlp(base: str = "blank") -> Any:
    """The pipeline the component goes into: "blank" (spacy.blank("ja"),
    SudachiPy tokens only) or a pipeline name / path such as "ja_ginza"."""
    import spacy

    return spacy.blank("ja") if base == "blank" else spacy.load(base)


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
    from ..component import add_giellm
    from ..model_tasks import model_task_resolver

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




__all__ = ["evaluate", "evaluate_group", "model_annotation", "make_nlp"]
