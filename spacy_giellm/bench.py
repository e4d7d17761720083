"""Throughput benchmark: the `giellm` component against its bare backends.

Each backend (HF, GGUF) is measured in its own child process, so its peak RSS
is its own. All figures of one backend come from one run, and the figures
meant to be compared are ratios of timings taken back to back (the machine
may be shared and noisy); each timing is the best of `repeat` runs. With
`threads = 1` (the default) timings are the process's CPU time, which other
load on the machine barely changes (multi-threaded runs are timed by the wall
clock, and spin-waiting threads make them very noisy on a busy machine).

Per backend:

* docs/s through the full component (prompt building, generation, label
  scores, parsing, alignment) and through the bare backend on the same
  prompts (same length-sorted batches, generate + label_scores):
  `component_efficiency` = bare time / component time;
* prompt tokens/s (generation capped at one new token) and generated
  tokens/s (the rest of the time);
* time per doc outside the model: the component over a replay backend that
  answers instantly with the recorded outputs;
* batched (batch 16 / 16 parallel sequences) vs one prompt at a time;
* constrained vs unconstrained decoding: speed, malformed-output rate (any
  parse problem, or a span not in the text), and how often the generated text
  label is the argmax of `label_scores`; where the texts have gold entities,
  entity F1 of both.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .backends.base import LabelScoring, TaskBinding

__all__ = ["BenchConfig", "run_bench", "format_table", "load_texts", "build_bench_models", "FIELDS"]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_TEXTS = ASSETS / "stockmark-ner-sample.json"

# (key, unit / meaning) of every per-backend figure, in table order.
FIELDS: Tuple[Tuple[str, str], ...] = (
    ("docs", "docs measured"),
    ("chars_per_doc", "mean characters per doc"),
    ("prompt_tokens_mean", "mean prompt tokens"),
    ("shared_prefix_tokens", "mean prompt prefix shared with another prompt, tokens"),
    ("shared_suffix_tokens", "mean prompt suffix shared with another prompt, tokens"),
    ("component_docs_per_s", "docs/s, full component"),
    ("backend_docs_per_s", "docs/s, bare backend (same prompts)"),
    ("generate_docs_per_s", "docs/s, bare generate() only (no label scores)"),
    ("component_efficiency", "bare time / component time (target >= 0.97)"),
    ("label_scores_share", "label_scores share of the bare time"),
    ("prompt_tokens_per_s", "prompt tokens/s"),
    ("generated_tokens_per_s", "generated tokens/s"),
    ("outside_model_ms_per_doc", "ms/doc outside the model (target <= 1)"),
    ("peak_rss_mb", "peak RSS of the process, MB"),
    ("one_at_a_time_docs_per_s", "docs/s, one prompt at a time"),
    ("batch_speedup", "batch 16 / one at a time (HF target >= 3)"),
    ("constrained_docs_per_s", "docs/s, bare generate() constrained"),
    ("constrained_speed_ratio", "constrained / unconstrained generate() speed"),
    ("malformed_rate_unconstrained", "malformed outputs, unconstrained"),
    ("malformed_rate_constrained", "malformed outputs, constrained"),
    ("label_argmax_agreement_unconstrained", "generated label == argmax label_scores (unconstrained; docs with a label)"),
    ("label_argmax_agreement_constrained", "generated label == argmax label_scores (constrained)"),
    ("entity_f1_unconstrained", "entity F1 vs gold, unconstrained"),
    ("entity_f1_constrained", "entity F1 vs gold, constrained"),
)


@dataclass
class BenchConfig:
    model: Optional[str] = None  # HF model dir; None: build the tiny test model
    gguf: Optional[str] = None  # GGUF file; None: convert the HF model (tiny only)
    texts: Optional[str] = None  # .json (list of {"text"}), .jsonl or .txt; None: the shipped sample
    n: int = 64
    task: str = "scnm"
    batch_size: int = 16
    max_new_tokens: int = 32
    repeat: int = 5
    backends: Sequence[str] = ("hf", "gguf")
    threads: int = 1
    work_dir: Optional[str] = None


# ------------------------------------------------------------------- inputs


def load_texts(path: Optional[str] = None, n: Optional[int] = None) -> List[Dict[str, Any]]:
    """Records {"text", optional "entities": [(label, text)]} from a file."""
    p = Path(path) if path else DEFAULT_TEXTS
    if not p.exists():
        raise FileNotFoundError(f"bench: no texts file {str(p)!r} (pass --texts)")
    raw = p.read_text(encoding="utf-8")
    if p.suffix == ".json":
        items = json.loads(raw)
    elif p.suffix == ".jsonl":
        items = [json.loads(line) for line in raw.splitlines() if line.strip()]
    else:
        items = [{"text": line} for line in raw.splitlines() if line.strip()]
    records = []
    for item in items:
        if isinstance(item, str):
            item = {"text": item}
        text = item.get("text")
        if not isinstance(text, str) or not text.strip():
            continue
        record: Dict[str, Any] = {"text": text}
        if isinstance(item.get("entities"), list):
            ents = []
            for e in item["entities"]:
                if isinstance(e, dict) and "type" in e and "name" in e:
                    ents.append((e["type"], e["name"]))
                elif isinstance(e, dict) and "label" in e and "text" in e:
                    ents.append((e["label"], e["text"]))
            record["entities"] = ents
        records.append(record)
    if not records:
        raise ValueError(f"bench: no texts in {str(p)!r}")
    if n:
        records = [records[i % len(records)] for i in range(n)]
    return records


def build_bench_models(out_dir: Path, texts: Sequence[str], task_name: str, gguf: bool = True) -> Tuple[Path, Optional[Path]]:
    """The tiny random-weight Llama the tests use (same layer sizes), with a
    tokenizer trained on `texts` and the task's markers; and its f32 GGUF."""
    from .format import build_input
    from .tasks import get_task
    from .training.tiny import build_tiny_llama

    task = get_task(task_name)
    symbols = [f"<{label}>" for label in task.text_labels] + list(task.instructions)
    for wl in task.word_levels:
        symbols += [f":{label};" for label in wl.labels]
    corpus = list(texts) + [build_input(t, task) for t in texts[:50]]
    # the tests' 1000 pieces, or room for every character of a larger corpus
    needed = len(set("".join(corpus))) + 256 + 4 + len(symbols)
    hf_dir = build_tiny_llama(
        out_dir / "hf", corpus, vocab_size=max(1000, needed + 500), hidden_size=64, num_layers=2, num_heads=4,
        intermediate_size=128, max_position_embeddings=512, seed=0, user_symbols=symbols,
    )
    if not gguf:
        return hf_dir, None
    from .training.gguf_export import convert_to_gguf

    return hf_dir, Path(convert_to_gguf(hf_dir, out_dir / "tiny-f32.gguf", outtype="f32"))


# -------------------------------------------------------------- measuring


_CLOCK: Callable[[], float] = time.perf_counter


def _best(fn: Callable[[], Any], repeat: int) -> Tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(max(1, repeat)):
        t = _CLOCK()
        result = fn()
        best = min(best, _CLOCK() - t)
    return best, result


def _shared_tokens(token_lists: Sequence[Sequence[int]]) -> float:
    """Mean length of the longest prefix each list shares with another one."""
    if len(token_lists) < 2:
        return 0.0
    order = sorted(range(len(token_lists)), key=lambda k: list(token_lists[k]))

    def lcp(a: Sequence[int], b: Sequence[int]) -> int:
        n = 0
        for x, y in zip(a, b):
            if x != y:
                break
            n += 1
        return n

    best = [0] * len(token_lists)
    for i, j in zip(order, order[1:]):  # sorted neighbours hold the longest shared prefixes
        n = lcp(token_lists[i], token_lists[j])
        best[i], best[j] = max(best[i], n), max(best[j], n)
    return sum(best) / len(best)


def _sorted_batches(prompts: Sequence[str], size: int) -> List[List[int]]:
    order = sorted(range(len(prompts)), key=lambda k: len(prompts[k]))
    return [order[i : i + size] for i in range(0, len(order), size)]


def _generate_like_component(backend, prompts: Sequence[str], size: int) -> List[str]:
    """generate() over length-sorted batches, as the component calls it."""
    outputs: List[str] = [""] * len(prompts)
    for batch in _sorted_batches(prompts, size):
        for k, out in zip(batch, backend.generate([prompts[k] for k in batch])):
            outputs[k] = out
    return outputs


class _Replay:
    """A backend answering instantly with recorded outputs."""

    def __init__(self, outputs: Dict[str, str]) -> None:
        self._outputs = outputs

    def generate(self, prompts: List[str]) -> List[str]:
        return [self._outputs[p] for p in prompts]


class _ScoredReplay(_Replay):
    """A `_Replay` that also answers `label_scores` with recorded scores."""

    def __init__(self, outputs: Dict[str, str], scores: Dict[str, Dict[str, float]]) -> None:
        super().__init__(outputs)
        self._scores = scores

    def label_scores(self, prompts: Sequence[str], candidates: Sequence[str]) -> List[Dict[str, float]]:
        return [self._scores[p] for p in prompts]


def _gold_outputs(task, records) -> Optional[List[str]]:
    """Gold outputs (first text label where the texts have none), or None."""
    from .annotation import Annotation, Mention
    from .format import render_output

    if not all("entities" in r for r in records) or not any(wl.kind == "entities" for wl in task.word_levels):
        return None
    label = task.text_labels[0] if task.text_labels else None
    return [
        render_output(Annotation(text=r["text"], task=task.name, label=label,
                                 entities=[Mention(lab, text) for lab, text in r["entities"]]), task)
        for r in records
    ]


def _quality(task, records, prompts, outputs, scores) -> Dict[str, Optional[float]]:
    from .format import parse_output

    malformed, agree, labelled = 0, 0, 0
    tp = n_pred = n_gold = 0
    has_gold = any("entities" in r for r in records)
    for record, output, score in zip(records, outputs, scores or [None] * len(outputs)):
        parsed = parse_output(output, task, text=record["text"])
        ann = parsed.annotation
        spans_ok = all(m.text in record["text"] for m in ann.entities + ann.sentiments)
        malformed += (not parsed.ok) or (not spans_ok)
        if score and ann.label is not None:
            labelled += 1
            agree += max(score, key=score.get).strip("<>") == ann.label
        if has_gold:
            pred = {(m.label, m.text) for m in ann.entities}
            gold = set(map(tuple, record.get("entities", [])))
            tp += len(pred & gold)
            n_pred += len(pred)
            n_gold += len(gold)
    f1 = (2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0) if has_gold else None
    return {
        "malformed_rate": malformed / max(1, len(outputs)),
        "label_argmax_agreement": (agree / labelled) if labelled else None,
        "entity_f1": f1,
    }


def bench_backend(kind: str, cfg: BenchConfig, model_dir: str, gguf_path: Optional[str]) -> Dict[str, Any]:
    """All figures for one backend ("hf" or "gguf"), in this process."""
    import spacy

    from .component import GiellmComponent
    from .format import build_input
    from .tasks import get_task

    task = get_task(cfg.task)
    records = load_texts(cfg.texts, cfg.n)
    texts = [r["text"] for r in records]
    prompts = [build_input(t, task) for t in texts]
    candidates = [f"<{label}>" for label in task.text_labels]
    if kind == "hf":
        from .backends.hf import make_hf_backend

        import torch

        torch.set_num_threads(cfg.threads)
        backend = make_hf_backend(model=model_dir, device="cpu", batch_size=cfg.batch_size,
                                  max_new_tokens=cfg.max_new_tokens).load()
    elif kind == "gguf":
        from .backends.llamacpp import make_llamacpp_backend

        if not gguf_path:
            raise ValueError("bench: the gguf backend needs --gguf (or the default tiny model)")
        n_ctx = 2048 * max(1, -(-cfg.batch_size * (cfg.max_new_tokens + 128) // 2048))
        backend = make_llamacpp_backend(model_path=gguf_path, n_ctx=n_ctx, max_new_tokens=cfg.max_new_tokens,
                                        n_threads=cfg.threads, n_parallel=cfg.batch_size).load()
    else:
        raise ValueError(f"bench: unknown backend {kind!r}; use hf or gguf")
    if isinstance(backend, TaskBinding):
        backend.bind_task(task, None)
    has_scores = isinstance(backend, LabelScoring) and bool(candidates)

    global _CLOCK
    _CLOCK = time.process_time if cfg.threads == 1 else time.perf_counter
    nlp = spacy.blank("ja")
    docs_text = texts
    backend.generate(prompts[:2])  # warm-up
    out: Dict[str, Any] = {"backend": kind, "docs": len(texts), "chars_per_doc": sum(map(len, texts)) / len(texts),
                           "clock": "cpu" if cfg.threads == 1 else "wall", "threads": cfg.threads}
    token_lists = [backend.encode_prompt(p) for p in dict.fromkeys(prompts)]
    out["prompt_tokens_mean"] = sum(map(len, token_lists)) / len(token_lists)
    out["shared_prefix_tokens"] = _shared_tokens(token_lists)
    out["shared_suffix_tokens"] = _shared_tokens([t[::-1] for t in token_lists])

    # bare backend vs component, same prompts, same batches; interleaved so
    # that a change in the machine's load hits both
    def run_scores():
        res: List[Dict[str, float]] = []
        for i in range(0, len(prompts), cfg.batch_size):
            res.extend(backend.label_scores(prompts[i : i + cfg.batch_size], candidates))
        return res

    component = GiellmComponent(nlp.vocab, task=task, backend=backend, batch_size=cfg.batch_size)
    docs = [nlp.make_doc(t) for t in docs_text]
    t_gen = t_scores = t_comp = float("inf")
    scores = None
    for _ in range(max(1, cfg.repeat)):
        t, outputs = _best(lambda: _generate_like_component(backend, prompts, cfg.batch_size), 1)
        t_gen = min(t_gen, t)
        if has_scores:
            t, scores = _best(run_scores, 1)
            t_scores = min(t_scores, t)
        # nlp.pipe hands the component spaCy's batch_size (256; GiNZA: 1000) docs at a time
        t, _ = _best(lambda: list(component.pipe([d.copy() for d in docs], batch_size=256)), 1)
        t_comp = min(t_comp, t)
    if not has_scores:
        t_scores = 0.0
    bare = t_gen + t_scores
    out["component_docs_per_s"] = len(texts) / t_comp
    out["backend_docs_per_s"] = len(texts) / bare
    out["generate_docs_per_s"] = len(texts) / t_gen
    out["component_efficiency"] = bare / t_comp
    out["label_scores_share"] = t_scores / bare if has_scores else None

    # outside the model: gold outputs where the texts have them (a random
    # model's outputs hold few pieces to parse and align)
    replayed = dict(zip(prompts, _gold_outputs(task, records) or outputs))
    replay = _ScoredReplay(replayed, dict(zip(prompts, scores))) if scores else _Replay(replayed)
    replay_component = GiellmComponent(nlp.vocab, task=task, backend=replay, batch_size=cfg.batch_size)
    t_out, _ = _best(lambda: list(replay_component.pipe([d.copy() for d in docs], batch_size=256)), max(cfg.repeat, 3))
    out["outside_model_ms_per_doc"] = 1000 * t_out / len(texts)

    # token throughput
    n_prompt_tokens = sum(backend.count_tokens(p) for p in prompts)
    n_new_tokens = sum(len(ids) for ids in backend.generate_ids(prompts)) if hasattr(backend, "generate_ids") else None
    saved = backend.max_new_tokens
    backend.max_new_tokens = 1
    try:
        t_prompt, _ = _best(lambda: _generate_like_component(backend, prompts, cfg.batch_size), cfg.repeat)
    finally:
        backend.max_new_tokens = saved
    out["prompt_tokens_per_s"] = n_prompt_tokens / t_prompt
    out["generated_tokens_per_s"] = (n_new_tokens / max(1e-9, t_gen - t_prompt)) if n_new_tokens else None

    # batched vs one at a time
    single = _one_at_a_time(backend, kind)
    t_one, _ = _best(lambda: [single(p) for p in prompts], cfg.repeat)
    out["one_at_a_time_docs_per_s"] = len(texts) / t_one
    out["batch_speedup"] = t_one / t_gen

    # constrained vs unconstrained
    q_free = _quality(task, records, prompts, outputs, scores)
    if hasattr(backend, "constrained"):
        backend.constrained = True
        try:
            t_con, con_outputs = _best(
                lambda: _generate_like_component(backend, prompts, cfg.batch_size), cfg.repeat)
        finally:
            backend.constrained = False
        q_con = _quality(task, records, prompts, con_outputs, scores)
        out["constrained_docs_per_s"] = len(texts) / t_con
        out["constrained_speed_ratio"] = t_gen / t_con
    else:
        q_con = {"malformed_rate": None, "label_argmax_agreement": None, "entity_f1": None}
        out["constrained_docs_per_s"] = out["constrained_speed_ratio"] = None
    for key in ("malformed_rate", "label_argmax_agreement", "entity_f1"):
        out[f"{key}_unconstrained"] = q_free[key]
        out[f"{key}_constrained"] = q_con[key]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if hasattr(backend, "close"):
        backend.close()
    return out


def _one_at_a_time(backend, kind: str) -> Callable[[str], Any]:
    """generate([prompt]) with batching switched off."""
    def run(prompt: str):
        if kind == "hf":
            saved, backend.batch_size = backend.batch_size, 1
        else:
            saved = getattr(backend, "n_parallel", None)
            if saved is not None:
                backend.n_parallel = 1
        try:
            return backend.generate([prompt])
        finally:
            if kind == "hf":
                backend.batch_size = saved
            elif saved is not None:
                backend.n_parallel = saved
    return run


# ------------------------------------------------------------ orchestration


def run_bench(cfg: BenchConfig, isolate: bool = True, log: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    """Figures for every backend in `cfg.backends`, plus the machine."""
    records = load_texts(cfg.texts, cfg.n)
    tmp = None
    model_dir, gguf_path = cfg.model, cfg.gguf
    try:
        if model_dir is None and ("hf" in cfg.backends or not gguf_path):
            tmp = tempfile.TemporaryDirectory(prefix="giellm-bench-") if cfg.work_dir is None else None
            where = Path(cfg.work_dir or tmp.name)  # type: ignore[union-attr]
            log(f"building the tiny model in {where}")
            texts = list(dict.fromkeys(r["text"] for r in load_texts(cfg.texts)))
            model, gguf = build_bench_models(where, texts, cfg.task, gguf="gguf" in cfg.backends and not gguf_path)
            model_dir = str(model)
            gguf_path = gguf_path or (str(gguf) if gguf else None)
        results: Dict[str, Any] = {"config": asdict(cfg) | {"model": model_dir, "gguf": gguf_path},
                                   "machine": machine_info(), "backends": {}}
        for kind in cfg.backends:
            log(f"measuring {kind} on {len(records)} docs")
            if isolate:
                results["backends"][kind] = _in_child(kind, cfg, model_dir, gguf_path)
            else:
                results["backends"][kind] = bench_backend(kind, cfg, model_dir, gguf_path)
        return results
    finally:
        if tmp is not None:
            tmp.cleanup()


def machine_info() -> Dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
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


def _in_child(kind: str, cfg: BenchConfig, model_dir: str, gguf_path: Optional[str]) -> Dict[str, Any]:
    payload = json.dumps({"kind": kind, "cfg": asdict(cfg), "model": model_dir, "gguf": gguf_path})
    proc = subprocess.run([sys.executable, "-m", "spacy_giellm.bench", payload], capture_output=True, text=True,
                          cwd=str(Path(__file__).resolve().parent.parent))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench: the {kind} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


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
        rows.append((key, *(_fmt(results["backends"][k].get(key)) for k in kinds), meaning))
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


def _child_main(argv: List[str]) -> None:
    data = json.loads(argv[0])
    cfg = BenchConfig(**data["cfg"])
    result = bench_backend(data["kind"], cfg, data["model"], data["gguf"])
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    _child_main(sys.argv[1:])
