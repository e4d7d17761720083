"""Corpus readers and writers.

Every reader is called as `reader(path, *, task=..., skip_errors=False,
report=None, **options)` and yields `Annotation`s (task and text set,
offsets where the corpus has them). Malformed input raises `CorpusError`
(a ValueError) whose message starts with the file and line (or record);
with `skip_errors=True` the record is skipped and counted in the
`ReadReport` passed as `report`: nothing is dropped silently.

    from spacy_giellm.corpora import read_corpus
    annotations, report = read_corpus("stockmark-ner", "ner.json")

Readers: `jsonl` (the project's own schema, see `jsonl.py`), `pairs`
(formatted input/output pairs, CSV or JSONL), `docbin` (spaCy DocBin),
`stockmark-ner` (stockmark Wikipedia NER `ner.json`), `jrte-pn` (jrte-corpus
`pn.tsv`). `register_reader` adds one.

The tasks a corpus file's records name are defined in its sidecar
(`train.jsonl` -> `train.tasks.json`, `sidecar.py`): the writers write it,
the readers resolve record tasks against it (`tasks.TaskResolver`).
"""
from typing import Any, Callable, Dict, Iterator, List, Tuple

from ..annotation import Annotation
from ..docs import annotation_to_doc, char_nlp, doc_to_annotation
from .docbin import read_docbin, write_docbin
from .jrte import read_jrte_pn
from .jsonl import annotation_from_record, annotation_record, read_jsonl, write_jsonl
from .labels import infer_task_labels, tasks_from_gold
from .pairs import read_pairs
from .report import CorpusError, ReadReport
from .sampling import PAPER_SIZES, sample_mix, split_train_dev_test
from .sidecar import corpus_tasks, task_resolver, tasks_path, write_corpus_tasks
from .stockmark import read_stockmark_ner

Reader = Callable[..., Iterator[Annotation]]

READERS: Dict[str, Reader] = {
    "jsonl": read_jsonl,
    "pairs": read_pairs,
    "docbin": read_docbin,
    "stockmark-ner": read_stockmark_ner,
    "jrte-pn": read_jrte_pn,
}


def register_reader(name: str) -> Callable[[Reader], Reader]:
    """Decorator adding a reader under `name`."""

    def add(func: Reader) -> Reader:
        READERS[name] = func
        return func

    return add


def get_reader(name: str) -> Reader:
    if name not in READERS:
        raise KeyError(f"unknown reader {name!r}; readers: {', '.join(sorted(READERS))}")
    return READERS[name]


def read_corpus(name: str, path: Any, **options: Any) -> Tuple[List[Annotation], ReadReport]:
    """All annotations a reader yields, and its report."""
    report = options.pop("report", None) or ReadReport(path=str(path))
    return list(get_reader(name)(path, report=report, **options)), report


__all__ = [
    "READERS",
    "CorpusError",
    "ReadReport",
    "annotation_from_record",
    "annotation_record",
    "annotation_to_doc",
    "char_nlp",
    "corpus_tasks",
    "doc_to_annotation",
    "get_reader",
    "infer_task_labels",
    "read_corpus",
    "read_docbin",
    "read_jrte_pn",
    "read_jsonl",
    "read_pairs",
    "read_stockmark_ner",
    "register_reader",
    "sample_mix",
    "split_train_dev_test",
    "task_resolver",
    "tasks_from_gold",
    "tasks_path",
    "write_corpus_tasks",
    "write_docbin",
    "write_jsonl",
    "PAPER_SIZES",
]
