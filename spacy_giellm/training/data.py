"""JSONL training records -> tokenized causal-LM examples.

Records are the lines the corpora module writes: `{"text", "task", "input",
"output", ...}`, where `input` / `output` come from `format.to_pair`. This
module never builds training text itself.

Tokenization is the one the backends use at inference time:

    ids    = tokenizer(input)                               # default special tokens (BOS)
           + tokenizer(output, add_special_tokens=False)
           + [eos]
    labels = -100 over the input part, ids over output + eos

so the loss is on the output tokens only and the prompt the model is trained
on is, token for token, the prompt the HF backend feeds it. A sequence longer
than `max_length` is skipped and counted, never truncated.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from ..util import atomic_path

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
PathLike = Union[str, Path]


class TrainingDataError(ValueError):
    """The training data cannot be used (missing, empty, malformed)."""


def read_records(path: PathLike, tasks: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """The records of one JSONL file, optionally only those of `tasks`.

    Raises TrainingDataError for a missing or empty file, a line that is not
    a JSON object with string `input` / `output`, or a requested task with no
    record.
    """
    p = Path(path)
    if not p.is_file():
        raise TrainingDataError(f"training data file not found: {p}")
    records: List[Dict[str, Any]] = []
    with p.open(encoding="utf8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as err:
                raise TrainingDataError(f"{p}:{lineno}: not JSON: {err}") from err
            if not isinstance(rec, dict) or not all(
                isinstance(rec.get(k), str) for k in ("input", "output")
            ):
                raise TrainingDataError(f"{p}:{lineno}: a record needs string 'input' and 'output' fields")
            records.append(rec)
    if not records:
        raise TrainingDataError(f"{p} has no records")
    if tasks:
        wanted = set(tasks)
        missing = wanted - {r.get("task") for r in records}
        if missing:
            raise TrainingDataError(f"{p} has no examples for task(s) {sorted(missing)}")
        records = [r for r in records if r.get("task") in wanted]
    return records


@dataclass
class TokenizedData:
    examples: List[Dict[str, List[int]]]
    n_records: int
    too_long: int = 0
    max_length: int = 0
    longest: int = 0
    per_task: Dict[str, int] = field(default_factory=dict)
    too_long_per_task: Dict[str, int] = field(default_factory=dict)

    def summary(self) -> Dict[str, Any]:
        return {
            "records": self.n_records,
            "examples": len(self.examples),
            "too_long": self.too_long,
            "max_length": self.max_length,
            "longest": self.longest,
            "per_task": dict(self.per_task),
            "too_long_per_task": dict(self.too_long_per_task),
            "tokens": sum(len(e["input_ids"]) for e in self.examples),
        }


def encode_pair(tokenizer: Any, input_text: str, output_text: str) -> Dict[str, List[int]]:
    """One example: prompt ids (with the tokenizer's default special tokens),
    output ids, EOS; labels masked over the prompt."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise TrainingDataError("the tokenizer has no EOS token; generation could never stop")
    prompt = list(tokenizer(input_text)["input_ids"])
    answer = list(tokenizer(output_text, add_special_tokens=False)["input_ids"]) + [eos]
    return {
        "input_ids": prompt + answer,
        "labels": [IGNORE_INDEX] * len(prompt) + answer,
    }


def tokenize_records(
    records: Iterable[Dict[str, Any]], tokenizer: Any, max_length: int, name: str = "data"
) -> TokenizedData:
    """Tokenize records; those longer than `max_length` are skipped and counted."""
    examples: List[Dict[str, List[int]]] = []
    per_task: Counter = Counter()
    too_long: Counter = Counter()
    n = longest = 0
    for rec in records:
        n += 1
        ex = encode_pair(tokenizer, rec["input"], rec["output"])
        length = len(ex["input_ids"])
        longest = max(longest, length)
        task = str(rec.get("task", "?"))
        if length > max_length:
            too_long[task] += 1
            continue
        per_task[task] += 1
        examples.append(ex)
    if n == 0:
        raise TrainingDataError(f"{name}: no records")
    data = TokenizedData(
        examples, n, sum(too_long.values()), max_length, longest, dict(per_task), dict(too_long)
    )
    if not examples:
        raise TrainingDataError(
            f"{name}: all {n} sequences are longer than max_length={max_length} "
            f"(longest {longest} tokens); raise max_length"
        )
    return data


class PadCollator:
    """Dynamic right padding: input_ids with the pad id, labels with -100,
    attention_mask 0 over the padding."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: Optional[int] = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: List[Dict[str, List[int]]]) -> Dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = (width + m - 1) // m * m
        ids, labels, mask = [], [], []
        for f in features:
            pad = width - len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
        }


def pack_rows(lengths: Sequence[int], row_tokens: int = 0) -> List[List[int]]:
    """The indices of sequences of `lengths`, grouped into rows of at most
    `row_tokens` tokens (0: all in one row), first-fit over the sequences
    longest first; a sequence longer than `row_tokens` gets a row alone.
    Rows keep the order in which they were opened."""
    if row_tokens <= 0:
        return [list(range(len(lengths)))] if lengths else []
    rows: List[List[int]] = []
    room: List[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(row_tokens - lengths[i])
    return rows


class PackCollator:
    """Packing: the sequences of a batch laid end to end in rows (of at most
    `row_tokens` tokens; 0: one row), so that no compute goes to padding
    (only rows narrower than the widest are padded).

    No attention_mask: `position_ids` restart at 0 with every sequence, and
    transformers (>= 4.56, `masking_utils.find_packed_sequence_indices`)
    then keeps attention inside each sequence, in full and sliding-window
    layers alike, for sdpa and eager attention. The label of each sequence's
    first token is -100: no position predicts it from its own sequence, so
    the last token of the previous sequence never learns to predict it (in a
    padded batch it is never a target either: it is the prompt's BOS). Loss
    and gradients equal those of the padded batch up to float rounding
    (`tests/test_training.py`). A step still holds the same sequences."""

    def __init__(self, pad_token_id: int, row_tokens: int = 0):
        self.pad_token_id = pad_token_id
        self.row_tokens = row_tokens

    def __call__(self, features: List[Dict[str, List[int]]]) -> Dict[str, Any]:
        import torch

        rows = []
        for members in pack_rows([len(f["input_ids"]) for f in features], self.row_tokens):
            ids: List[int] = []
            labels: List[int] = []
            positions: List[int] = []
            for i in members:
                seq = list(features[i]["input_ids"])
                ids += seq
                labels += [IGNORE_INDEX] + list(features[i]["labels"])[1:]
                positions += range(len(seq))
            rows.append((ids, labels, positions))
        width = max(len(ids) for ids, _, _ in rows)
        # Padding (rows narrower than the widest) is a sequence of its own
        # (positions from 0), after every real token, labelled -100.
        return {
            "input_ids": torch.tensor([ids + [self.pad_token_id] * (width - len(ids)) for ids, _, _ in rows]),
            "labels": torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab, _ in rows]),
            "position_ids": torch.tensor([pos + list(range(width - len(pos))) for _, _, pos in rows]),
        }


def split_and_mix(
    datasets: Dict[str, PathLike],
    out_dir: PathLike,
    *,
    sizes: Optional[Dict[str, Optional[int]]] = None,
    dev: Union[int, float] = 0.05,
    test: Union[int, float] = 0.1,
    seed: int = 0,
    repeats: Optional[Dict[str, int]] = None,
) -> Dict[str, Any]:
    """Split each converted JSONL into train / dev / test, then mix the
    training parts with `sizes` records per dataset (None: all; fewer than
    asked: all, reported), each `repeats` times (default 1; dev and test are
    never repeated). Records sharing a text (TCREE's relation and event
    pairs) stay on the same side. Writes train/dev/test.jsonl to `out_dir`
    (records unchanged), each with the sidecar that defines its tasks (from
    the datasets' sidecars, else built-in), and returns the counts."""
    from ..corpora import sample_mix, split_train_dev_test
    from ..corpora.sidecar import corpus_task_sources, record_tasks, write_corpus_tasks
    from ..tasks import TaskResolver

    out = Path(out_dir)
    resolver = TaskResolver([s for _, path in sorted(datasets.items()) for s in corpus_task_sources(path)])
    parts: Dict[str, Dict[str, List[Dict[str, Any]]]] = {"train": {}, "dev": {}, "test": {}}
    for name, path in sorted(datasets.items()):
        records = read_records(path)
        by_text: Dict[str, List[Dict[str, Any]]] = {}
        for rec in records:
            by_text.setdefault(str(rec.get("text", rec["input"])), []).append(rec)
        groups = [by_text[t] for t in sorted(by_text)]
        tr, dv, te = split_train_dev_test(groups, dev, test, seed=seed)
        for split, chosen in (("train", tr), ("dev", dv), ("test", te)):
            parts[split][name] = [r for g in chosen for r in g]
    wanted = dict(sizes or {})  # a name that is not a dataset: sample_mix says so
    short = {
        k: len(parts["train"][k])
        for k, v in wanted.items()
        if k in parts["train"] and v is not None and v > len(parts["train"][k])
    }
    counts: Dict[str, Any] = {"seed": seed, "short_of_requested_size": short}
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        if split == "train":
            rows = sample_mix(parts[split], wanted, seed=seed, allow_fewer=True, repeats=repeats)
        else:
            rows = [r for name in sorted(parts[split]) for r in parts[split][name]]
        tasks, unknown = record_tasks(rows, resolver)
        if unknown:
            logger.warning(
                "mix: no definition of task(s) %s (no sidecar of their dataset defines them, nor are they "
                "built-in): %s.jsonl's sidecar leaves them out; later commands need --task for them",
                unknown, split,
            )
        with atomic_path(out / f"{split}.jsonl") as tmp, tmp.open("w", encoding="utf8") as f:
            for rec in rows:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            write_corpus_tasks(out / f"{split}.jsonl", tasks)  # before the records replace the file
        counts[split] = dict(Counter(str(r.get("task")) for r in rows))
    counts["tasks"] = {name: resolver.origins[name] for name in resolver.used}
    return counts


__all__ = [
    "split_and_mix",
    "IGNORE_INDEX",
    "TrainingDataError",
    "TokenizedData",
    "read_records",
    "encode_pair",
    "tokenize_records",
    "PadCollator",
    "PackCollator",
    "pack_rows",
]
