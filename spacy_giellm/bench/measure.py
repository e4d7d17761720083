"""All figures of one backend, measured in this process (`bench_backend`).

Each timing is the best of `repeat` runs, on the process's CPU time with one
thread (other load on the machine barely changes it), else the wall clock.
"""
import resource
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..backends.base import LabelScoring, ScoredGeneration, TaskBinding, generation_calls
from .config import FIELDS, STEPS, BenchConfig
from .inputs import gold_outputs, load_texts

Clock = Callable[[], float]


def kernel_shares(figures: Dict[str, Any]) -> Optional[Dict[str, float]]:
    """Each docs/s figure of one decoding setting (component, bare backend,
    1 / 4 / 8 decoding together, constrained...) as a share of the
    kernels' ceiling (`kernel_limit_docs_per_s`); None without it."""
    limit = figures.get("kernel_limit_docs_per_s")
    if not limit:
        return None
    return {key: value / limit for key, value in figures.items()
            if "docs_per_s" in key and "limit" not in key and not key.startswith("ginza")
            and isinstance(value, (int, float))}


def best(fn: Callable[[], Any], repeat: int, clock: Clock = time.perf_counter) -> Tuple[float, Any]:
    """(best time of `repeat` runs of `fn`, its last result)."""
    best_time, result = float("inf"), None
    for _ in range(max(1, repeat)):
        t = clock()
        result = fn()
        best_time = min(best_time, clock() - t)
    return best_time, result


def shared_tokens(token_lists: Sequence[Sequence[int]]) -> float:
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

    longest = [0] * len(token_lists)
    for i, j in zip(order, order[1:]):  # sorted neighbours hold the longest shared prefixes
        n = lcp(token_lists[i], token_lists[j])
        longest[i], longest[j] = max(longest[i], n), max(longest[j], n)
    return sum(longest) / len(longest)


def generate_like_component(backend: Any, prompts: Sequence[str], size: int) -> List[str]:
    """generate() over the calls the component makes (`generation_calls`)."""
    outputs: List[str] = [""] * len(prompts)
    for batch in generation_calls(prompts, size):
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


def quality(task: Any, records: Sequence[Dict[str, Any]], outputs: Sequence[str],
            scores: Optional[Sequence[Dict[str, float]]]) -> Dict[str, Optional[float]]:
    """Malformed-output rate (a parse problem, or a span not in the text),
    how often the generated label is the argmax of the label scores, and
    entity F1 where the records have gold entities."""
    from ..format import parse_output

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


class _Run:
    """One backend's measurements: the backend, the docs and their prompts,
    and what earlier steps found (outputs, scores, generate time)."""

    def __init__(self, kind: str, cfg: BenchConfig, backend: Any) -> None:
        import spacy

        from ..format import build_input, label_marker
        from ..tasks import get_task

        self.kind, self.cfg, self.backend = kind, cfg, backend
        self.task = get_task(cfg.task)
        self.records = load_texts(cfg.texts, cfg.n)
        self.texts = [r["text"] for r in self.records]
        self.prompts = [build_input(t, self.task) for t in self.texts]
        self.candidates = [label_marker(label) for label in self.task.text_labels]
        self.clock: Clock = time.process_time if cfg.threads == 1 else time.perf_counter
        self.nlp = spacy.blank("ja")
        self.docs = [self.nlp.make_doc(t) for t in self.texts]
        if isinstance(backend, TaskBinding):
            backend.bind_task(self.task, None)
        self.has_scores = isinstance(backend, LabelScoring) and bool(self.candidates)
        self.outputs: List[str] = []
        self.scores: Optional[List[Dict[str, float]]] = None
        self.t_gen = float("inf")

    def best(self, fn: Callable[[], Any], repeat: Optional[int] = None) -> Tuple[float, Any]:
        return best(fn, self.cfg.repeat if repeat is None else repeat, self.clock)

    def generate(self) -> List[str]:
        return generate_like_component(self.backend, self.prompts, self.cfg.batch_size)

    def component(self, backend: Any) -> Any:
        from ..component import GiellmComponent

        return GiellmComponent(self.nlp.vocab, task=self.task, backend=backend, batch_size=self.cfg.batch_size)

    def run_component(self, component: Any) -> List[Any]:
        # nlp.pipe hands the component spaCy's batch_size (256; GiNZA: 1000) docs at a time
        return list(component.pipe([d.copy() for d in self.docs], batch_size=256))

    # ------------------------------------------------------------ the steps

    def prompt_figures(self) -> Dict[str, Any]:
        token_lists = [self.backend.encode_prompt(p) for p in dict.fromkeys(self.prompts)]
        return {
            "prompt_tokens_mean": sum(map(len, token_lists)) / len(token_lists),
            "shared_prefix_tokens": shared_tokens(token_lists),
            "shared_suffix_tokens": shared_tokens([t[::-1] for t in token_lists]),
        }

    def component_vs_backend(self) -> Dict[str, Any]:
        """The bare backend and the component on the same prompts and
        batches; interleaved, so that a change in the machine's load hits
        both. Keeps the outputs, scores and generate time for later steps."""
        backend, size = self.backend, self.cfg.batch_size

        def run_scores() -> List[Dict[str, float]]:
            res: List[Dict[str, float]] = []
            for i in range(0, len(self.prompts), size):
                res.extend(backend.label_scores(self.prompts[i : i + size], self.candidates))
            return res

        def run_scored() -> Tuple[List[str], List[Dict[str, float]]]:
            outputs: List[str] = [""] * len(self.prompts)
            scores: List[Dict[str, float]] = [{} for _ in self.prompts]
            for batch in generation_calls(self.prompts, size):
                outs, rows = backend.generate_scored([self.prompts[k] for k in batch], self.candidates)
                for k, out, row in zip(batch, outs, rows):
                    outputs[k], scores[k] = out, row
            return outputs, scores

        one_pass = self.has_scores and isinstance(backend, ScoredGeneration)
        component = self.component(backend)
        t_gen = t_scores = t_comp = t_both = float("inf")
        for _ in range(max(1, self.cfg.repeat)):
            t, self.outputs = self.best(self.generate, 1)
            t_gen = min(t_gen, t)
            if self.has_scores:
                t, self.scores = self.best(run_scores, 1)
                t_scores = min(t_scores, t)
            if one_pass:
                t, _ = self.best(run_scored, 1)
                t_both = min(t_both, t)
            t, _ = self.best(lambda: self.run_component(component), 1)
            t_comp = min(t_comp, t)
        if not self.has_scores:
            t_scores = 0.0
        self.t_gen = t_gen
        # the bare backend at its best: one pass where it has one
        bare, n = (t_both if one_pass else t_gen + t_scores), len(self.texts)
        return {
            "component_docs_per_s": n / t_comp,
            "backend_docs_per_s": n / bare,
            "generate_docs_per_s": n / t_gen,
            "component_efficiency": bare / t_comp,
            "label_scores_share": t_scores / (t_gen + t_scores) if self.has_scores else None,
            "one_pass_speedup": (t_gen + t_scores) / t_both if one_pass else None,
        }

    def outside_model(self) -> Dict[str, Any]:
        """The component over a replay backend. Gold outputs where the texts
        have them: a random model's outputs hold few pieces to parse and align."""
        replayed = dict(zip(self.prompts, gold_outputs(self.task, self.records) or self.outputs))
        replay = _ScoredReplay(replayed, dict(zip(self.prompts, self.scores))) if self.scores else _Replay(replayed)
        component = self.component(replay)
        t_out, _ = self.best(lambda: self.run_component(component), max(self.cfg.repeat, 3))
        return {"outside_model_ms_per_doc": 1000 * t_out / len(self.texts)}

    def token_rates(self) -> Dict[str, Any]:
        """Prompt tokens/s (generation capped at one new token), generated
        tokens/s (the rest of the generate time)."""
        backend = self.backend
        n_prompt_tokens = sum(backend.count_tokens(p) for p in self.prompts)
        n_new_tokens = sum(len(ids) for ids in backend.generate_ids(self.prompts))
        self.new_tokens_per_doc = n_new_tokens / len(self.prompts)
        self.prompt_tokens_per_doc = n_prompt_tokens / len(self.prompts)
        with backend.configured(max_new_tokens=1):
            t_prompt, _ = self.best(self.generate)
        return {
            "new_tokens_per_doc": self.new_tokens_per_doc,
            "prompt_tokens_per_s": n_prompt_tokens / t_prompt,
            "generated_tokens_per_s": (n_new_tokens / max(1e-9, self.t_gen - t_prompt)) if n_new_tokens else None,
        }

    def batching(self) -> Dict[str, Any]:
        single = _one_at_a_time(self.backend, self.kind)
        t_one, _ = self.best(lambda: [single(p) for p in self.prompts])
        out: Dict[str, Any] = {"one_at_a_time_docs_per_s": len(self.texts) / t_one, "batch_speedup": t_one / self.t_gen}
        for n in (n for n in PARALLEL_SWEEP if n <= self.cfg.batch_size):  # more never decode together
            with self.backend.configured(**{_PARALLEL[self.kind]: n}):
                t, _ = self.best(self.generate)
            out[f"docs_per_s_parallel_{n}"] = len(self.texts) / t
        return out

    def drafting(self) -> Dict[str, Any]:
        """Prompt-lookup drafting (llama.cpp): docs/s with and without it,
        one sequence at a time and at the bench's parallelism, how many
        drafted tokens were kept, and whether any output changed."""
        backend = self.backend
        if not hasattr(backend, "prompt_lookup"):
            return {}
        out: Dict[str, Any] = {}
        for n, suffix in ((1, "_1"), (backend.n_parallel, "")):
            with backend.configured(n_parallel=n, prompt_lookup=0):
                t_off, plain = self.best(self.generate)
            with backend.configured(n_parallel=n, prompt_lookup=DRAFT_TOKENS):
                backend.decoding_stats(reset=True)
                t_on, drafted = self.best(self.generate)
                stats = backend.decoding_stats(reset=True)
            out[f"prompt_lookup_speedup{suffix}"] = t_off / t_on
            out[f"prompt_lookup_outputs_equal{suffix}"] = float(plain == drafted)
            out[f"prompt_lookup_kept{suffix}"] = stats["kept"] / max(1, stats["drafted"])
            out[f"tokens_per_step{suffix}"] = (stats["steps"] + stats["kept"]) / max(1, stats["steps"])
        return out

    def limits(self, gguf_path: Optional[str], component_docs_per_s: float) -> Dict[str, Any]:
        """The machine's matmul and memory rates, the model's ceilings on
        docs/s from them, and how close the component comes."""
        from .limits import doc_limits, gguf_costs, hf_costs, kernel_limit, machine_rates

        rates = machine_rates(self.cfg.threads)
        costs = gguf_costs(gguf_path) if self.kind == "gguf" and gguf_path else hf_costs(self.backend.model)
        out: Dict[str, Any] = dict(rates)
        out.update(doc_limits(costs, rates, self.prompt_tokens_per_doc, self.new_tokens_per_doc,
                              getattr(self.backend, _PARALLEL[self.kind])))
        if hasattr(self.backend, "token_pass_seconds"):
            out.update(kernel_limit(self.backend.token_pass_seconds(), self.prompt_tokens_per_doc,
                                    self.new_tokens_per_doc))
        for key in ("compute", "bandwidth", "kernel"):
            limit = out.get(f"{key}_limit_docs_per_s")
            out[f"share_of_{key}_limit"] = component_docs_per_s / limit if limit else None
        return out

    def ginza(self) -> Dict[str, Any]:
        """End to end from raw text: ja_ginza's full pipeline + giellm vs
        its tokenizer alone + giellm (what `nlp.select_pipes` or
        `spacy.load("ja_ginza", exclude=[...])` gives)."""
        import spacy

        try:
            nlp = spacy.load("ja_ginza")
        except OSError:
            return {}
        component = self.component(self.backend)
        n = len(self.texts)
        t_full, _ = self.best(lambda: list(component.pipe(nlp.pipe(self.texts), batch_size=256)))
        t_tok, _ = self.best(lambda: list(component.pipe((nlp.make_doc(t) for t in self.texts), batch_size=256)))
        t_ginza, _ = self.best(lambda: list(nlp.pipe(self.texts)))
        return {"ginza_full_docs_per_s": n / t_full, "ginza_tokenizer_docs_per_s": n / t_tok,
                "ginza_alone_docs_per_s": n / t_ginza}

    def constrained(self) -> Dict[str, Any]:
        """Constrained vs unconstrained: speed and output quality."""
        backend = self.backend
        q_free = quality(self.task, self.records, self.outputs, self.scores)
        jumps = hasattr(backend, "jump_forward")  # constrained with / without jump-forward
        out: Dict[str, Any] = {}
        if jumps:
            with backend.configured(constrained=True, jump_forward=False):
                t_step, step_outputs = self.best(self.generate)
            with backend.configured(constrained=True, jump_forward=True):
                backend.decoding_stats(reset=True)
                t_con, con_outputs = self.best(self.generate)
                jumped = backend.decoding_stats()["jumped"]
            out.update({
                "constrained_no_jump_docs_per_s": len(self.texts) / t_step,
                "jump_forward_speedup": t_step / t_con,
                "jumped_tokens_per_doc": jumped / (max(1, self.cfg.repeat) * len(self.texts)),
                "jump_forward_outputs_equal": float(step_outputs == con_outputs),
            })
        else:
            with backend.configured(constrained=True):
                t_con, con_outputs = self.best(self.generate)
        q_con = quality(self.task, self.records, con_outputs, self.scores)
        out.update({
            "constrained_docs_per_s": len(self.texts) / t_con,
            "constrained_speed_ratio": self.t_gen / t_con,
        })
        for key in ("malformed_rate", "label_argmax_agreement", "entity_f1"):
            out[f"{key}_unconstrained"] = q_free[key]
            out[f"{key}_constrained"] = q_con[key]
        return out


# the setting that bounds how many prompts decode together
_PARALLEL = {"hf": "batch_size", "gguf": "n_parallel"}
PARALLEL_SWEEP = (1, 4, 8)
DRAFT_TOKENS = 4  # prompt-lookup tokens drafted per step (a rejected one costs a full token of compute)


def _one_at_a_time(backend: Any, kind: str) -> Callable[[str], Any]:
    """generate([prompt]) with batching switched off."""
    def run(prompt: str) -> Any:
        with backend.configured(**{_PARALLEL[kind]: 1}):
            return backend.generate([prompt])

    return run


def load_backend(kind: str, cfg: BenchConfig, model_dir: Optional[str], gguf_path: Optional[str]) -> Any:
    """The HF or GGUF backend, loaded, with the bench's batch and thread settings."""
    if kind == "hf":
        import torch

        from ..backends.hf import make_hf_backend

        torch.set_num_threads(cfg.threads)
        return make_hf_backend(model=model_dir, device="cpu", batch_size=cfg.parallel or cfg.batch_size,
                               max_new_tokens=cfg.max_new_tokens).load()
    if kind == "gguf":
        from dataclasses import replace

        from ..backends.llamacpp import LlamaCppBackend
        from ..backends.settings import LlamaCppSettings

        if not gguf_path:
            raise ValueError("bench: the gguf backend needs --gguf (or the default tiny model)")
        parallel = {"n_parallel": cfg.parallel} if cfg.parallel else {}  # else the backend's default
        settings = LlamaCppSettings(model_path=gguf_path, max_new_tokens=cfg.max_new_tokens, n_threads=cfg.threads,
                                    **parallel)
        # at most a component batch decodes together: report what runs
        n_parallel = min(settings.n_parallel, cfg.batch_size)
        # room for every sequence decoding together
        n_ctx = 2048 * max(1, -(-n_parallel * (cfg.max_new_tokens + 128) // 2048))
        return LlamaCppBackend.from_settings(replace(settings, n_parallel=n_parallel, n_ctx=n_ctx)).load()
    raise ValueError(f"bench: unknown backend {kind!r}; use hf or gguf")


def bench_backend(kind: str, cfg: BenchConfig, model_dir: Optional[str], gguf_path: Optional[str]) -> Dict[str, Any]:
    """All figures for one backend ("hf" or "gguf"), in this process."""
    backend = load_backend(kind, cfg, model_dir, gguf_path)
    try:
        run = _Run(kind, cfg, backend)
        backend.generate(run.prompts[:2])  # warm-up
        out: Dict[str, Any] = {"backend": kind, "docs": len(run.texts), "batch_size": cfg.batch_size,
                               "parallel": getattr(backend, _PARALLEL[kind]),
                               "chars_per_doc": sum(map(len, run.texts)) / len(run.texts),
                               "clock": "cpu" if cfg.threads == 1 else "wall", "threads": cfg.threads}
        out.update(run.prompt_figures())
        out.update(run.component_vs_backend())
        out.update(run.outside_model())
        out.update(run.token_rates())
        steps = set(cfg.steps or STEPS)
        if "batching" in steps:
            out.update(run.batching())
        if "drafting" in steps:
            out.update(run.drafting())
        if "constrained" in steps:
            out.update(run.constrained())
        else:  # the quality of the plain outputs still
            out.update({f"{k}_unconstrained": v for k, v in quality(run.task, run.records, run.outputs, run.scores).items()})
        # before the machine's memory test and ja_ginza take their own
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if "limits" in steps:
            out.update(run.limits(gguf_path, out["component_docs_per_s"]))
            out["share_of_kernel_limit_by_figure"] = kernel_shares(out)
        if "ginza" in steps:
            out.update(run.ginza())
        for key, _ in FIELDS:  # every figure, None where not measured
            out.setdefault(key, None)
        return out
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()
