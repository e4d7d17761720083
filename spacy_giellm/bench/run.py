"""A bench run: each backend measured in its own child process, the machine
described, the figures as a table."""
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..util import cpuinfo
from .config import FIELDS, BenchConfig
from .inputs import build_bench_models, load_texts

logger = logging.getLogger(__name__)


def _models(cfg: BenchConfig, work_dir: Path) -> Tuple[str, Optional[str]]:
    """(HF model dir, GGUF path): the tiny model built in `work_dir`, where
    cfg names none (converted to GGUF only where the gguf backend needs it)."""
    logger.info("building the tiny model in %s", work_dir)
    texts = list(dict.fromkeys(r["text"] for r in load_texts(cfg.texts)))
    model, gguf = build_bench_models(work_dir, texts, cfg.task, gguf="gguf" in cfg.backends and not cfg.gguf)
    return str(model), cfg.gguf or (str(gguf) if gguf else None)


def run_bench(cfg: BenchConfig, isolate: bool = True) -> Dict[str, Any]:
    """Figures for every backend in `cfg.backends`, plus the machine. With
    `isolate`, each backend runs in its own process (its own peak RSS)."""
    from .measure import bench_backend

    records = load_texts(cfg.texts, cfg.n)
    model_dir, gguf_path = cfg.model, cfg.gguf
    with tempfile.TemporaryDirectory(prefix="giellm-bench-") as tmp:
        if model_dir is None and ("hf" in cfg.backends or not gguf_path):
            model_dir, gguf_path = _models(cfg, Path(cfg.work_dir or tmp))
        results: Dict[str, Any] = {"config": asdict(cfg) | {"model": model_dir, "gguf": gguf_path},
                                   "machine": machine_info(), "backends": {}}
        for kind in cfg.backends:
            logger.info("measuring %s on %d docs", kind, len(records))
            measure = _in_child if isolate else bench_backend
            results["backends"][kind] = measure(kind, cfg, model_dir, gguf_path)
    return results


def machine_info() -> Dict[str, Any]:
    names = [block["model name"] for block in cpuinfo() or () if "model name" in block]
    cpu = names[0] if names else (platform.processor() or platform.machine())
    try:
        cores = len(os.sched_getaffinity(0))  # type: ignore[attr-defined]
    except AttributeError:
        cores = os.cpu_count() or 1
    info: Dict[str, Any] = {"cpu": cpu, "cpus": cores, "python": platform.python_version()}
    for mod in ("torch", "transformers", "llama_cpp", "spacy"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            pass
    try:
        info["load_avg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def _in_child(kind: str, cfg: BenchConfig, model_dir: Optional[str], gguf_path: Optional[str]) -> Dict[str, Any]:
    """`bench_backend` in a child process (`python -m spacy_giellm.bench`)."""
    payload = json.dumps({"kind": kind, "cfg": asdict(cfg), "model": model_dir, "gguf": gguf_path})
    package_parent = Path(__file__).resolve().parent.parent.parent  # imports this copy of the package
    proc = subprocess.run([sys.executable, "-m", "spacy_giellm.bench", payload], capture_output=True, text=True,
                          cwd=str(package_parent))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench: the {kind} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def child_main(argv: List[str]) -> None:
    """The child's side of `_in_child`: the figures as one JSON line on stdout."""
    from .measure import bench_backend

    data = json.loads(argv[0])
    cfg = BenchConfig(**data["cfg"])
    result = bench_backend(data["kind"], cfg, data["model"], data["gguf"])
    sys.stdout.write(json.dumps(result) + "\n")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def format_table(results: Dict[str, Any]) -> str:
    kinds = list(results["backends"])
    rows = [("figure", *kinds, "meaning")]
    for key, meaning in FIELDS:
        cells, shown = [], False
        for k in kinds:
            figures = results["backends"][k]
            cell = _fmt(figures.get(key))
            share = (figures.get("share_of_kernel_limit_by_figure") or {}).get(key)
            shown = shown or share is not None
            cells.append(cell if share is None else f"{cell} ({share:.0%})")
        rows.append((key, *cells, meaning + " (share of the kernel ceiling)" if shown else meaning))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + "  " + r[-1])
    m = results["machine"]
    first = results["backends"][kinds[0]] if kinds else {}
    lines.append(f"machine: {m.get('cpu')}, {m.get('cpus')} CPUs, load {m.get('load_avg_1m', 0):.1f}; "
                 f"torch {m.get('torch', '-')}, llama-cpp-python {m.get('llama_cpp', '-')}; "
                 f"{first.get('threads', '-')} thread(s), {first.get('clock', '-')} clock")
    return "\n".join(lines)
