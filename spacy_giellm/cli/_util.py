"""The typer app every command registers on, and what the commands share.

A command module does

    from ._util import app, fail_cleanly

    @app.command("name")
    def name_cli(...):
        with fail_cleanly():
            ...            # heavy imports here, inside the command

and is imported by `cli/__init__.py`. Keep imports at module level cheap:
`--help` imports every command module. Command modules import only this
module, never each other.
"""
import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import typer

app = typer.Typer(
    name="spacy_giellm",
    help="GIELLM for spaCy: convert corpora, evaluate outputs, ...",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Input files larger than this get a progress bar.
PROGRESS_BYTES = 1_000_000


class _StderrHandler(logging.StreamHandler):
    """Writes to the `sys.stderr` of the moment (a test runner may swap it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def log_progress() -> None:
    """The library's progress messages (the `spacy_giellm` logger, INFO and
    up) to stderr, one line each, as the commands print them."""
    logger = logging.getLogger("spacy_giellm")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


log_progress()


@contextmanager
def fail_cleanly() -> Iterator[None]:
    """Bad input ends the command with its message and exit code 1, no
    traceback. SIGTERM and SIGHUP end it as Ctrl-C does, so that no
    temporary file is left beside an output (`util.signals_end_the_run`)."""
    from ..util import signals_end_the_run

    try:
        with signals_end_the_run():
            yield
    except (ValueError, KeyError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1) from None


def progress(items: Any, path: Path, desc: str) -> Any:
    """`items` with a progress bar on stderr where `path` is a large file."""
    try:
        large = path.is_file() and path.stat().st_size > PROGRESS_BYTES
    except OSError:
        large = False
    if not large:
        return items
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI)
    return tqdm(items, desc=desc, unit=" rec", file=sys.stderr, leave=False, disable=None)


def echo_json(data: object) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2))
