"""Score a file of predictions against a file of gold records (what the
`evaluate` command prints); read held-out gold records grouped by task
(`load_gold`); the scores as a Markdown table (`markdown_table`, what
`evaluate-model` writes and `annotate --scores` prints).

Records are matched by line order and checked by text and task; a
prediction is a raw `output` string or a record with structured fields.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from .annotation import Annotation
from .corpora import CorpusError, ReadReport, annotation_from_record, read_jsonl, task_resolver, tasks_from_gold
from .corpora.jsonl import iter_json_lines
from .scoring import score_annotations
from .tasks import Task

PathLike = Union[str, Path]

__all__ = ["read_prediction_pairs", "score_prediction_files", "load_gold", "markdown_table"]


def read_prediction_pairs(
    gold_path: PathLike, pred_path: PathLike, task: Optional[str] = None
) -> Tuple[List[Tuple[Annotation, Annotation]], int]:
    """(gold, predicted) annotation pairs, and how many predictions had parse
    problems. A prediction whose text or task differs from its gold record,
    or a different number of records, is a ValueError naming the lines.
    Tasks resolve through `task` (the user's), then the gold file's sidecar,
    then the built-in tasks."""
    resolver = task_resolver(task, gold_path)
    gold = list(read_jsonl(gold_path, task=resolver, report=ReadReport(path=str(gold_path))))
    gold_lines = [lineno for lineno, _ in iter_json_lines(gold_path)]
    preds = list(iter_json_lines(pred_path))
    if len(preds) != len(gold):
        raise ValueError(f"{gold_path} has {len(gold)} records but {pred_path} has {len(preds)}")
    tasks = tasks_from_gold(gold, resolver)
    pairs, problems = [], 0
    for g, g_line, (lineno, record) in zip(gold, gold_lines, preds):
        where = f"{pred_path}:{lineno}"
        if isinstance(record, CorpusError):
            raise record
        if isinstance(record, str):
            record = {"output": record}
        if isinstance(record, dict) and record.get("task", g.task) != g.task:
            raise ValueError(f"{where}: task {record['task']!r} but {gold_path}:{g_line} is {g.task!r}")
        pred, _, n_problems = annotation_from_record(record, where, tasks[g.task], lenient=True)
        problems += bool(n_problems)
        if pred.text is not None and g.text is not None and pred.text != g.text:
            raise ValueError(
                f"{where}: text differs from {gold_path}:{g_line}: {pred.text[:40]!r} vs {g.text[:40]!r}"
            )
        pairs.append((g, pred))
    return pairs, problems


def score_prediction_files(gold_path: PathLike, pred_path: PathLike, task: Optional[str] = None) -> Dict[str, Any]:
    """`scoring.score_annotations` of the pairs, with
    `counts["pred_parse_problems"]`: predictions that had parse problems."""
    pairs, problems = read_prediction_pairs(gold_path, pred_path, task)
    scores = score_annotations(pairs)
    scores["counts"]["pred_parse_problems"] = problems
    return scores


def load_gold(path: PathLike, resolver: Optional[Any] = None) -> Dict[Tuple[str, Optional[str]], Tuple[Task, List[Annotation]]]:
    """Gold annotations grouped by (task, instruction word). The records'
    tasks resolve through `resolver` (a TaskResolver, e.g.
    `model_tasks.model_task_resolver`), else the file's sidecar and the
    built-in tasks."""
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
