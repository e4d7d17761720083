"""The `mix` command: split converted datasets and mix their training parts."""
from pathlib import Path
from typing import List

import typer

from ._util import app, echo_json, fail_cleanly


@app.command("mix")
def mix_cli(
    datasets: List[str] = typer.Argument(
        ..., help="NAME=PATH[:SIZE][:xK] per converted JSONL (SIZE: training records to sample, none: all; "
        "xK: each of them K times in the training mix, e.g. :x4 to oversample a small dataset)",
    ),
    output_dir: Path = typer.Option(..., "--output", "-o", help="train.jsonl, dev.jsonl, test.jsonl go here"),
    dev: float = typer.Option(0.05, "--dev", help="Dev part per dataset: a fraction (< 1) or a count"),
    test: float = typer.Option(0.1, "--test", help="Test part per dataset: a fraction (< 1) or a count"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Split every dataset into train/dev/test (records of one text stay
    together), then mix the training parts with the given sizes (the
    paper's: 1000 SCNM, 1000 SCPOS:RW, 1000 TCREE, 500 each other SCPOS),
    oversampling where asked (dev and test are never repeated)."""
    with fail_cleanly():
        from ..training.data import split_and_mix

        paths, sizes, repeats = {}, {}, {}
        for spec in datasets:
            name, sep, rest = spec.partition("=")
            if not sep or not name or not rest:
                raise ValueError(f"expected NAME=PATH[:SIZE][:xK], got {spec!r}")
            last = rest.rsplit(":", 1)[-1]
            if last[:1] == "x" and last[1:].isdigit() and ":" in rest:
                rest = rest.rpartition(":")[0]
                repeats[name] = int(last[1:])
                if repeats[name] < 1:
                    raise ValueError(f"{spec!r}: the repeat count after ':x' must be at least 1")
            path, _, size = rest.rpartition(":") if rest.rsplit(":", 1)[-1].isdigit() else (rest, "", "")
            paths[name], sizes[name] = path, int(size) if size else None
        counts = split_and_mix(
            paths, output_dir, sizes=sizes, dev=int(dev) if dev >= 1 else dev,
            test=int(test) if test >= 1 else test, seed=seed, repeats=repeats,
        )
        echo_json(counts)
