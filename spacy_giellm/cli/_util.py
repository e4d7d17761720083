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


@contextmanager
def fail_cleanly() -> Iterator[None]:
    """Bad input ends the command with its message and exit code 1, no traceback."""
    try:
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
