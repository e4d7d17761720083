"""The `giellm` spaCy component: Doc -> prompt -> backend -> parse -> align.

It only orchestrates: the format lives in `format`, offsets in `align`, the
model in a backend from the `giellm_backends` registry.
"""
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from spacy.language import Language
from spacy.pipeline import Pipe
from spacy.tokens import Doc, Span
from spacy.util import ensure_path, filter_spans, minibatch

from .align import SpanMaker, StringLocator, split_tokens_at
from .annotation import Annotation, Mention, Relation
from .backends.base import TokenCounting
from .format import build_input, parse_output
from .tasks import Task, get_task

logger = logging.getLogger("spacy_giellm")

SENTIMENT_GROUP = "giellm_sentiment"
ENTITY_GROUP = "giellm_entities"
# Relations and events live in user_data as plain tuples so that DocBin and
# pickling keep them; `doc._.relations` rebuilds Spans from the offsets.
_USER_DATA_KEY = "giellm"
ENTS_POLICIES = ("overwrite", "merge", "keep")

DEFAULT_CONFIG: Dict[str, Any] = {
    "task": "scnm",
    "instruction": None,
    "backend": {"@giellm_backends": "giellm.HF.v1", "model": ""},
    "batch_size": 16,
    "ents": "overwrite",
    "alignment_mode": "strict",
    "split_tokens": False,
    "store_output": False,
    "max_chars": 1000,
    "score_cats": True,
    "scorer": {"@scorers": "giellm.scorer.v1"},
}


@dataclass(frozen=True)
class RelationRecord:
    """A relation or event on a Doc: its label and arguments, each a Span
    where the argument was found in the text, else the generated string."""

    label: str
    args: Tuple[Union[Span, str], ...]

    @property
    def head(self) -> Union[Span, str]:
        return self.args[0]

    @property
    def tail(self) -> Union[Span, str]:
        return self.args[-1]


def _stored(kind: str) -> Callable[[Doc], List[RelationRecord]]:
    def getter(doc: Doc) -> List[RelationRecord]:
        records = []
        for label, args in doc.user_data.get((_USER_DATA_KEY, kind), ()):
            spans: List[Union[Span, str]] = []
            for text, start, end in args:
                span = doc.char_span(start, end, alignment_mode="expand") if start is not None else None
                spans.append(span if span is not None else text)
            records.append(RelationRecord(label, tuple(spans)))
        return records

    return getter


def _store(kind: str) -> Callable[[Doc, Iterable[Any]], None]:
    def setter(doc: Doc, value: Iterable[Any]) -> None:
        stored = []
        for record in value or ():
            args = []
            for arg in record.args:
                if isinstance(arg, Span):
                    args.append((arg.text, arg.start_char, arg.end_char))
                else:
                    args.append((str(arg), None, None))
            stored.append((record.label, tuple(args)))
        doc.user_data[(_USER_DATA_KEY, kind)] = stored

    return setter


for _kind in ("relations", "events"):
    if not Doc.has_extension(_kind):
        Doc.set_extension(_kind, getter=_stored(_kind), setter=_store(_kind))
if not Doc.has_extension("giellm_output"):
    Doc.set_extension("giellm_output", default=None)


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
        batch_size: int = 16,
        ents: str = "overwrite",
        alignment_mode: str = "strict",
        split_tokens: bool = False,
        store_output: bool = False,
        max_chars: int = 1000,
        score_cats: bool = True,
        scorer: Optional[Callable] = None,
    ) -> None:
        if ents not in ENTS_POLICIES:
            raise ValueError(f"giellm: ents must be one of {ENTS_POLICIES}, got {ents!r}")
        if alignment_mode not in ("strict", "contract", "expand"):
            raise ValueError(f"giellm: alignment_mode must be strict, contract or expand, got {alignment_mode!r}")
        if batch_size < 1 or max_chars < 1:
            raise ValueError("giellm: batch_size and max_chars must be positive")
        if not callable(getattr(backend, "generate", None)):
            raise TypeError(f"giellm: backend {backend!r} has no generate(prompts) method")
        self.vocab = vocab
        self.name = name
        self.task = get_task(task)
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
        self.stats: Counter = Counter()
        self._bind_backend()

    def _bind_backend(self) -> None:
        """Tell a backend that can use it (constrained decoding) which task it serves."""
        bind = getattr(self.backend, "bind_task", None)
        if callable(bind):
            bind(self.task, self.instruction)

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
        return next(iter(self.pipe([doc])))

    def pipe(self, stream: Iterable[Doc], *, batch_size: Optional[int] = None) -> Iterator[Doc]:
        # GiNZA sets nlp.batch_size to 1000: that many docs are gathered, and
        # generation runs over them in batches of our own batch_size.
        for docs in minibatch(stream, size=max(batch_size or 0, self.batch_size)):
            yield from self._process(list(docs))

    def _process(self, docs: List[Doc]) -> List[Doc]:
        units: List[Tuple[int, int, str]] = []
        for i, doc in enumerate(docs):
            if doc.text.strip():
                units.extend((i, start, text) for start, text in self._chunks(doc))
        skipped: Dict[int, str] = {}
        if isinstance(self.backend, TokenCounting):
            units = self._fit_to_context(docs, units, skipped)
        prompts = [build_input(text, self.task, self.instruction) for _, _, text in units]
        outputs = self._generate(prompts)
        scores = self._label_scores(prompts)
        per_doc: Dict[int, List[Tuple[int, str, str, Optional[Dict[str, float]]]]] = {}
        for k, ((i, start, text), output) in enumerate(zip(units, outputs)):
            per_doc.setdefault(i, []).append((start, text, output, scores[k] if scores else None))
        problems_in_batch = 0
        for i, doc in enumerate(docs):
            if i in skipped:
                # returned as it came, with the reason where the output would be
                doc._.giellm_output = {"skipped": skipped[i], "outputs": [], "problems": [],
                                       "not_found": [], "misaligned": []}
                continue
            problems_in_batch += self._annotate(doc, per_doc.get(i, []))
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
        return docs

    def _generate(self, prompts: List[str]) -> List[str]:
        # Prompts of like length share a generation batch: less padding.
        order = sorted(range(len(prompts)), key=lambda k: len(prompts[k]))
        outputs: List[str] = [""] * len(prompts)
        for batch in minibatch(order, size=self.batch_size):
            batch = list(batch)
            generated = self.backend.generate([prompts[k] for k in batch])
            if len(generated) != len(batch):
                raise RuntimeError(
                    f"giellm: backend returned {len(generated)} outputs for {len(batch)} prompts"
                )
            for k, output in zip(batch, generated):
                outputs[k] = output
        return outputs

    def _label_scores(self, prompts: List[str]) -> Optional[List[Dict[str, float]]]:
        """Real label probabilities where the backend can give them."""
        scorer = getattr(self.backend, "label_scores", None)
        if not self.score_cats or scorer is None or not self.task.text_labels or not prompts:
            return None
        return scorer(prompts, [f"<{label}>" for label in self.task.text_labels])

    def _chunks(self, doc: Doc) -> List[Tuple[int, str]]:
        """(char offset, text) parts of at most max_chars, cut at sentence
        ends where possible, so that no text is silently truncated."""
        text = doc.text
        if len(text) <= self.max_chars:
            return [(0, text)]
        self.stats["split_docs"] += 1
        if doc.has_annotation("SENT_START"):
            bounds = [sent.end_char for sent in doc.sents]
        else:
            bounds = [m.end() for m in re.finditer(r"[。！？!?\n]+", text)] + [len(text)]
        token_ends = [t.idx + len(t.text) for t in doc]
        chunks, start, last_end = [], 0, 0
        for end in sorted(set(bounds)):
            if end - start <= self.max_chars:
                last_end = end
                continue
            if last_end > start:
                chunks.append((start, last_end))
                start = last_end
            while end - start > self.max_chars:  # one sentence too long: cut at a token end
                cut = max((e for e in token_ends if start < e <= start + self.max_chars), default=start + self.max_chars)
                chunks.append((start, cut))
                self.stats["hard_cuts"] += 1
                start = cut
            last_end = end
        if last_end > start:
            chunks.append((start, last_end))
        return [(s, text[s:e]) for s, e in chunks if text[s:e].strip()]

    def _fit_to_context(
        self, docs: List[Doc], units: List[Tuple[int, int, str]], skipped: Dict[int, str]
    ) -> List[Tuple[int, int, str]]:
        """Cut the parts whose prompt the backend cannot take (by its own token
        count: max_chars is only a first cut, and 1,000 emoji are 4,000
        tokens) at sentence or token ends until they fit. A doc with a part
        that no cut makes fit goes into `skipped` with the reason."""
        limit = self.backend.max_prompt_tokens()
        counts = self._prompt_tokens([text for _, _, text in units])
        fitted: List[Tuple[int, int, str]] = []
        for (i, start, text), n in zip(units, counts):
            if n <= limit:
                fitted.append((i, start, text))
                continue
            self.stats["token_splits"] += 1
            parts = self._split_to_fit(docs[i], start, start + len(text), limit)
            if parts is None:
                skipped.setdefault(i, (
                    f"a part of {len(text)} chars needs {n} prompt tokens, the backend takes {limit} "
                    "(its context less max_new_tokens), and no sentence or token end splits it to fit"
                ))
            else:
                fitted.extend((i, s, docs[i].text[s:e]) for s, e in parts)
        return [u for u in fitted if u[0] not in skipped]

    def _prompt_tokens(self, texts: List[str]) -> List[int]:
        prompts = [build_input(t, self.task, self.instruction) for t in texts]
        return self.backend.count_prompt_tokens(prompts)

    def _split_to_fit(self, doc: Doc, start: int, end: int, limit: int) -> Optional[List[Tuple[int, int]]]:
        """doc.text[start:end] halved (at the sentence end, else the token end,
        nearest the middle) until every part's prompt fits; None if a single
        token does not fit. Tokens are never cut: a mention could not be placed."""
        cuts = []
        if doc.has_annotation("SENT_START"):
            cuts = [s.end_char for s in doc.sents if start < s.end_char < end]
        if not cuts:
            cuts = [t.idx + len(t.text) for t in doc if start < t.idx + len(t.text) < end]
        if not cuts:
            return None
        mid = min(cuts, key=lambda c: abs(2 * c - start - end))
        halves = [(a, b) for a, b in ((start, mid), (mid, end)) if doc.text[a:b].strip()]
        parts: List[Tuple[int, int]] = []
        for (a, b), n in zip(halves, self._prompt_tokens([doc.text[a:b] for a, b in halves])):
            sub = [(a, b)] if n <= limit else self._split_to_fit(doc, a, b, limit)
            if sub is None:
                return None
            parts.extend(sub)
        return parts

    def _annotate(self, doc: Doc, parts: List[Tuple[int, str, str, Optional[Dict[str, float]]]]) -> int:
        problems: List[str] = []
        not_found: List[str] = []
        entities: List[Tuple[str, int, int]] = []
        sentiments: List[Tuple[str, int, int]] = []
        tuples: Dict[str, List[Tuple[str, Tuple[Tuple[str, Optional[int], Optional[int]], ...]]]] = {
            "relations": [],
            "events": [],
        }
        label_votes: Counter = Counter()
        for start, text, output, scores in parts:
            parsed = parse_output(output, self.task, text=text)
            self.stats["generations"] += 1
            problems.extend(parsed.problems)
            ann = parsed.annotation
            if scores:
                for label, score in scores.items():
                    label_votes[label.strip("<>")] += score * len(text)
            elif ann.label is not None:
                label_votes[ann.label] += len(text)
            locator = StringLocator(text)
            for kind, out in (("entities", entities), ("sentiments", sentiments)):
                locator.prev = None
                for m in getattr(ann, kind):
                    hit = locator.locate(m.text)
                    if hit is None:
                        not_found.append(m.text)
                    else:
                        out.append((m.label, start + hit[0], start + hit[1]))
            for kind in ("relations", "events"):
                for rel in getattr(ann, kind):
                    args = []
                    for arg in rel.args:
                        hit = locator.locate(arg, ordered=False)
                        if hit is None:
                            not_found.append(arg)
                            args.append((arg, None, None))
                        else:
                            args.append((doc.text[start + hit[0] : start + hit[1]], start + hit[0], start + hit[1]))
                    tuples[kind].append((rel.label, tuple(args)))
        self.stats["problems"] += len(problems)
        self.stats["not_found"] += len(not_found)

        if self.task.text_labels:
            total = sum(label_votes.values())
            # update, not replace: several giellm pipes (topic, sentiment) share doc.cats
            doc.cats.update(
                {label: (label_votes[label] / total if total else 0.0) for label in self.task.text_labels}
            )
        if self.split_tokens:
            offsets = [(s, e) for _, s, e in entities + sentiments]
            offsets += [(s, e) for rels in tuples.values() for _, args in rels for _, s, e in args if s is not None]
            self.stats["split_tokens"] += split_tokens_at(doc, offsets)
        maker = SpanMaker(doc, "strict" if self.split_tokens else self.alignment_mode)
        entity_spans = [sp for label, s, e in entities if (sp := maker.span(s, e, label)) is not None]
        sentiment_spans = [sp for label, s, e in sentiments if (sp := maker.span(s, e, label)) is not None]
        self.stats["misaligned"] += len(maker.misaligned)
        # Only the kind this pipe's instruction produces: a TCREE task has a
        # relation and an event level, and a pipe for one must not wipe what
        # another giellm pipe wrote for the other.
        kind = self._word_kind
        if kind == "entities":
            doc.spans[ENTITY_GROUP] = entity_spans
            doc.ents = self._merge_ents(doc, entity_spans)
        elif kind == "sentiments":
            doc.spans[SENTIMENT_GROUP] = sentiment_spans
        elif kind in tuples:
            doc.user_data[(_USER_DATA_KEY, kind)] = tuples[kind]
        if self.store_output:
            doc._.giellm_output = {
                "outputs": [output for _, _, output, _ in parts],
                "problems": problems,
                "not_found": not_found,
                "misaligned": [list(o) for o in maker.misaligned],
            }
        return len(problems) + len(not_found) + len(maker.misaligned)

    def _merge_ents(self, doc: Doc, ours: List[Span]) -> List[Span]:
        """doc.ents cannot overlap: the longest of overlapping generated
        entities wins (all are kept in doc.spans["giellm_entities"]); then the
        policy says whether ours or the pipeline's earlier entities win."""
        ours = filter_spans(ours)
        if self.ents_policy == "overwrite":
            return ours
        theirs = list(doc.ents)
        first, second = (ours, theirs) if self.ents_policy == "merge" else (theirs, ours)
        taken = {i for span in first for i in range(span.start, span.end)}
        return sorted(
            first + [s for s in second if not taken.intersection(range(s.start, s.end))],
            key=lambda s: s.start,
        )

    def score(self, examples: Iterable[Any], **kwargs: Any) -> Dict[str, Any]:
        if self.scorer is None:
            return {}
        return self.scorer(examples, task=self.task, **kwargs)

    # The weights are not part of the pipeline directory: the config keeps the
    # model reference (hub id or path) and the backend loads it on first use.
    def to_disk(self, path: Union[str, Path], *, exclude: Sequence[str] = ()) -> None:
        path = ensure_path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "task.json").write_text(
            json.dumps(self.task.to_dict(), ensure_ascii=False, indent=2), encoding="utf8"
        )

    def from_disk(self, path: Union[str, Path], *, exclude: Sequence[str] = ()) -> "GiellmComponent":
        task_file = ensure_path(path) / "task.json"
        if task_file.exists():
            self.task = Task.from_dict(json.loads(task_file.read_text(encoding="utf8")), source=str(task_file))
            self._bind_backend()
        return self

    def to_bytes(self, *, exclude: Sequence[str] = ()) -> bytes:
        return json.dumps(self.task.to_dict(), ensure_ascii=False).encode("utf8")

    def from_bytes(self, data: bytes, *, exclude: Sequence[str] = ()) -> "GiellmComponent":
        self.task = Task.from_dict(json.loads(data.decode("utf8")))
        self._bind_backend()
        return self


def annotation_from_doc(doc: Doc, task: Optional[Task] = None) -> Annotation:
    """What a Doc says, as an Annotation: gold docs (cats, ents, span groups,
    relations/events) and docs the component annotated read the same way.
    With a task, only its labels count (GiNZA's own ENE entities do not)."""
    text_labels = set(task.text_labels) if task else None
    cats = {k: v for k, v in doc.cats.items() if text_labels is None or k in text_labels}
    label = max(cats, key=cats.get) if cats and max(cats.values()) > 0 else None

    def mentions(spans: Iterable[Span], kind: str) -> List[Mention]:
        allowed = None
        if task is not None:
            levels = [wl for wl in task.word_levels if wl.kind == kind]
            if not levels:
                return []
            allowed = set(levels[0].labels) or None
        return [
            Mention(s.label_, s.text, s.start_char, s.end_char)
            for s in spans
            if allowed is None or s.label_ in allowed
        ]

    def relations(kind: str) -> List[Relation]:
        out = []
        for rel_label, args in doc.user_data.get((_USER_DATA_KEY, kind), ()):
            out.append(Relation(rel_label, tuple(a[0] for a in args), tuple(
                (a[1], a[2]) if a[1] is not None else None for a in args
            )))
        return out

    return Annotation(
        text=doc.text,
        task=task.name if task else None,
        label=label,
        entities=mentions(doc.ents, "entities"),
        sentiments=mentions(doc.spans.get(SENTIMENT_GROUP, []), "sentiments"),
        relations=relations("relations"),
        events=relations("events"),
    )
