"""Running a pipeline with `giellm` components over texts and files.

    annotate_file("pipeline", "texts.txt", "out.jsonl", html="out.html")

An input is a `.jsonl` file of records with a "text" field (the project's
JSONL, or any), else a text file with one text per line (blank lines are
not texts). A bad line (not UTF-8, not JSON, no "text") is an error naming
the file and line, or with `skip_errors` a counted skip listed in the
report. All input is checked before the pipeline loads, so a bad line stops
the run before the model spends time on the lines before it; so are the
output paths (none may be the input, another output or a directory). A JSONL
text with a lone surrogate is such a bad line, and so is a text the
tokenizer fails on (found as the run reaches it); a text longer than
Sudachi takes is tokenized in pieces (`make_doc`).

Outputs, each written atomically (a failed run leaves none half-written):

- `.jsonl`: a row per doc (`doc_row`): its input line, the text, `cats`,
  `entities` and `sentiments` with char offsets, `relations` and `events`
  with their arguments' offsets (null where an argument is not in the
  text), and `problems`, per giellm pipe, what it could not read or place.
  The mention and tuple fields are the project's JSONL record fields
  (`Annotation.to_dict`).
- `.spacy`: a DocBin with `store_user_data`, so `doc._.relations`,
  `doc._.events` and the per-pipe outputs come back with the Docs.
- `html`: one page (`visualize`).

The giellm pipes run with `store_output` on. Each pipe overwrites
`doc._.giellm_output`, so a small pipe after each one
(`giellm_keep_output`) keeps its output in `doc.user_data` under the pipe's
name.
"""
import json
import logging
import re
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from spacy.language import Language
from spacy.tokens import Doc, DocBin

from . import visualize
from .corpora.jsonl import iter_json_lines
from .corpora.report import CorpusError, ReadReport, iter_lines
from .docs import TUPLE_KINDS, USER_DATA_KEY, doc_to_annotation
from .util import atomic_path

logger = logging.getLogger("spacy_giellm")

PathLike = Union[str, Path]
OUTPUT_SUFFIXES = (".jsonl", ".spacy")
OUTPUTS_KEY = (USER_DATA_KEY, "outputs")
PROBLEM_KINDS = ("skipped", "problems", "not_found", "misaligned")
MENTION_FIELDS = ("entities", "sentiments", "relations", "events")


class OutputKeeper:
    """Keeps the giellm pipe `source`'s `doc._.giellm_output` in
    `doc.user_data[("giellm", "outputs")][source]` before the next giellm
    pipe overwrites it."""

    def __init__(self, source: str):
        self.source = source

    def __call__(self, doc: Doc) -> Doc:
        output = doc._.giellm_output
        if output is not None:
            kept = dict(doc.user_data.get(OUTPUTS_KEY) or {})
            kept[self.source] = output
            doc.user_data[OUTPUTS_KEY] = kept
        return doc


@Language.factory("giellm_keep_output", default_config={"source": ""})
def make_output_keeper(nlp: Language, name: str, source: str) -> OutputKeeper:
    return OutputKeeper(source)


def giellm_pipe_names(nlp: Language) -> List[str]:
    return [name for name in nlp.pipe_names if nlp.get_pipe_meta(name).factory == "giellm"]


def load_pipeline(path: PathLike, keep: bool = True) -> Language:
    """`spacy.load(path)`; with `keep`, `keep_outputs` on it."""
    import spacy

    from .backends.build import register_backends

    # The backends register themselves on import: where the package's entry
    # points are not installed (a source tree on PYTHONPATH) this is what
    # lets the pipeline's config find them.
    register_backends()
    nlp = spacy.load(path)
    return keep_outputs(nlp) if keep else nlp


def keep_outputs(nlp: Language) -> Language:
    """Turn `store_output` on for the giellm pipes of `nlp` and add a
    `giellm_keep_output` pipe after each (once), so that `doc_problems`
    finds what each of them could not read or place."""
    for name in giellm_pipe_names(nlp):
        nlp.get_pipe(name).store_output = True
        keeper = f"{name}_keep_output"
        if keeper not in nlp.pipe_names:
            nlp.add_pipe("giellm_keep_output", name=keeper, after=name, config={"source": name})
    return nlp


def event_roles(nlp: Language) -> Dict[str, Tuple[str, ...]]:
    """Per tuple kind, the argument names the pipeline's tasks give."""
    roles: Dict[str, Tuple[str, ...]] = {}
    for name in giellm_pipe_names(nlp):
        for wl in nlp.get_pipe(name).task.word_levels:
            if wl.kind in TUPLE_KINDS and wl.roles:
                roles.setdefault(wl.kind, tuple(wl.roles))
    return roles


def read_texts(path: PathLike, report: ReadReport, skip_errors: bool = False) -> Iterator[Tuple[str, int]]:
    """(text, line number) for every text of `path` (see the module
    docstring); a bad line raises a CorpusError naming it, or with
    `skip_errors` is counted in `report` and skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input {str(path)!r} is not a file")
    if path.suffix == ".jsonl":
        for lineno, record in iter_json_lines(path):
            report.read += 1
            where = f"{path}:{lineno}"
            if isinstance(record, CorpusError):
                report.skip(record, skip_errors)
            elif not isinstance(record, dict):
                report.fail(where, f"a record must be a JSON object, got {record!r:.60}", skip_errors)
            elif not isinstance(record.get("text"), str) or not record["text"].strip():
                report.fail(where, f'a record needs a non-empty "text" string, got {record.get("text")!r:.60}',
                            skip_errors)
            elif _lone_surrogate(record["text"]) is not None:
                at = _lone_surrogate(record["text"])
                report.fail(where, f'"text" holds a lone surrogate {record["text"][at]!r} at character {at}: '
                            "not Unicode text", skip_errors)
            else:
                yield record["text"], lineno
        return
    for lineno, line, error in iter_lines(path):
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        report.read += 1
        if error is not None:
            report.skip(error, skip_errors)
        else:
            yield text, lineno


def _lone_surrogate(text: str) -> Optional[int]:
    """Where `text` holds a lone surrogate (JSON's "\\ud800"), which no
    tokenizer or output file can encode; None if nowhere."""
    try:
        text.encode("utf8")
        return None
    except UnicodeEncodeError as err:
        return err.start


# The most UTF-8 bytes SudachiPy (the Japanese tokenizer of `ja` and GiNZA
# pipelines) takes in one text; a longer text is tokenized in pieces.
TOKENIZER_MAX_BYTES = 49_149
_PIECE_ENDS = re.compile(r"[。！？!?\n]+")


def split_for_tokenizer(text: str, max_bytes: int = TOKENIZER_MAX_BYTES) -> List[str]:
    """`text` in pieces of at most `max_bytes` UTF-8 bytes, cut after a
    sentence or line end where the piece has one, else at a character; the
    pieces join to `text`."""
    pieces = []
    while len(text.encode("utf8")) > max_bytes:
        head = text.encode("utf8")[:max_bytes].decode("utf8", "ignore")
        cut = max((m.end() for m in _PIECE_ENDS.finditer(head)), default=0) or len(head)
        pieces.append(text[:cut])
        text = text[cut:]
    return pieces + [text]


def make_doc(nlp: Language, text: str) -> Doc:
    """`nlp.make_doc(text)`; a text longer than the tokenizer takes
    (`TOKENIZER_MAX_BYTES`) is tokenized in pieces (`split_for_tokenizer`)
    joined into one Doc with the same text. The giellm pipes then cut it
    for the model's context as any long doc."""
    pieces = split_for_tokenizer(text)
    if len(pieces) == 1:
        return nlp.make_doc(text)
    return Doc.from_docs([nlp.make_doc(piece) for piece in pieces], ensure_whitespace=False)


def doc_problems(doc: Doc) -> Dict[str, Dict[str, Any]]:
    """Per giellm pipe, what it could not do for `doc`: the reason it left
    the doc unannotated (`skipped`), parse `problems`, strings `not_found`
    in the text, `misaligned` offsets. Pipes with nothing to say are left
    out."""
    kept = doc.user_data.get(OUTPUTS_KEY) or {}
    out = {}
    for pipe, output in kept.items():
        found = {kind: _as_lists(output[kind]) for kind in PROBLEM_KINDS if output.get(kind)}
        if found:
            out[pipe] = found
    return out


def _as_lists(value: Any) -> Any:
    # A DocBin gives back the lists it stored as tuples.
    return [_as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def problem_lines(problems: Dict[str, Dict[str, Any]]) -> List[str]:
    lines = []
    for pipe, found in problems.items():
        for kind, items in found.items():
            for item in [items] if isinstance(items, str) else items:
                lines.append(f"{pipe}: {kind.replace('_', ' ')}: {item}")
    return lines


def doc_row(doc: Doc, line: Optional[int] = None) -> Dict[str, Any]:
    """One doc as a JSON row (see the module docstring)."""
    ann = doc_to_annotation(doc).to_dict()
    row: Dict[str, Any] = {} if line is None else {"line": line}
    row["text"] = doc.text
    row["cats"] = dict(doc.cats)
    row.update({kind: ann.get(kind, []) for kind in MENTION_FIELDS})
    row["problems"] = doc_problems(doc)
    return row


def annotate(pipeline: PathLike, texts: Sequence[str]) -> List[Dict[str, Any]]:
    """Run a pipeline over texts: a `doc_row` per text."""
    nlp = load_pipeline(pipeline)
    return [doc_row(doc) for doc in nlp.pipe(make_doc(nlp, text) for text in texts)]


def _count_texts(path: PathLike, skip_errors: bool) -> Tuple[int, ReadReport]:
    report = ReadReport(path=str(path))
    total = sum(1 for _ in read_texts(path, report, skip_errors))
    return total, report


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def check_output_paths(input_path: PathLike, outputs: Dict[str, Optional[PathLike]]) -> None:
    """Before anything runs: no output is the input (or another output) and
    none is a directory; a ValueError naming the option and the path. The
    input is never overwritten."""
    given = [(option, Path(path)) for option, path in outputs.items() if path is not None]
    for i, (option, path) in enumerate(given):
        if path.is_dir():
            raise ValueError(f"annotate: {option} {str(path)!r} is a directory: give a file name")
        if _same_file(path, Path(input_path)):
            raise ValueError(
                f"annotate: {option} {str(path)!r} is the input file: refusing to overwrite the input; "
                "give another output file"
            )
        for other_option, other in given[:i]:
            if _same_file(path, other):
                raise ValueError(
                    f"annotate: {other_option} and {option} are the same file {str(path)!r}: "
                    "one would replace the other; give two files"
                )


def annotate_file(
    pipeline: Union[PathLike, Language],
    input_path: PathLike,
    output: Optional[PathLike] = None,
    html: Optional[PathLike] = None,
    *,
    batch_size: Optional[int] = None,
    n_process: int = 1,
    skip_errors: bool = False,
    progress: Optional[bool] = None,
) -> Dict[str, Any]:
    """Annotate every text of `input_path` with `pipeline` (a directory, or
    a loaded pipeline, which gets `keep_outputs`) and write `output`
    (`.jsonl` or `.spacy`) and/or the `html` page. The JSONL and the page
    are streamed; a DocBin is held in memory until the end.
    `progress`: a bar on stderr (None: only on a terminal).
    Returns a summary: texts read, annotated, skipped (with the lines and
    reasons), docs with problems, the files written."""
    from tqdm import tqdm

    if output is None and html is None:
        raise ValueError("annotate: give an output file (.jsonl or .spacy) and/or an HTML page")
    if output is not None and Path(output).suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"annotate: output {str(output)!r} must end in one of {', '.join(OUTPUT_SUFFIXES)}")
    if n_process == 0 or n_process < -1:
        raise ValueError(f"annotate: n_process must be 1 or more (-1: one per CPU), got {n_process}")
    check_output_paths(input_path, {"--output": output, "--html": html})
    # Checks every line before the model runs: a bad one stops the run now.
    total, report = _count_texts(input_path, skip_errors)
    for reason in report.reasons:
        logger.warning("annotate: skipped %s", reason)
    nlp = keep_outputs(pipeline) if isinstance(pipeline, Language) else load_pipeline(pipeline)
    roles = event_roles(nlp)
    texts = read_texts(input_path, ReadReport(), skip_errors=True)  # the bad lines were reported above

    def docs() -> Iterator[Tuple[Doc, int]]:
        # Tokenized here, a text at a time: a text the tokenizer fails on is
        # an error naming its line, or with skip_errors a counted skip.
        for text, line in texts:
            try:
                doc = make_doc(nlp, text)
            except Exception as err:  # the tokenizer's own error, whatever its type
                report.fail(f"{input_path}:{line}", f"the tokenizer failed on this text: {err}", skip_errors)
                logger.warning("annotate: skipped %s", report.reasons[-1])
                bar.update(1)
                continue
            yield doc, line

    written = 0
    with_problems = 0
    with ExitStack() as stack:
        jsonl = docbin = page = None
        if output is not None:
            tmp = stack.enter_context(atomic_path(output))
            if Path(output).suffix == ".jsonl":
                jsonl = stack.enter_context(open(tmp, "w", encoding="utf8"))
            else:
                docbin = DocBin(store_user_data=True)
        if html is not None:
            page = stack.enter_context(open(stack.enter_context(atomic_path(html)), "w", encoding="utf8"))
            page.write(visualize.page_head(f"giellm: {Path(input_path).name}"))
        bar = stack.enter_context(tqdm(
            total=total, desc="annotate", unit=" doc", file=sys.stderr,
            disable=None if progress is None else not progress,
        ))
        for doc, line in nlp.pipe(docs(), as_tuples=True, batch_size=batch_size, n_process=n_process):
            problems = doc_problems(doc)
            with_problems += bool(problems)
            if jsonl is not None:
                jsonl.write(json.dumps(doc_row(doc, line), ensure_ascii=False) + "\n")
            if docbin is not None:
                docbin.add(doc)
            if page is not None:
                page.write(visualize.doc_section(doc, f"line {line}", roles, problem_lines(problems)))
            written += 1
            bar.update(1)
        if page is not None:
            page.write(visualize.page_tail())
        if docbin is not None:
            docbin.to_disk(tmp)
    return {
        "input": str(input_path),
        "read": report.read,
        "annotated": written,
        "skipped": report.skipped,
        "skipped_lines": list(report.reasons),
        "docs_with_problems": with_problems,
        "outputs": [str(p) for p in (output, html) if p is not None],
    }


__all__ = [
    "annotate", "annotate_file", "load_pipeline", "keep_outputs", "read_texts", "doc_row", "doc_problems",
    "problem_lines", "event_roles", "OutputKeeper",
]
