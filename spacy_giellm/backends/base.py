import math
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

from .settings import Configurable


@runtime_checkable
class Backend(Protocol):
    """What the `giellm` component needs from a model.

    `generate` returns one output string per prompt, in order: only the newly
    generated text, without the prompt and without special tokens. Greedy
    unless the backend was configured otherwise; generation stops at EOS or
    after the backend's max-new-tokens bound.
    """

    def generate(self, prompts: List[str]) -> List[str]:
        ...


@runtime_checkable
class TokenCounting(Protocol):
    """A backend that knows its prompt budget. The component uses it to split
    a doc whose prompt would not fit, and to skip (and report) a doc that
    cannot be split to fit, instead of failing the whole batch."""

    def count_prompt_tokens(self, prompts: Sequence[str]) -> List[int]:
        """Tokens each prompt takes, as `generate` feeds it (BOS included)."""
        ...

    def max_prompt_tokens(self) -> int:
        """The longest prompt that still leaves room for max_new_tokens."""
        ...


@runtime_checkable
class TaskBinding(Protocol):
    """A backend that wants to know the task (and instruction word) of the
    prompts it gets, e.g. for constrained decoding. The component binds its
    task once, when it is made."""

    def bind_task(self, task: Any, instruction: Optional[str] = None) -> None:
        ...


@runtime_checkable
class ModelTasks(Protocol):
    """A backend that can say which tasks its model was trained on (stored
    with the model by `train` / `export-gguf`, `stored_tasks`): the
    component's `task` may then name one of them, as it names a built-in."""

    def model_task_sources(self) -> List[Tuple[str, Dict[str, Any]]]:
        """(where, tasks by name) for each place the model keeps tasks, the
        one to prefer first; empty if it keeps none."""
        ...


@runtime_checkable
class LabelScoring(Protocol):
    """A backend that can score the text-label candidates of each prompt:
    the component's `doc.cats` then holds real probabilities."""

    def label_scores(self, prompts: Sequence[str], candidates: Sequence[str]) -> List[Dict[str, float]]:
        """P(candidate | prompt) for each prompt, normalized over `candidates`."""
        ...


@runtime_checkable
class ScoredGeneration(Protocol):
    """A backend that scores the text-label candidates in the same pass that
    generates: the component then never runs a prompt twice."""

    def generate_scored(
        self, prompts: Sequence[str], candidates: Sequence[str]
    ) -> Tuple[List[str], List[Dict[str, float]]]:
        """(`generate(prompts)`, `label_scores(prompts, candidates)`), in one pass."""
        ...


def generation_calls(prompts: Sequence[str], batch_size: int) -> List[List[int]]:
    """The prompts' indices in each `generate` call the component makes:
    `batch_size` at a time, prompts of like length together (less padding
    for a padding backend). Not all in one call for llama.cpp's continuous
    batching either: calls of 100 prompts ran 0.85x the docs/s of calls of
    64, and those 0.86x calls of 32, its `n_parallel` (benchmarks/
    decoding-ceiling.md, "Calls of n_parallel prompts")."""
    order = sorted(range(len(prompts)), key=lambda k: len(prompts[k]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


LoopStop = Callable[[int, List[int]], Optional[int]]


def loop_stopper(task: Any, prompts: Sequence[str], decode: Callable[[List[int]], str],
                 may_end_piece: Callable[[List[int]], bool], stats: Dict[str, int]) -> LoopStop:
    """stop(k, tokens) for a decoding loop: None while prompt k's output
    goes on, else how many of its `tokens` to keep: those before its run of
    looping pieces (`prediction.LoopStop`), cut where a token boundary meets
    the run's start (where a token straddles it, decoding goes on). A
    prompt not in the task's form is never stopped.

    `may_end_piece(new)`: whether the tokens generated since the last call
    could complete a piece (one holds a `;`, or a byte of `；`): only then is
    the output decoded and looked at. `stats["loops_stopped"]` counts stops."""
    from ..format import parse_input
    from ..prediction import LoopStop as Watcher

    watchers: List[Optional[Watcher]] = []
    for prompt in prompts:
        try:
            watchers.append(Watcher(task, parse_input(prompt, task)[0]))
        except ValueError:
            watchers.append(None)
    looked = [0] * len(prompts)  # tokens looked at per prompt

    def stop(k: int, tokens: List[int]) -> Optional[int]:
        watcher, new = watchers[k], tokens[looked[k]:]
        looked[k] = len(tokens)
        # a piece is complete once the next one's `:label;` follows it
        if watcher is None or not may_end_piece(new):
            return None
        output = decode(tokens)
        cut = watcher.check(output)
        if cut is None:
            return None
        for n in range(len(tokens), -1, -1):
            text = decode(tokens[:n])
            if len(text) <= cut:
                if text != output[:cut]:
                    return None
                stats["loops_stopped"] = stats.get("loops_stopped", 0) + 1
                return n
        return None

    return stop


def loaded_attribute(attr: str, doc: str) -> Any:
    """A read-only property giving `attr` after `self.load()` (which loads
    the model on first use)."""

    def get(self: Any) -> Any:
        self.load()
        return getattr(self, attr)

    return property(get, doc=doc)


class LocalModelBackend(Configurable):
    """What the in-process backends (transformers, llama.cpp) share: the task
    binding that constrained decoding needs, the tasks stored with the model,
    and label scoring around the backend's own `_candidate_logprobs`.
    Subclasses provide `settings_class`, `_setup`, `generate_ids`, `decode`,
    `_candidate_ids`, `_token_vocab`, `_candidate_logprobs`,
    `_stored_task_paths`, and for the loop stop a `stop_loops` setting, a
    `_stats` dict and `_may_end_piece`."""

    backend_name = "giellm backend"
    # (shown as, attribute) of what `repr` names
    _repr_fields: Tuple[Tuple[str, str], ...] = ()
    task: Any = None
    _vocab: Any = None
    _constrainer: Any = None
    _task_sources: Optional[Tuple[List[Tuple[str, str]], List[Tuple[str, Dict[str, Any]]]]] = None

    def _loaded_model(self) -> Any:
        """The loaded model object, or None before `load()`."""
        raise NotImplementedError

    def _may_end_piece(self, new: List[int]) -> bool:
        """Whether the token ids `new` could complete a piece (`loop_stopper`)."""
        raise NotImplementedError

    def _loop_stopper(self, prompts: Sequence[str]) -> Optional[LoopStop]:
        """`loop_stopper` for the prompts of one call; None (no stopping)
        without `stop_loops` or a bound task."""
        if not self.stop_loops or self.task is None:
            return None
        return loop_stopper(self.task, prompts, self.decode, self._may_end_piece, self._stats)

    @property
    def is_loaded(self) -> bool:
        return self._loaded_model() is not None

    def __repr__(self) -> str:
        fields = "".join(f"{name}={getattr(self, attr)!r}, " for name, attr in self._repr_fields)
        return f"{type(self).__name__}({fields}{'loaded' if self.is_loaded else 'not loaded'})"

    def _unload(self) -> None:
        """Forget the vocabulary and constraints of the model loaded so far."""
        self._vocab = None
        self._constrainer = None

    def generate(self, prompts: List[str]) -> List[str]:
        """Greedy continuation of each prompt: only the new text, special tokens removed."""
        return [self.decode(ids) for ids in self.generate_ids(prompts)]  # type: ignore[attr-defined]

    def bind_task(self, task: Any, instruction: Optional[str] = None) -> None:
        """The task whose format constrained decoding keeps to (the component
        calls this): a name may be one the model was trained on."""
        from ..tasks import get_task

        self.task = get_task(task, self.model_task_sources)  # the instruction is read from each prompt
        self._constrainer = None

    def _stored_task_paths(self) -> List[Tuple[str, str]]:
        """(what, local path) of the files or directories that may store the
        model's tasks, the one to prefer first (an adapter before its base)."""
        return []

    def model_task_sources(self) -> List[Tuple[str, Dict[str, Any]]]:
        """The tasks the model was trained on (`ModelTasks`); read once per
        model path (`from_disk` may point the backend at another file)."""
        paths = self._stored_task_paths()
        if self._task_sources is None or self._task_sources[0] != paths:
            from .stored_tasks import model_task_sources

            self._task_sources = (paths, [source for what, path in paths for source in model_task_sources(path, what)])
        return self._task_sources[1]

    def _prompt_constrainer(self) -> Any:
        if self._constrainer is None:
            if self.task is None:
                raise ValueError(
                    f"{self.backend_name}: constrained=true needs a task: set 'task', "
                    "or use the backend in a giellm component"
                )
            from ..constraints import PromptConstrainer

            if self._vocab is None:
                self._vocab = self._token_vocab()  # type: ignore[attr-defined]
            self._constrainer = PromptConstrainer(self.task, self._vocab, self._candidate_ids)  # type: ignore[attr-defined]
        return self._constrainer

    def label_scores(self, prompts: Sequence[str], candidates: Sequence[str]) -> List[Dict[str, float]]:
        """P(candidate | prompt) for each prompt, normalized over `candidates`:
        the softmax of each candidate's summed token log-probabilities."""
        prompts, candidates = list(prompts), list(candidates)
        if not prompts:
            return []
        if not candidates:
            return [{} for _ in prompts]
        rows = self._candidate_logprobs(prompts, self._all_candidate_ids(candidates))  # type: ignore[attr-defined]
        return [dict(zip(candidates, _softmax(row))) for row in rows]

    def generate_scored(
        self, prompts: Sequence[str], candidates: Sequence[str]
    ) -> Tuple[List[str], List[Dict[str, float]]]:
        """`generate(prompts)` and `label_scores(prompts, candidates)`, from
        one prompt pass where the backend has `_generate_scored_ids`."""
        prompts, candidates = list(prompts), list(candidates)
        if not candidates:
            return self.generate(prompts), [{} for _ in prompts]
        ids, rows = self._generate_scored_ids(prompts, self._all_candidate_ids(candidates))
        return [self.decode(i) for i in ids], [dict(zip(candidates, _softmax(row))) for row in rows]  # type: ignore[attr-defined]

    def _generate_scored_ids(self, prompts: List[str], cand_ids: List[List[int]]) -> Tuple[List[List[int]], List[List[float]]]:
        """(new ids, candidate log-probabilities): two passes unless a backend does better."""
        return self.generate_ids(prompts), self._candidate_logprobs(prompts, cand_ids)  # type: ignore[attr-defined]

    def _all_candidate_ids(self, candidates: List[str]) -> List[List[int]]:
        cand_ids = [self._candidate_ids(c) for c in candidates]  # type: ignore[attr-defined]
        for c, ids in zip(candidates, cand_ids):
            if not ids:
                raise ValueError(f"{self.backend_name}: candidate {c!r} has no tokens")
        return cand_ids


def _softmax(row: Sequence[float]) -> List[float]:
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


@runtime_checkable
class ModelIdentity(Protocol):
    """A backend that can say which model it runs and with which settings:
    the component's response cache (`spacy_giellm.cache`) keys on both, so
    that a changed model file or setting never returns a stale answer."""

    def model_identity(self, hash_path: Callable[[str], str]) -> Optional[Dict[str, Any]]:
        """Plain JSON data that changes whenever the weights, tokenizer or
        adapter do: content hashes of local files and directories (through
        `hash_path`, which remembers them), a hub id with the commit loaded.
        None: the backend cannot tell (a server); the cache then needs the
        identity declared in its own config."""
        ...

    def generation_settings(self) -> Dict[str, Any]:
        """Plain JSON data of every setting that can change an output, even
        by float rounding (max_new_tokens, constrained decoding, dtype,
        device, batching, the library versions...); not thread counts.
        The built-in backends derive it from their settings' OUTPUTS fields
        (`settings`)."""
        ...


def package_versions(*names: str) -> Dict[str, Optional[str]]:
    """Installed versions of `names` (None where missing), without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    found: Dict[str, Optional[str]] = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found
