"""spaCy DocBin, both ways, in the layout of `spacy_giellm.docs` (the
component's): `doc.cats`, the `giellm_entities` / `giellm_sentiment` span
groups and `doc.ents`, relations and events in `doc.user_data`, plus the
task, instruction and meta of each record.

What is lost writing: a span the tokenization cannot hold exactly is
widened to token boundaries (`alignment_mode="expand"`; counted in the
report's warnings, and reading gives back the wider text); a word-level
string without offsets that does not occur in the text has no span and is
dropped (counted); relation arguments without offsets keep their string
only. Without an `nlp` the text is split into one token per character, so
every span aligns and nothing is lost.
"""
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional, Union

from ..annotation import Annotation
from ..docs import USER_DATA_KEY, annotation_to_doc, char_nlp, doc_to_annotation
from ..tasks import Task, TaskResolver, TaskSpec
from ..util import atomic_path
from .report import CorpusError, ReadReport, annotation_problems, resolve_task, writer_where
from .sidecar import task_resolver, write_corpus_tasks

PathLike = Union[str, Path]


def write_docbin(
    annotations: Iterable[Annotation],
    path: PathLike,
    task: Union[None, TaskSpec, TaskResolver] = None,
    *,
    nlp: Any = None,
    skip_errors: bool = False,
    report: Optional[ReadReport] = None,
) -> int:
    """Write annotations to a `.spacy` DocBin (with user data), and the
    definitions of their tasks to its sidecar (`x.tasks.json`); tasks
    resolve as in `write_jsonl`. `nlp` tokenizes (default: one token per
    character). Returns the number written; lossy steps are counted in
    `report.warnings`."""
    from spacy.tokens import DocBin

    report = report if report is not None else ReadReport(path=str(path))
    nlp = nlp if nlp is not None else char_nlp()
    resolver = task_resolver(task)
    tasks: Dict[str, Task] = {}
    db = DocBin(store_user_data=True)
    written = 0
    for i, ann in enumerate(annotations, 1):
        where = writer_where(ann, path, i)
        try:
            resolved = resolve_task(resolver, ann.task, where) if (resolver.default or ann.task) else None
            db.add(annotation_to_doc(ann, nlp, resolved, report))
            if resolved is not None:
                tasks.setdefault(resolved.name, resolved)
        except CorpusError as err:
            report.skip(err, skip_errors)
            continue
        except ValueError as err:
            report.fail(where, str(err), skip_errors)
            continue
        written += 1
    with atomic_path(path) as tmp:
        db.to_disk(tmp)
        write_corpus_tasks(path, tasks)  # before the DocBin replaces `path`
    report.written += written
    return written


def read_docbin(
    path: PathLike,
    *,
    task: Union[None, TaskSpec, TaskResolver] = None,
    nlp: Any = None,
    skip_errors: bool = False,
    report: Optional[ReadReport] = None,
) -> Iterator[Annotation]:
    """Annotations from a `.spacy` DocBin. The task each Doc names in its
    user data resolves as in `read_jsonl`: the user's `task` (also for Docs
    naming none), the DocBin's sidecar, the built-in tasks."""
    from spacy.tokens import DocBin

    import spacy

    report = report if report is not None else ReadReport(path=str(path))
    try:
        db = DocBin(store_user_data=True).from_disk(path)
    except (ValueError, OSError, KeyError, TypeError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a DocBin: {err}") from err
    vocab = nlp.vocab if nlp is not None else spacy.blank("xx").vocab
    resolver = task_resolver(task, path)
    for i, doc in enumerate(db.get_docs(vocab)):
        report.read += 1
        where = f"{path}: doc {i}"
        try:
            resolved = resolve_task(resolver, doc.user_data.get((USER_DATA_KEY, "task")), where)
            ann = doc_to_annotation(doc, resolved)
            bad = annotation_problems(ann, resolved)
            if bad:
                raise CorpusError(f"{where}: {'; '.join(bad[:3])}")
        except CorpusError as err:
            report.skip(err, skip_errors)
            continue
        except (TypeError, ValueError, KeyError, IndexError) as err:
            report.fail(where, f"cannot read the doc: {err!r}", skip_errors)
            continue
        report.task = report.task or resolved
        ann.source = where
        yield ann
