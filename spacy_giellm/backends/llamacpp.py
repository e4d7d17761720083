"""llama.cpp backend (`giellm.LlamaCpp.v1`) through llama-cpp-python.

llama_cpp is imported, and the GGUF file validated and loaded, on the first
`generate` (or an explicit `.load()`). The file is checked in Python first
(`validate_gguf`) because llama.cpp aborts the whole process on some malformed
files.

Decoding is plain greedy: after feeding the prompt, the argmax of the last
logits is taken until an end-of-generation token or `max_new_tokens`. No
llama.cpp sampler is involved, so results match transformers' greedy
`generate` on the same weights (up to float rounding).

Generation and label scoring run in the backend's own llama.cpp context
(`llamacpp_batch.SequenceBatcher`): up to `n_parallel` prompts decode together
as separate sequences of one batch, in a KV cache of `n_ctx` cells shared by
all of them (a prompt is admitted while prompt + max_new_tokens fits). The
`Llama` object's own context is only used for tokenizing, so it is kept small.
With `constrained = true` the argmax is taken over the tokens that keep to
the task's output format for that prompt's text (`constraints`), and
(`jump_forward = true`, the default) the tokens the format forces (the
Instruction Word, the rest of a text label) are appended without a decoding
step each (`SequenceBatcher.generate(jump=...)`).

The prompt is tokenized like transformers does it: BOS added if the GGUF says
so (`tokenizer.ggml.add_bos_token`, copied from the HF tokenizer by the
converter), and special-token text such as "</s>" in the prompt parsed as the
special token. The new tokens are decoded like transformers' SentencePiece
tokenizers with `skip_special_tokens=True`: control/unknown tokens dropped, a
run of byte-fallback tokens that is not valid UTF-8 becomes one U+FFFD per
byte.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from ..registry import giellm_backends
from ..util import busy_cores, cpuinfo
from .base import LocalModelBackend, loaded_attribute
from .gguf_check import validate_gguf
from .settings import LlamaCppSettings

logger = logging.getLogger("spacy_giellm")

__all__ = ["LlamaCppBackend", "make_llamacpp_backend", "physical_cores", "default_threads"]


def physical_cores() -> int:
    """Number of physical cores this process may run on.

    Counts distinct (physical id, core id) pairs in /proc/cpuinfo among the CPUs
    in the process's affinity mask, so SMT siblings count once. Falls back to
    the size of the affinity mask (or os.cpu_count()) where /proc/cpuinfo has
    no topology (macOS, Windows, some ARM kernels).
    """
    try:
        allowed: Optional[Set[int]] = set(os.sched_getaffinity(0))  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        allowed = None
    n_logical = len(allowed) if allowed else (os.cpu_count() or 1)
    cores = set()
    for info in cpuinfo() or ():
        if "processor" not in info or "core id" not in info:
            continue
        try:
            proc = int(info["processor"])
        except ValueError:
            continue
        if allowed is not None and proc not in allowed:
            continue
        cores.add((info.get("physical id", "0"), info["core id"]))
    if not cores:
        return max(1, n_logical)
    return max(1, min(len(cores), n_logical))


@functools.lru_cache(maxsize=None)
def default_threads() -> int:
    """llama.cpp's thread count where `n_threads` is not given: the physical
    cores less the cores other processes keep busy (the 1-minute load
    average, rounded), at least 1. Chosen once per process.

    llama.cpp's threads wait for each other at every step, so one of them
    descheduled by another process stalls them all: with a busy process on a
    2-core machine, 2 threads ran the tiny test model at 4-24 docs/s against
    250 with 1 thread. On the same machine idle, the fine-tuned Gemma 3 270M
    (Q8_0) ran 5.1 docs/s with 2 threads against 2.9 with 1, so an idle
    machine keeps every core (benchmarks/batching-and-bf16.md, "Threads on an idle 2-core machine"). Set
    `n_threads` to choose."""
    cores = physical_cores()
    busy = int(busy_cores() + 0.5)
    chosen = max(1, cores - busy)
    logger.info("giellm.LlamaCpp.v1: n_threads %d (%d physical cores, load %d); set n_threads to choose", chosen, cores, busy)
    return chosen


def _max_sequences() -> int:
    import llama_cpp

    return int(llama_cpp.llama_max_parallel_sequences())


class LlamaCppBackend(LocalModelBackend):
    """Greedy generation with a GGUF model through llama-cpp-python."""

    backend_name = "giellm.LlamaCpp.v1"
    _repr_fields = (("model_path", "model_path"),)

    settings_class = LlamaCppSettings

    def __init__(
        self,
        model_path: str,
        n_ctx: int = 2048,
        n_threads: Optional[int] = None,
        n_gpu_layers: int = 0,
        max_new_tokens: int = 256,
        seed: int = 0,
        verbose: bool = False,
        n_parallel: int = 32,
        constrained: bool = False,
        task: Optional[Any] = None,
        prompt_lookup: int = 0,
        jump_forward: bool = True,
        stop_loops: bool = True,
        flash_attn: bool = True,
    ) -> None:
        self._configure_from(locals())  # LlamaCppSettings validates

    def _setup(self, settings: LlamaCppSettings, task: Any) -> None:
        self._settings = settings
        self._llm: Any = None
        self._engine_: Any = None
        self._unload()
        self._stats: Dict[str, int] = {"steps": 0, "drafted": 0, "kept": 0, "jumped": 0, "loops_stopped": 0}
        if task is not None:
            self.bind_task(task)

    def _unload(self) -> None:
        super()._unload()
        self.close()
        self._meta: Dict[str, Any] = {}
        self._n_vocab = 0
        self._eog: Set[int] = set()
        self._skip: Set[int] = set()
        self._byte: Set[int] = set()
        self._pieces: Dict[int, bytes] = {}
        self._strip_leading_space = False

    llama = loaded_attribute("_llm", "The underlying `llama_cpp.Llama` (loads if needed).")

    @property
    def metadata(self) -> Dict[str, Any]:
        """What `validate_gguf` read from the file (loads if needed)."""
        self.load()
        return dict(self._meta)

    def _loaded_model(self) -> Any:
        return self._llm

    def load(self) -> "LlamaCppBackend":
        """Validate the GGUF file and load it. Idempotent."""
        if self._llm is not None:
            return self
        path = Path(self.model_path).expanduser()
        meta = validate_gguf(path)  # FileNotFoundError / ValueError naming the path
        try:
            import llama_cpp
        except ImportError as e:
            raise ImportError(
                "giellm.LlamaCpp.v1 needs llama-cpp-python: pip install 'spacy-giellm[llamacpp]'"
            ) from e
        n_threads = self.n_threads if self.n_threads else default_threads()
        try:
            # one loaded model per file and settings in the process (`shared`):
            # several components on one GGUF share its weights
            from .shared import shared_llama

            llm = shared_llama(
                path,
                n_ctx=min(self.n_ctx, 256),  # tokenizing only: decoding has its own context
                n_batch=min(512, self.n_ctx, 256),
                n_threads=n_threads,
                n_threads_batch=n_threads,
                n_gpu_layers=self.n_gpu_layers,
                seed=self.seed,
                logits_all=False,
                verbose=self.verbose,
            )
        except (ValueError, RuntimeError, OSError) as e:
            raise ValueError(f"giellm.LlamaCpp.v1: llama.cpp could not load {str(path)!r}: {e}") from e

        n_vocab = llm.n_vocab()
        vocab = llm._model.vocab
        attr_control = int(getattr(llama_cpp, "LLAMA_TOKEN_ATTR_CONTROL", 1 << 3))
        attr_unknown = int(getattr(llama_cpp, "LLAMA_TOKEN_ATTR_UNKNOWN", 1 << 1))
        attr_byte = int(getattr(llama_cpp, "LLAMA_TOKEN_ATTR_BYTE", 1 << 5))
        eog, skip, byte = set(), set(), set()
        for t in range(n_vocab):
            attr = int(llama_cpp.llama_vocab_get_attr(vocab, t))
            if llama_cpp.llama_vocab_is_eog(vocab, t):
                eog.add(t)
            if attr & (attr_control | attr_unknown):
                skip.add(t)
            if attr & attr_byte:
                byte.add(t)
        eos = llm.token_eos()
        if eos is not None and eos >= 0:
            eog.add(int(eos))
        if not eog:
            raise ValueError(f"giellm.LlamaCpp.v1: {str(path)!r} defines no end-of-generation token")

        self._llm = llm
        self._meta = meta
        self._n_vocab = n_vocab
        self._eog = eog
        self._skip = skip | eog
        self._byte = byte
        # transformers' Llama tokenizers with add_prefix_space strip one leading
        # space when decoding; mirror that so both backends return the same text.
        self._strip_leading_space = bool(meta.get("add_space_prefix")) and meta.get("tokenizer_model") == "llama"
        return self

    def close(self) -> None:
        """Free the llama.cpp model and contexts."""
        if self._engine_ is not None:
            self._engine_.close()
            self._engine_ = None
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    # --------------------------------------------------------------- tokenizing

    def encode_prompt(self, prompt: str) -> List[int]:
        """Prompt ids: BOS as the GGUF says, special-token text parsed (like transformers)."""
        llm = self.llama
        add_bos = self._meta.get("add_bos_token")
        add_bos = True if add_bos is None else bool(add_bos)
        return llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)

    def count_tokens(self, text: str, add_special_tokens: bool = True) -> int:
        llm = self.llama
        if add_special_tokens:
            return len(self.encode_prompt(text))
        return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def count_prompt_tokens(self, prompts: Sequence[str]) -> List[int]:
        return [len(self.encode_prompt(p)) for p in prompts]

    def max_prompt_tokens(self) -> int:
        # one sequence alone in the KV cache: its prompt and all its new
        # tokens, or its prompt and the scratch tokens that score the task's
        # text labels (freed before the output grows: the larger of the two)
        return self.n_ctx - max(self.max_new_tokens, self._label_scratch_bound())

    def _label_scratch_bound(self) -> int:
        """An upper bound on the scratch cells that scoring the bound task's
        label markers takes beside a prompt (each marker's tokens after its
        first): the markers' bytes, as a token holds at least one. A bound,
        not a count, so that the limit needs no model loaded (counting
        prompts from the response cache loads none); its slack only matters
        where it passes max_new_tokens."""
        if self.task is None or not self.task.text_labels:
            return 0
        from ..format import label_marker

        return sum(len(label_marker(label).encode("utf-8")) for label in self.task.text_labels)

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            import llama_cpp

            vocab = self._llm._model.vocab
            size = 64
            while True:
                buf = ctypes.create_string_buffer(size)
                n = llama_cpp.llama_token_to_piece(vocab, llama_cpp.llama_token(token), buf, size, 0, False)
                if n >= 0:
                    piece = buf.raw[:n]
                    break
                size = -n + 1
            # decoding the outputs as they grow (the loop stop) asks again
            self._pieces[token] = piece
        return piece

    def decode(self, ids: Sequence[int]) -> str:
        """Decode generated ids like transformers' decode(skip_special_tokens=True)."""
        self.load()
        out: List[str] = []
        run = bytearray()
        run_len = 0

        def flush() -> None:
            nonlocal run, run_len
            if run_len:
                try:
                    out.append(bytes(run).decode("utf-8"))
                except UnicodeDecodeError:
                    out.append("\ufffd" * run_len)
                run = bytearray()
                run_len = 0

        for t in ids:
            t = int(t)
            if t in self._skip:
                continue
            piece = self._piece(t)
            if t in self._byte:
                run += piece
                run_len += 1
                continue
            flush()
            out.append(piece.decode("utf-8", errors="replace"))
        flush()
        text = "".join(out)
        if self._strip_leading_space and text.startswith(" "):
            text = text[1:]
        return text

    # --------------------------------------------------------------- generation

    def _engine(self, n_seq: int, cells: int = 0):
        """The decoding context, with room for at least `n_seq` sequences
        and `cells` KV cells (at least n_ctx); a larger one is made when a
        call needs it, never a smaller one."""
        from .llamacpp_batch import SequenceBatcher

        self.load()
        cells = max(self.n_ctx, cells)
        engine = self._engine_
        if engine is None or engine.n_seq < n_seq or engine.n_ctx < cells:
            if engine is not None:
                n_seq, cells = max(n_seq, engine.n_seq), max(cells, engine.n_ctx)
                engine.close()
                self._engine_ = None
            n_threads = self.n_threads if self.n_threads else default_threads()
            self._engine_ = SequenceBatcher(self._llm, n_ctx=cells, n_seq=n_seq, n_threads=n_threads,
                                            flash_attn=self.flash_attn)
        return self._engine_

    def _engine_for(self, cand_ids: List[List[int]], tokens: Sequence[Sequence[int]] = ()):
        """The decoding context for n_parallel prompts, each with a scratch
        sequence per multi-token candidate (as many as llama.cpp allows),
        and KV cells for the worst case of the n_parallel longest `tokens`
        (prompts) decoding together: each reserves its prompt and
        max_new_tokens (or its candidates' scratch tokens, the larger).
        n_ctx alone would hold n_ctx / (prompt + max_new_tokens) of them."""
        per = 1 + sum(len(ids) > 1 for ids in cand_ids)
        # every sequence needs a KV cell: no more of them than n_ctx
        n_seq = max(per, min(self.n_parallel * per, _max_sequences(), self.n_ctx))
        extra = sum(len(ids) - 1 for ids in cand_ids if len(ids) > 1)
        longest = sorted((len(t) for t in tokens), reverse=True)[: max(1, n_seq // per)]
        cells = sum(min(self.n_ctx, n + max(self.max_new_tokens, extra)) for n in longest)
        return self._engine(n_seq, -(-cells // 256) * 256)

    def _picker(self, prompts: Sequence[str]):
        """(pick, jump): pick(k, logits) -> the greedy next token of prompt k;
        jump(k, at_most) -> the tokens its constraint forces next (None when
        unconstrained: then nothing is forced)."""
        import numpy as np

        from ..constraints import TOP_K

        if not self.constrained:
            return (lambda k, logits: int(np.argmax(logits))), None
        constrainer = self._prompt_constrainer()
        automata = [constrainer(p) for p in prompts]
        states = [a.start() for a in automata]

        def jump(k: int, at_most: int) -> List[int]:
            tokens, states[k] = automata[k].forced(states[k], at_most)
            return tokens

        def pick(k: int, logits) -> int:
            automaton, state = automata[k], states[k]
            # a model that keeps to the format mostly wants an allowed token:
            # one argmax (not a partial sort of the vocabulary) finds it
            best = int(np.argmax(logits))
            after = automaton.advance(state, best)
            if after is not None:
                states[k] = after
                return best
            # the best few tokens next (stable: ties go to the lower id, as argmax)
            top = np.argpartition(-logits, TOP_K)[:TOP_K] if len(logits) > TOP_K else np.arange(len(logits))
            top = top[np.argsort(-logits[top], kind="stable")]
            token = automaton.pick(state, top.tolist())
            if token is None:
                allowed = automaton.allowed_array(state)
                token = int(allowed[int(np.argmax(logits[allowed]))])
            states[k] = automaton.advance(state, token)
            return token

        return pick, (jump if self.jump_forward else None)

    def _prompt_ids(self, prompts: Sequence[str]) -> List[List[int]]:
        tokens = []
        limit = self.max_prompt_tokens()
        for prompt in prompts:
            ids = self.encode_prompt(prompt)
            if not ids:
                raise ValueError("giellm.LlamaCpp.v1: empty prompt and no BOS token to start from")
            if len(ids) > limit:  # else its output would be cut short, silently
                raise ValueError(
                    f"giellm.LlamaCpp.v1: prompt of {len(ids)} tokens does not fit n_ctx={self.n_ctx} "
                    f"with max_new_tokens={self.max_new_tokens} (at most {limit} prompt tokens; "
                    "raise n_ctx, or shorten the text)"
                )
            tokens.append(ids)
        return tokens

    def _run(self, prompts: Sequence[str], cand_ids: Optional[List[List[int]]] = None):
        """(new ids per prompt, candidate log-probabilities or None) in one pass."""
        prompts = list(prompts)
        if not prompts:
            return [], ([] if cand_ids is not None else None)
        self.load()
        tokens = self._prompt_ids(prompts)
        engine = self._engine_for(cand_ids or [], tokens)
        draft = PromptLookup(tokens, self.prompt_lookup) if self.prompt_lookup else None
        pick, jump = self._picker(prompts)
        return engine.generate(tokens, self.max_new_tokens, self._eog.__contains__, pick, parallel=self.n_parallel,
                               candidates=cand_ids, draft=draft, stats=self._stats, jump=jump,
                               stop=self._loop_stopper(prompts))

    def _may_end_piece(self, new: List[int]) -> bool:
        """Whether one of `new` holds the byte of a `;`, or the last byte of
        a `；` (EF BC 9B)."""
        return any(b";" in p or b"\x9b" in p for p in map(self._piece, new))

    def token_pass_seconds(self, n_tokens: int = 256) -> Dict[str, float]:
        """Seconds per token of one pass over `n_tokens` tokens of one
        sequence: "prompt" without the output head (as prefill runs all but
        the last prompt token), "generated" with it (as every decoded token
        needs its logits). The best llama.cpp's kernels do on this machine:
        the bench's ceiling for any batching (a decoding step of a few rows
        runs the same matmuls slower)."""
        engine = self._engine(1)
        return {"prompt": engine.time_pass(n_tokens, all_logits=False),
                "generated": engine.time_pass(n_tokens, all_logits=True)}

    def decoding_stats(self, reset: bool = False) -> Dict[str, int]:
        """Sequence steps decoded, tokens drafted and drafted tokens kept
        since the last reset."""
        stats = dict(self._stats)
        if reset:
            self._stats.update(dict.fromkeys(self._stats, 0))
        return stats

    def generate_ids(self, prompts: Sequence[str]) -> List[List[int]]:
        """Greedy new-token ids per prompt, without the prompt and without the final EOS."""
        return self._run(prompts)[0]

    def _generate_scored_ids(self, prompts: List[str], cand_ids: List[List[int]]):
        return self._run(prompts, cand_ids)

    # ------------------------------------------------------ task and labels

    def _candidate_ids(self, candidate: str) -> List[int]:
        """A candidate's own tokens, as training appends an output: no BOS."""
        return self.llama.tokenize(candidate.encode("utf-8"), add_bos=False, special=True)

    def _token_vocab(self):
        from ..constraints import TokenVocab

        self.load()
        pieces = [None if t in self._skip else self._piece(t) for t in range(self._n_vocab)]
        return TokenVocab(pieces, self._eog)

    def _candidate_logprobs(self, prompts: List[str], cand_ids: List[List[int]]) -> List[List[float]]:
        """[prompt][candidate] summed log-probabilities: each prompt decoded
        once, up to n_parallel together; a candidate of several tokens
        continues a copy of its prompt's KV cells (`llama_memory_seq_cp`)."""
        self.load()
        tokens = self._prompt_ids(prompts)
        return self._engine_for(cand_ids, tokens).score(tokens, cand_ids)

    # ------------------------------------------------------ response cache

    def _stored_task_paths(self) -> List[Tuple[str, str]]:
        return [("model", self.model_path)]

    def model_identity(self, hash_path) -> Dict[str, Any]:
        """The GGUF file's SHA-256 (`base.ModelIdentity`)."""
        return {"gguf_sha256": hash_path(str(Path(self.model_path).expanduser()))}

    def _key_extras(self) -> Dict[str, Any]:
        from .base import package_versions

        return {"versions": package_versions("llama_cpp_python")}


# The class is the registered function: its __init__ is the config schema.
make_llamacpp_backend = giellm_backends.register("giellm.LlamaCpp.v1", func=LlamaCppBackend)


class PromptLookup:
    """Drafts for `SequenceBatcher.generate`: what followed, in the prompt,
    the last few generated tokens (GIELLM outputs copy the Instruction Word,
    label markers and entity strings from the prompt). The longest match of
    up to `max_ngram` tokens wins; of equal ones, the latest."""

    def __init__(self, prompts: Sequence[Sequence[int]], num_tokens: int, max_ngram: int = 3) -> None:
        self.prompts = [list(p) for p in prompts]
        self.num_tokens = num_tokens
        self.max_ngram = max_ngram
        # per prompt: n-gram -> the position just after its latest occurrence
        self._index: List[Dict[tuple, int]] = []
        for ids in self.prompts:
            index: Dict[tuple, int] = {}
            for n in range(1, max_ngram + 1):
                for i in range(len(ids) - n):
                    index[tuple(ids[i : i + n])] = i + n
            self._index.append(index)

    def __call__(self, k: int, generated: List[int]) -> List[int]:
        index = self._index[k]
        for n in range(min(self.max_ngram, len(generated)), 0, -1):
            after = index.get(tuple(generated[-n:]))
            if after is not None:
                return self.prompts[k][after : after + self.num_tokens]
        return []
