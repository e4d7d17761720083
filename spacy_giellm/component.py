"""The `giellm` spaCy component: Doc -> prompt -> backend -> parse -> align.

It only orchestrates, the way spaCy's trainable pipes do: `predict(docs)`
asks the model and reads its outputs without touching a Doc
(`prediction`), `set_annotations(docs, predictions)` writes them (`docs`).
The format lives in `format`, the parts a long doc is cut into in `parts`,
offsets in `align`, the model in a backend from the `giellm_backends`
registry.
"""
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from spacy import util
from spacy.language import Language
from spacy.pipeline import Pipe
from spacy.tokens import Doc, Span
from spacy.util import ensure_path, filter_spans, minibatch, registry

from .align import SpanMaker, split_tokens_at
from .backends.base import (LabelScoring, ModelIdentity, ModelTasks, ScoredGeneration, TaskBinding, TokenCounting,
                            generation_calls)
from .backends.settings import point_at_model_file
from .cache import CacheError, ResponseCache
from .docs import GROUPS, TUPLE_KINDS, install_extensions, set_tuples
# Where code written before `docs` looks for them.
from .docs import ENTITY_GROUP, SENTIMENT_GROUP, annotation_from_doc  # noqa: F401
from .format import build_input, label_marker, parse_output
from .parts import doc_parts, fit_to_context
from .prediction import DocPrediction, PartPrediction
from .tasks import Task, get_task, load_json_text

logger = logging.getLogger("spacy_giellm")

# In a component's directory: where its backend's model file is (see to_disk).
MODEL_REF = "model.json"
# Set to 1 to let a pipeline's model.json name a model file outside the
# pipeline directory (a pipeline loaded and saved elsewhere refers to its
# model by an absolute path).
ALLOW_OUTSIDE_ENV = "SPACY_GIELLM_ALLOW_MODEL_OUTSIDE_PIPELINE"

__all__ = ["GiellmComponent", "make_giellm", "add_giellm", "DEFAULT_CONFIG", "ENTS_POLICIES",
           "ENTITY_GROUP", "SENTIMENT_GROUP", "annotation_from_doc"]

# How generated entities meet the pipeline's earlier ones in doc.ents:
# spaCy's registered span filters (None: only the generated ones).
ENTS_FILTERS: Dict[str, Optional[str]] = {
    "overwrite": None,
    "merge": "spacy.prioritize_new_ents_filter.v1",
    "keep": "spacy.prioritize_existing_ents_filter.v1",
}
ENTS_POLICIES = tuple(ENTS_FILTERS)

DEFAULT_CONFIG: Dict[str, Any] = {
    "task": "scnm",
    "instruction": None,
    "backend": {"@giellm_backends": "giellm.HF.v1", "model": ""},
    "batch_size": 32,
    "ents": "overwrite",
    "alignment_mode": "strict",
    "split_tokens": False,
    "store_output": False,
    "max_chars": 1000,
    "score_cats": True,
    "scorer": {"@scorers": "giellm.scorer.v1"},
    "cache": None,
}


install_extensions()


@Language.factory(
    "giellm",
    assigns=["doc.cats", "doc.ents", "doc.spans", "doc._.relations", "doc._.events", "doc._.giellm_output"],
    default_config=DEFAULT_CONFIG,
    default_score_weights={
        "giellm_all_acc": 0.5,
        "giellm_tl_acc": 0.25,
        "giellm_wl_f": 0.25,
        "giellm_wl_acc": None,
        "giellm_tl_p": None,
        "giellm_tl_r": None,
        "giellm_tl_f": None,
        "giellm_wl_p": None,
        "giellm_wl_r": None,
    },
)
def make_giellm(
    nlp: Language,
    name: str,
    task: Any,
    instruction: Optional[str],
    backend: Any,
    batch_size: int,
    ents: str,
    alignment_mode: str,
    split_tokens: bool,
    store_output: bool,
    max_chars: int,
    score_cats: bool,
    scorer: Optional[Callable],
    cache: Optional[ResponseCache],
) -> "GiellmComponent":
    return GiellmComponent(
        nlp.vocab,
        name=name,
        task=task,
        instruction=instruction,
        backend=backend,
        batch_size=batch_size,
        ents=ents,
        alignment_mode=alignment_mode,
        split_tokens=split_tokens,
        store_output=store_output,
        max_chars=max_chars,
        score_cats=score_cats,
        scorer=scorer,
        cache=cache,
    )


class GiellmComponent(Pipe):
    def __init__(
        self,
        vocab,
        name: str = "giellm",
        *,
        task: Union[str, Task, Dict[str, Any]] = "scnm",
        instruction: Optional[str] = None,
        backend: Any,
        batch_size: int = 32,
        ents: str = "overwrite",
        alignment_mode: str = "strict",
        split_tokens: bool = False,
        store_output: bool = False,
        max_chars: int = 1000,
        score_cats: bool = True,
        scorer: Optional[Callable] = None,
        cache: Union[None, str, Path, ResponseCache] = None,
    ) -> None:
        if ents not in ENTS_POLICIES:
            raise ValueError(f"giellm: ents must be one of {ENTS_POLICIES}, got {ents!r}")
        if alignment_mode not in ("strict", "contract", "expand"):
            raise ValueError(f"giellm: alignment_mode must be strict, contract or expand, got {alignment_mode!r}")
        if batch_size < 1 or max_chars < 1:
            raise ValueError("giellm: batch_size and max_chars must be positive")
        if not callable(getattr(backend, "generate", None)):
            raise TypeError(f"giellm: backend {backend!r} has no generate(prompts) method")
        if isinstance(cache, (str, Path)):
            cache = ResponseCache(cache)
        if cache is not None and not isinstance(backend, ModelIdentity):
            raise CacheError(
                f"giellm: cache is set but backend {backend!r} cannot say which model it runs "
                "(it has no model_identity / generation_settings): a cached answer could be stale"
            )
        self.vocab = vocab
        self.name = name
        # a name may be a built-in task's or one the model was trained on
        self.task = get_task(task, backend.model_task_sources if isinstance(backend, ModelTasks) else ())
        self.task.word_level(instruction)  # fail now on an instruction the task lacks
        self.instruction = instruction
        self.backend = backend
        self.batch_size = batch_size
        self.ents_policy = ents
        self.alignment_mode = alignment_mode
        self.split_tokens = split_tokens
        self.store_output = store_output
        self.max_chars = max_chars
        self.score_cats = score_cats
        self.scorer = scorer
        self.cache: Optional[ResponseCache] = cache
        self.stats: Counter = Counter()
        filter_name = ENTS_FILTERS[ents]
        self._ents_filter = registry.misc.get(filter_name)() if filter_name else None
        self._bind_backend()

    def _bind_backend(self) -> None:
        """Tell a backend that can use it (constrained decoding) which task it serves."""
        if isinstance(self.backend, TaskBinding):
            self.backend.bind_task(self.task, self.instruction)

    @property
    def _word_kind(self) -> Optional[str]:
        """The word-level kind this pipe writes (None: text labels only)."""
        level = self.task.word_level(self.instruction)
        return level.kind if level is not None else None

    @property
    def labels(self) -> Tuple[str, ...]:
        labels = list(self.task.text_labels)
        for wl in self.task.word_levels:
            labels.extend(wl.labels)
        return tuple(dict.fromkeys(labels))

    def __call__(self, doc: Doc) -> Doc:
        error_handler = self.get_error_handler()
        try:
            self.set_annotations([doc], self.predict([doc]))
            return doc
        except Exception as e:
            error_handler(self.name, self, [doc], e)
            return doc

    def pipe(self, stream: Iterable[Doc], *, batch_size: Optional[int] = None) -> Iterator[Doc]:
        # GiNZA sets nlp.batch_size to 1000: that many docs are gathered, and
        # generation runs over them in batches of our own batch_size.
        error_handler = self.get_error_handler()
        for batch in minibatch(stream, size=max(batch_size or 0, self.batch_size)):
            docs = list(batch)
            try:
                self.set_annotations(docs, self.predict(docs))
                yield from docs
            except Exception as e:
                error_handler(self.name, self, docs, e)

    def predict(self, docs: Iterable[Doc]) -> List[DocPrediction]:
        """What the model says about each doc, without touching the docs:
        its parts' outputs, parses and label scores, and the char offsets
        of what it found in the text."""
        docs = list(docs)
        units: List[Tuple[int, int, str]] = []
        for i, doc in enumerate(docs):
            if doc.text.strip():
                units.extend((i, start, text) for start, text in doc_parts(doc, self.max_chars, self.stats))
        skipped: Dict[int, str] = {}
        if isinstance(self.backend, TokenCounting):
            units = fit_to_context(docs, units, self._prompt_tokens, self.backend.max_prompt_tokens(), skipped, self.stats)
        prompts = [build_input(text, self.task, self.instruction) for _, _, text in units]
        outputs, scores = self._run_backend(prompts)
        predictions = [DocPrediction(skipped=skipped.get(i)) for i in range(len(docs))]
        for k, ((i, start, text), output) in enumerate(zip(units, outputs)):
            parsed = parse_output(output, self.task, text=text)
            predictions[i].add(PartPrediction(start, text, output, parsed, scores[k] if scores else None))
        for prediction in predictions:
            self.stats["generations"] += len(prediction.parts)
            self.stats["problems"] += len(prediction.problems)
            self.stats["not_found"] += len(prediction.not_found)
        return predictions

    def set_annotations(self, docs: Iterable[Doc], predictions: Sequence[DocPrediction]) -> None:
        """Write what `predict` found onto the docs."""
        docs = list(docs)
        problems_in_batch = 0
        skipped = {i: p.skipped for i, p in enumerate(predictions) if p.skipped is not None}
        for doc, prediction in zip(docs, predictions):
            if prediction.skipped is not None:
                # returned as it came, with the reason where the output would be
                doc._.giellm_output = {"skipped": prediction.skipped, "outputs": [], "problems": [],
                                       "not_found": [], "misaligned": []}
                continue
            problems_in_batch += self._annotate(doc, prediction)
        if skipped:
            self.stats["skipped_docs"] += len(skipped)
            logger.warning(
                "giellm: %d of %d docs left unannotated (reason in doc._.giellm_output['skipped']): %s",
                len(skipped), len(docs),
                "; ".join(f"doc {i} ({docs[i].text[:20]!r}...): {why}" for i, why in sorted(skipped.items())),
            )
        if problems_in_batch:
            logger.warning(
                "giellm: %d malformed or unplaceable pieces in a batch of %d docs were dropped "
                "(store_output=true keeps them on doc._.giellm_output)", problems_in_batch, len(docs)
            )

    def _run_backend(self, prompts: List[str]) -> Tuple[List[str], Optional[List[Optional[Dict[str, float]]]]]:
        """The model's output for each prompt, and its text-label scores
        (None where the backend cannot score or `score_cats` is off); from
        the response cache where it has them (`stats`: cache_hits, cache_misses)."""
        if self.cache is None or not prompts:
            return self._run_model(prompts)
        outputs, scores, n_run = self.cache.respond(self._cache_context(), prompts, self._run_model)
        self.stats["cache_misses"] += n_run
        self.stats["cache_hits"] += len(prompts) - n_run
        return outputs, scores

    def _run_model(self, prompts: List[str]) -> Tuple[List[str], Optional[List[Dict[str, float]]]]:
        """Outputs and label scores from the model: from one prompt pass
        where the backend can (`ScoredGeneration`)."""
        markers = self._label_markers()
        if markers and isinstance(self.backend, ScoredGeneration):
            return self._generate(prompts, markers)
        return self._generate(prompts)[0], self._label_scores(prompts)

    def _label_markers(self) -> Optional[Dict[str, str]]:
        """{"<label>": label} for the text labels to score, or None."""
        if not self.score_cats or not self.task.text_labels:
            return None
        return {label_marker(label): label for label in self.task.text_labels}

    def _cache_context(self) -> Dict[str, Any]:
        """Everything but the prompt that decides a response (`cache`). Read
        at every call: a model file replaced or a setting changed since the
        last batch must miss."""
        assert self.cache is not None
        model = self.backend.model_identity(self.cache.hash_path)
        if model is None and self.cache.model_identity is None:
            raise CacheError(
                f"giellm: backend {self.backend!r} cannot identify its model: set model_identity in the "
                "cache config (e.g. the served GGUF's SHA-256, or org/model@commit), or turn the cache off"
            )
        return {
            "backend": f"{type(self.backend).__module__}.{type(self.backend).__qualname__}",
            "model": model,
            "declared_model": self.cache.model_identity,
            "settings": self.backend.generation_settings(),
            "task": self.task.to_dict(),
            "instruction": self.instruction,
            "label_scores": bool(self.score_cats and isinstance(self.backend, LabelScoring)),
        }

    def _generate(
        self, prompts: List[str], markers: Optional[Dict[str, str]] = None
    ) -> Tuple[List[str], Optional[List[Dict[str, float]]]]:
        """Outputs (and, given `markers`, label scores), in the calls
        `generation_calls` lays out: `batch_size` prompts of like length
        at a time."""
        outputs: List[str] = [""] * len(prompts)
        scores: List[Dict[str, float]] = [{} for _ in prompts]
        for batch in generation_calls(prompts, self.batch_size):
            batch_prompts = [prompts[k] for k in batch]
            if markers:
                generated, rows = self.backend.generate_scored(batch_prompts, list(markers))
            else:
                generated, rows = self.backend.generate(batch_prompts), []
            if len(generated) != len(batch) or (markers and len(rows) != len(batch)):
                raise RuntimeError(
                    f"giellm: backend returned {len(generated)} outputs for {len(batch)} prompts"
                )
            for j, (k, output) in enumerate(zip(batch, generated)):
                outputs[k] = output
                if markers:
                    scores[k] = {markers.get(m, m): p for m, p in rows[j].items()}
        return outputs, (scores if markers else None)

    def _prompt_tokens(self, texts: List[str]) -> List[int]:
        prompts = [build_input(t, self.task, self.instruction) for t in texts]
        if self.cache is not None:  # so that a re-run need not load the model to count
            return self.cache.prompt_tokens(self._cache_context(), prompts, self.backend.count_prompt_tokens)
        return self.backend.count_prompt_tokens(prompts)

    def _label_scores(self, prompts: List[str]) -> Optional[List[Dict[str, float]]]:
        """Real label probabilities where the backend can give them, by label."""
        labels = self._label_markers()
        if not labels or not isinstance(self.backend, LabelScoring) or not prompts:
            return None
        rows = self.backend.label_scores(prompts, list(labels))
        return [{labels.get(marker, marker): score for marker, score in row.items()} for row in rows]

    def _annotate(self, doc: Doc, prediction: DocPrediction) -> int:
        if self.task.text_labels:
            # update, not replace: several giellm pipes (topic, sentiment) share doc.cats
            doc.cats.update(prediction.cats(self.task.text_labels))
        found = prediction.found
        if self.split_tokens:
            offsets = [(m.start, m.end) for m in found.entities + found.sentiments]
            offsets += [o for rels in (found.relations, found.events) for rel in rels for o in rel.offsets if o is not None]
            self.stats["split_tokens"] += split_tokens_at(doc, offsets)  # type: ignore[arg-type]
        maker = SpanMaker(doc, "strict" if self.split_tokens else self.alignment_mode)
        spans = {
            kind: [sp for m in getattr(found, kind) if (sp := maker.span(m.start, m.end, m.label)) is not None]  # type: ignore[arg-type]
            for kind in GROUPS
        }
        self.stats["misaligned"] += len(maker.misaligned)
        # Only the kind this pipe's instruction produces: a TCREE task has a
        # relation and an event level, and a pipe for one must not wipe what
        # another giellm pipe wrote for the other.
        kind = self._word_kind
        if kind in GROUPS:
            doc.spans[GROUPS[kind]] = spans[kind]
            if kind == "entities":
                doc.ents = self._merge_ents(doc, spans[kind])
        elif kind in TUPLE_KINDS:
            set_tuples(doc, kind, getattr(found, kind))
        if self.store_output:
            doc._.giellm_output = {
                "outputs": [part.output for part in prediction.parts],
                "problems": prediction.problems,
                "not_found": prediction.not_found,
                "misaligned": [list(o) for o in maker.misaligned],
            }
        return len(prediction.problems) + len(prediction.not_found) + len(maker.misaligned)

    def _merge_ents(self, doc: Doc, ours: List[Span]) -> List[Span]:
        """doc.ents cannot overlap: the longest of overlapping generated
        entities wins (all are kept in doc.spans["giellm_entities"]); then the
        policy's span filter says whether ours or the pipeline's earlier
        entities win (`overwrite`: only ours)."""
        ours = filter_spans(ours)
        if self._ents_filter is None:
            return ours
        return sorted(self._ents_filter(doc.ents, ours), key=lambda s: s.start)

    def score(self, examples: Iterable[Any], **kwargs: Any) -> Dict[str, Any]:
        if self.scorer is None:
            return {}
        return self.scorer(examples, task=self.task, **kwargs)

    # The weights are not part of what a component writes: the config keeps
    # the model reference (hub id or path) and the backend loads it on first
    # use. What is saved is the task (`exclude=["task"]` leaves it out) and,
    # where the backend's model file lies inside the pipeline directory (a
    # pipeline made by `python -m spacy_giellm package`), a reference to it
    # relative to the component's directory (model.json), which `from_disk`
    # resolves: the directory, or the package made from it, can be moved.
    # A model file outside the pipeline is left to the config, as given.
    _model_from_disk = False  # the backend's model file was set by from_disk

    def to_disk(self, path: Union[str, Path], *, exclude: Sequence[str] = ()) -> None:
        path = ensure_path(path)
        path.mkdir(parents=True, exist_ok=True)
        serializers = {
            "task.json": lambda p: p.write_text(
                json.dumps(self.task.to_dict(), ensure_ascii=False, indent=2), encoding="utf8"
            ),
            MODEL_REF: self._write_model_ref,
        }
        util.to_disk(path, serializers, exclude)

    def from_disk(self, path: Union[str, Path], *, exclude: Sequence[str] = ()) -> "GiellmComponent":
        def load_task(task_file: Path) -> None:
            if task_file.exists():
                where = str(task_file)
                self._set_task(Task.from_dict(load_json_text(task_file.read_text(encoding="utf8"), where), source=where))

        util.from_disk(ensure_path(path), {"task.json": load_task, MODEL_REF: self._read_model_ref}, exclude)
        return self

    def _write_model_ref(self, ref_file: Path) -> None:
        """model.json: where the backend's model file is, relative to the
        component's directory if it is inside the pipeline directory (the
        component directory's parent). A model file that from_disk set keeps
        being referred to (absolute if no longer inside), so a loaded package
        saved elsewhere still finds its model (loading it then needs
        SPACY_GIELLM_ALLOW_MODEL_OUTSIDE_PIPELINE=1: a model.json leading out
        of the pipeline is refused otherwise); any other is the config's."""
        model_path = getattr(self.backend, "model_path", None)
        ref: Optional[str] = None
        if model_path:
            model_file = Path(model_path).expanduser().resolve()
            component_dir = ref_file.parent.resolve()
            if component_dir.parent in model_file.parents:
                ref = Path(os.path.relpath(model_file, component_dir)).as_posix()
            elif self._model_from_disk:
                ref = str(model_file)
        if ref is None:
            if ref_file.exists():  # left by an earlier save of another pipeline here
                ref_file.unlink()
            return
        ref_file.write_text(json.dumps({"model_path": ref}, ensure_ascii=False, indent=2) + "\n", encoding="utf8")

    def _read_model_ref(self, ref_file: Path) -> None:
        """Point the backend at the model file model.json names (resolved
        against the component's directory): fails now, naming both, if it is
        not there."""
        if not ref_file.exists():
            return
        try:
            ref = json.loads(ref_file.read_text(encoding="utf8"))
        except ValueError as e:
            raise ValueError(f"giellm: {ref_file}: not valid JSON ({e})") from e
        model_path = ref.get("model_path") if isinstance(ref, dict) else None
        if not isinstance(model_path, str) or not model_path:
            raise ValueError(f"giellm: {ref_file}: 'model_path' must be a non-empty string, got {model_path!r}")
        # absolute: a later chdir must not lose it (spacy.load("relative/dir"))
        model_file = Path(os.path.abspath(ref_file.parent / model_path))
        pipeline_dir = os.path.realpath(ref_file.parent.parent)
        inside = os.path.commonpath([pipeline_dir, os.path.realpath(model_file)]) == pipeline_dir
        if not inside and os.environ.get(ALLOW_OUTSIDE_ENV) != "1":
            # never opened: a pipeline from elsewhere must not make us read
            # (and quote) any file it names
            raise ValueError(
                f"giellm: {ref_file} names the model file {model_path!r}, outside the pipeline directory "
                f"{pipeline_dir}: refusing to open it. If you trust this pipeline, set {ALLOW_OUTSIDE_ENV}=1"
            )
        if not model_file.is_file():
            raise FileNotFoundError(
                f"giellm: {ref_file} names the model file {model_path!r}, which is not there ({model_file}): "
                "the pipeline directory is incomplete"
            )
        if not point_at_model_file(self.backend, model_file):
            logger.warning(
                "giellm: %s: the pipeline's model file %s is not used, since the backend %r takes no model_path",
                self.name, model_file, self.backend,
            )
            return
        self._model_from_disk = True

    def to_bytes(self, *, exclude: Sequence[str] = ()) -> bytes:
        if "task" in exclude:
            return b""
        return json.dumps(self.task.to_dict(), ensure_ascii=False).encode("utf8")

    def from_bytes(self, data: bytes, *, exclude: Sequence[str] = ()) -> "GiellmComponent":
        if "task" not in exclude and data:
            self._set_task(Task.from_dict(load_json_text(data.decode("utf8"), "giellm: task bytes")))
        return self

    def _set_task(self, task: Task) -> None:
        self.task = task
        self._bind_backend()


def add_giellm(nlp: Language, task: Task, backend: Dict[str, Any], name: str, **options: Any) -> Any:
    """Add a `giellm` component for `task` (a Task is passed as its dict)
    on the `backend` block (`backends.build.backend_config`) to `nlp`."""
    from .backends.build import register_backends

    register_backends()

    config = {"task": task.to_dict(), "backend": backend, **options}
    return nlp.add_pipe("giellm", name=name, config=config)
