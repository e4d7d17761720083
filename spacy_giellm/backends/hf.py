"""Hugging Face transformers backend (`giellm.HF.v1`).

Constructing the backend is cheap: torch / transformers / peft are imported and
the weights loaded on the first `generate` (or an explicit `.load()`).

Tokenization rule shared with training: the prompt is tokenized with the
tokenizer's default special tokens (BOS for Llama tokenizers); the output is
whatever the model generates after it, up to EOS. Training tokenizes the
output without special tokens and appends EOS, so the two agree.

`constrained = true` keeps every step to the task's output format for that
prompt's text, applying the LM head only to the tokens allowed there
(`hf_decode.constrained_greedy`; with `jump_forward`, the tokens the format
forces are fed without a pick); for labels of any characters, or a model
whose head is not a plain linear layer (an adapter with a LoRA on the head),
it masks the full head's logits under `generate`
(`hf_constraints.HFConstraintProcessor`). The task comes from the giellm
component (`bind_task`) or the `task` setting.
`label_scores` gives real text-label probabilities from the model.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..registry import giellm_backends
from .base import LocalModelBackend, loaded_attribute
from .hf_decode import cache_argument, loop_stopping_criteria, output_cache
from .hf_files import check_model_files, looks_like_local_path, resolve_device, resolve_dtype
from .settings import HFSettings

__all__ = ["HFBackend", "make_hf_backend", "resolve_device", "resolve_dtype"]


class HFBackend(LocalModelBackend):
    """Greedy batched generation with a transformers causal LM (+ optional LoRA)."""

    backend_name = "giellm.HF.v1"
    _repr_fields = (("model", "model_name"), ("adapter", "adapter"))

    settings_class = HFSettings
    # settings read under another name: `model` and `device` are the loaded ones
    _aliases = {"model": "model_name", "device": "device_name", "dtype": "dtype_name"}

    def __init__(
        self,
        model: str,
        adapter: Optional[str] = None,
        merge_adapter: bool = False,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 16,
        max_new_tokens: int = 256,
        trust_remote_code: bool = False,
        use_safetensors_only: bool = True,
        constrained: bool = False,
        task: Optional[Any] = None,
        jump_forward: bool = True,
        stop_loops: bool = True,
    ) -> None:
        self._configure_from(locals())  # HFSettings validates

    def _setup(self, settings: HFSettings, task: Any) -> None:
        self._settings = settings
        self._unload()
        self._stats: Dict[str, int] = {"jumped": 0, "loops_stopped": 0}
        if task is not None:
            self.bind_task(task)

    def _unload(self) -> None:
        super()._unload()
        self._tokenizer: Any = None
        self._model: Any = None
        self._device: Optional[str] = None
        self._eos_ids: List[int] = []
        self._token_text: Dict[int, str] = {}  # token id -> its text alone (`_may_end_piece`)
        self.__dict__.pop("_hub_revisions", None)

    # ------------------------------------------------------------------ loading

    tokenizer = loaded_attribute("_tokenizer", "The transformers tokenizer (loads the backend if needed).")
    model = loaded_attribute("_model", "The transformers model, in eval mode, on `self.device` (loads if needed).")

    @property
    def device(self) -> str:
        self.load()
        assert self._device is not None
        return self._device

    def _source(self) -> str:
        """The string to hand to from_pretrained; checks local paths first."""
        name = self.model_name
        if looks_like_local_path(name):
            path = Path(name).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"giellm.HF.v1: model path does not exist: {str(path)!r}")
            if path.is_dir() and not (path / "config.json").is_file():
                raise FileNotFoundError(
                    f"giellm.HF.v1: {str(path)!r} is not a transformers model directory (no config.json)"
                )
            if path.is_dir():
                check_model_files(path)
            return str(path)
        return name

    def _loaded_model(self) -> Any:
        return self._model

    def load(self) -> "HFBackend":
        """Load tokenizer, model and adapter now. Idempotent."""
        if self._model is not None:
            return self
        source = self._source()
        adapter_source = self._adapter_source()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = resolve_device(self.device_name)
        torch_dtype = resolve_dtype(self.dtype_name, device)
        is_local = os.path.exists(source)
        where = f"local path {source!r}" if is_local else f"Hugging Face Hub id {source!r}"
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=self.trust_remote_code)
        except OSError as e:
            raise OSError(
                f"giellm.HF.v1: could not load the tokenizer for {where}"
                + ("" if is_local else " (is the id right, and is the Hub reachable or the model cached?)")
                + f": {e}"
            ) from e
        except Exception as e:  # a corrupt file the checks above do not know (tokenizer.model...)
            raise ValueError(
                f"giellm.HF.v1: could not load the tokenizer for {where} ({type(e).__name__}: {e}): "
                "re-export the model, or download it again"
            ) from e
        kwargs: Dict[str, Any] = {
            "dtype": torch_dtype,
            "trust_remote_code": self.trust_remote_code,
        }
        if self.use_safetensors_only:
            kwargs["use_safetensors"] = True
        try:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except OSError as e:
            hint = ""
            if self.use_safetensors_only:
                hint = " (only .safetensors weights are accepted; set use_safetensors_only=false to allow .bin)"
            raise OSError(f"giellm.HF.v1: could not load the model from {where}{hint}: {e}") from e

        if adapter_source is not None:
            model = self._attach_adapter(model, adapter_source)
        model.to(device)
        model.eval()

        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is not None:
                tokenizer.pad_token = tokenizer.eos_token
            elif tokenizer.unk_token is not None:
                tokenizer.pad_token = tokenizer.unk_token
            else:
                raise ValueError(
                    f"giellm.HF.v1: tokenizer of {source!r} has no pad, eos or unk token to pad batches with"
                )
        tokenizer.padding_side = "left"

        eos: List[int] = []
        for cand in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
            if cand is None:
                continue
            for tid in cand if isinstance(cand, (list, tuple)) else [cand]:
                if tid is not None and int(tid) not in eos:
                    eos.append(int(tid))
        if not eos:
            raise ValueError(f"giellm.HF.v1: neither model nor tokenizer of {source!r} defines an EOS token")

        self._tokenizer = tokenizer
        self._model = model
        self._device = device
        self._eos_ids = eos
        return self

    def _adapter_source(self) -> Optional[str]:
        if self.adapter is None:
            return None
        if looks_like_local_path(self.adapter):
            path = Path(self.adapter).expanduser()
            if not path.is_dir():
                raise FileNotFoundError(f"giellm.HF.v1: adapter directory does not exist: {str(path)!r}")
            if not (path / "adapter_config.json").is_file():
                raise FileNotFoundError(
                    f"giellm.HF.v1: {str(path)!r} is not a PEFT adapter directory (no adapter_config.json)"
                )
            check_model_files(path)
            return str(path)
        return self.adapter

    def _attach_adapter(self, model, adapter: str):
        try:
            from peft import PeftModel
        except ImportError as e:
            raise ImportError(
                "giellm.HF.v1: loading an adapter needs peft: pip install 'spacy-giellm[peft]'"
            ) from e
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                peft_model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
            except OSError as e:
                raise OSError(f"giellm.HF.v1: could not load the adapter {adapter!r}: {e}") from e
            except (RuntimeError, ValueError, KeyError, TypeError) as e:
                raise ValueError(
                    f"giellm.HF.v1: the adapter {adapter!r} does not fit the base model "
                    f"{self.model_name!r} (was it trained on a different base?): {e}"
                ) from e
        for w in caught:
            msg = str(w.message)
            if "missing adapter keys" in msg:
                raise ValueError(
                    f"giellm.HF.v1: the adapter {adapter!r} does not fit the base model "
                    f"{self.model_name!r} (was it trained on a different base?): {msg}"
                )
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if self.merge_adapter:
            return peft_model.merge_and_unload()
        return peft_model

    # --------------------------------------------------------------- tokenizing

    def encode_prompt(self, prompt: str) -> List[int]:
        """Prompt token ids, with the tokenizer's default special tokens (BOS)."""
        return list(self.tokenizer(prompt)["input_ids"])

    def count_tokens(self, text: str, add_special_tokens: bool = True) -> int:
        """Number of tokens in `text` (prompts: keep add_special_tokens=True)."""
        return len(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def count_prompt_tokens(self, prompts: Sequence[str]) -> List[int]:
        return [len(ids) for ids in self.tokenizer(list(prompts))["input_ids"]] if prompts else []

    def max_prompt_tokens(self) -> int:
        """Positions the model was trained for, less max_new_tokens."""
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if not positions:  # e.g. a config without it: the tokenizer's limit, if it states one
            positions = getattr(self.tokenizer, "model_max_length", None)
        if not positions or positions > 1 << 40:  # transformers' "no limit" placeholder is 1e30
            return 1 << 40
        return int(positions) - self.max_new_tokens

    def decode(self, ids: Sequence[int]) -> str:
        """Decode generated ids the way `generate` does (special tokens dropped)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # --------------------------------------------------------------- generation

    def _generation_config(self):
        from transformers import GenerationConfig

        tok = self._tokenizer
        return GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=self.max_new_tokens,
            eos_token_id=self._eos_ids if len(self._eos_ids) > 1 else self._eos_ids[0],
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
        )

    def decoding_stats(self, reset: bool = False) -> Dict[str, int]:
        """Tokens appended by jump-forward, and outputs ended at a loop, since the last reset."""
        stats = dict(self._stats)
        if reset:
            self._stats.update(jumped=0, loops_stopped=0)
        return stats

    def _may_end_piece(self, new: List[int]) -> bool:
        """Whether one of `new` decodes to a `;` or `；`, or to part of a
        character (a byte token, which may be part of a `；`)."""
        pieces = self._token_text
        for t in new:
            if t not in pieces:
                pieces[t] = self._tokenizer.decode([t])
            if any(c in pieces[t] for c in ";；\ufffd"):
                return True
        return False

    def generate_ids(self, prompts: Sequence[str]) -> List[List[int]]:
        """Greedy new-token ids per prompt, without the prompt and without the final EOS."""
        prompts = list(prompts)
        if not prompts:
            return []
        self.load()
        results: List[List[int]] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            results.extend(self._generate_chunk(chunk, *self._encode(chunk)))
        return results

    def _encode(self, chunk: List[str]):
        """(input ids, attention mask, positions) of a left-padded batch,
        the positions as `generate` gives left-padded rows."""
        enc = self._tokenizer(chunk, return_tensors="pt", padding=True)
        ids, mask = enc["input_ids"].to(self._device), enc["attention_mask"].to(self._device)
        return ids, mask, (mask.long().cumsum(-1) - 1).clamp(min=0)

    def _generate_chunk(self, chunk: List[str], ids, mask, pos, cache: Any = None) -> List[List[int]]:
        """Greedy new ids for one batch; `cache` holds all but the last prompt
        token already (then only that token is run before decoding)."""
        import torch

        kwargs: Dict[str, Any] = {}
        stop = self._loop_stopper(chunk)
        if self.constrained:
            from .hf_decode import body_and_head, constrained_greedy

            constrainer = self._prompt_constrainer()
            automata = [constrainer(p) for p in chunk]
            # The head for the allowed tokens only; labels of any characters
            # allow nearly the whole vocabulary: there, mask the full head.
            if body_and_head(self._model) is not None and not any(a.automaton.free_labels for a in automata):
                return constrained_greedy(self._model, ids, mask, pos, automata, self.max_new_tokens,
                                          self._tokenizer.pad_token_id, cache=cache, jump=self.jump_forward,
                                          stats=self._stats, stop=stop)
            from transformers import LogitsProcessorList

            from .hf_constraints import HFConstraintProcessor

            kwargs["logits_processor"] = LogitsProcessorList([HFConstraintProcessor(automata)])
        if cache is not None:
            kwargs[cache_argument(self._model.generate)] = cache
        stopping = loop_stopping_criteria(stop, ids.shape[1], self._eos_ids) if stop is not None else None
        if stopping is not None:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList([stopping])
        with torch.inference_mode():
            out = self._model.generate(input_ids=ids, attention_mask=mask, generation_config=self._generation_config(),
                                       **kwargs)
        eos = set(self._eos_ids)
        results: List[List[int]] = []
        for k, row in enumerate(out[:, ids.shape[1] :].tolist()):
            if stopping is not None and k in stopping.kept:
                results.append(row[: stopping.kept[k]])
                continue
            new: List[int] = []
            for t in row:
                if t in eos:
                    break
                new.append(t)
            results.append(new)
        return results

    def _generate_scored_ids(self, prompts: List[str], cand_ids: List[List[int]]):
        """(new ids, candidate log-probabilities) with one prompt pass per
        batch: all but the last prompt token run once; a copy of their KV
        cache scores the candidates (each from the last prompt token on),
        the cache itself goes on into `generate`."""
        import copy

        import torch

        self.load()
        results: List[List[int]] = []
        rows: List[List[float]] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            ids, mask, pos = self._encode(chunk)
            cache = self._prefix_cache(ids, mask, pos)  # None for one-token prompts: nothing to share
            with torch.inference_mode():
                rows.extend(self._score_from_prefix(copy.deepcopy(cache), ids, mask, pos, cand_ids).tolist())
            results.extend(self._generate_chunk(chunk, ids, mask, pos, cache))
        return results, rows

    def _prefix_cache(self, ids, mask, pos) -> Any:
        """The KV cache of every prompt token but the last (None for one-token prompts)."""
        import torch

        if ids.shape[1] < 2:
            return None
        with torch.inference_mode():
            out = self._model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1], use_cache=True)
        return output_cache(out)

    # ------------------------------------------------------ task and labels

    def _candidate_ids(self, candidate: str) -> List[int]:
        """A candidate's own tokens, as training appends an output: no special tokens."""
        return list(self.tokenizer(candidate, add_special_tokens=False)["input_ids"])

    def _token_vocab(self):
        from .hf_constraints import token_vocab_from_hf

        return token_vocab_from_hf(self.tokenizer, eos_ids=self._eos_ids)

    def _candidate_logprobs(self, prompts: List[str], cand_ids: List[List[int]]) -> List[List[float]]:
        """[prompt][candidate] summed log-probabilities, a batch at a time.

        One forward pass over a batch of prompts gives every candidate's first
        token; candidates of several tokens then continue the prompts' KV
        cache, all of them in one more forward pass (the cache is repeated per
        candidate, the prompt is not recomputed)."""
        self.load()
        rows: List[List[float]] = []
        for start in range(0, len(prompts), self.batch_size):
            rows.extend(self._chunk_logprobs(prompts[start : start + self.batch_size], cand_ids).tolist())
        return rows

    def _chunk_logprobs(self, chunk: List[str], cand_ids: List[List[int]]):
        """[prompt, candidate] summed log-probabilities (float32)."""
        import torch

        ids, mask, pos = self._encode(chunk)
        cache = self._prefix_cache(ids, mask, pos)
        with torch.inference_mode():
            return self._score_from_prefix(cache, ids, mask, pos, cand_ids)

    def _score_from_prefix(self, cache: Any, ids, mask, pos, cand_ids: List[List[int]]):
        """[prompt, candidate] summed log-probabilities, from the KV cache of
        all but the last prompt token: each candidate is one row of the last
        prompt token and the candidate's tokens but its last, on a copy of
        its prompt's cache (`batch_repeat_interleave`; `cache` is consumed)."""
        import torch

        model, device = self._model, self._device
        n_prompts, n_cand = ids.shape[0], len(cand_ids)
        width = max(len(t) for t in cand_ids)
        rows = n_prompts * n_cand
        inputs = torch.full((rows, width), self._tokenizer.pad_token_id, dtype=torch.long)
        targets = torch.zeros((rows, width), dtype=torch.long)
        valid = torch.zeros((rows, width), dtype=mask.dtype)
        inputs[:, 0] = ids[:, -1].cpu().repeat_interleave(n_cand)
        for j, t in enumerate(cand_ids):
            inputs[j::n_cand, 1 : len(t)] = torch.tensor(t[:-1])
            targets[j::n_cand, : len(t)] = torch.tensor(t)
            valid[j::n_cand, : len(t)] = 1
        inputs, targets, valid = inputs.to(device), targets.to(device), valid.to(device)
        kwargs: Dict[str, Any] = {}
        past_mask = mask[:, :-1].repeat_interleave(n_cand, 0)
        if cache is not None:
            cache.batch_repeat_interleave(n_cand)
            kwargs[cache_argument(model.forward)] = cache
        out = model(
            input_ids=inputs,
            attention_mask=torch.cat([past_mask, valid], dim=1),
            position_ids=pos[:, -1:].repeat_interleave(n_cand, 0) + torch.arange(width, device=device),
            use_cache=False,
            **kwargs,
        )
        logits = out.logits.float()
        picked = logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)
        return (picked * valid).sum(-1).view(n_prompts, n_cand)

    # ------------------------------------------------------ response cache

    def _stored_task_paths(self) -> List[Tuple[str, str]]:
        """The adapter (what was trained) before the model it sits on; hub ids store none."""
        named = [("adapter", self.adapter), ("model", self.model_name)]
        return [(what, name) for what, name in named if name and looks_like_local_path(name)]

    def model_identity(self, hash_path) -> Dict[str, Any]:
        """The model's and adapter's identity (`base.ModelIdentity`): a local
        directory's file hashes, or a hub id with the commit it was loaded at."""
        return {
            "model": self._identify(self.model_name, "config.json", hash_path),
            "adapter": self._identify(self.adapter, "adapter_config.json", hash_path) if self.adapter else None,
        }

    def _identify(self, name: str, probe: str, hash_path) -> Dict[str, Any]:
        if looks_like_local_path(name):
            path = Path(name).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"giellm.HF.v1: model path does not exist: {str(path)!r}")
            return {"sha256": hash_path(str(path))}
        return {"hub_id": name, "revision": self._hub_revision(name, probe)}

    def _hub_revision(self, repo_id: str, probe: str) -> str:
        """The commit of `repo_id` that loading used: the local hub cache's
        snapshot, read after `load()` (which may have fetched a newer one)."""
        revisions = self.__dict__.setdefault("_hub_revisions", {})
        if repo_id not in revisions:
            self.load()
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(repo_id, probe)
            if not isinstance(found, str):
                raise ValueError(
                    f"giellm.HF.v1: cannot tell which commit of the hub model {repo_id!r} is loaded "
                    f"(no {probe} of it in the local Hugging Face cache): the response cache needs it; "
                    "use a local directory, or no cache"
                )
            revisions[repo_id] = Path(found).parent.name  # .../snapshots/<commit>/<probe>
        return revisions[repo_id]

    def _key_extras(self) -> Dict[str, Any]:
        """The device and dtype as resolved here (bf16 and fp32 differ), the library versions."""
        from .base import package_versions

        device = resolve_device(self.device_name)
        return {"device": device, "dtype": str(resolve_dtype(self.dtype_name, device)),
                "versions": package_versions("torch", "transformers", "peft")}

# The class is the registered function: its __init__ is the config schema.
make_hf_backend = giellm_backends.register("giellm.HF.v1", func=HFBackend)
