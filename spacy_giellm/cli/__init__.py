"""The `python -m spacy_giellm` command line (typer, as spaCy's own `cli`).

`_util` holds the app and the helpers the commands share; each module here
registers one command group on it. Importing this package registers them
all, in the order `--help` lists them.
"""
from ._util import app, fail_cleanly

# Imported for their registrations on `app`, in `--help` order.
from . import convert, evaluate, train, trim_vocab, evaluate_model, export, package, annotate, mix, augment, bench  # noqa: E402,F401  isort: skip


def main() -> None:
    app()


__all__ = ["app", "fail_cleanly", "main"]
