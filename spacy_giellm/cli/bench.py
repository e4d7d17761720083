"""The `bench` command: component vs bare backend throughput (see `spacy_giellm.bench`)."""
import json
from pathlib import Path
from typing import List, Optional

import typer

from ._util import app, fail_cleanly


@app.command("bench")
def bench_cli(
    model: Optional[Path] = typer.Option(None, "--model", help="HF model directory, or an adapter's base with --adapter (default: build the tiny test model)"),
    gguf: Optional[Path] = typer.Option(None, "--gguf", help="GGUF file (default: the tiny model converted)"),
    texts: Optional[Path] = typer.Option(None, "--texts", help=".json list of {text}, .jsonl or .txt (default: the shipped sample)"),
    n: int = typer.Option(64, "--n", help="Docs to run (texts are cycled)"),
    task: str = typer.Option("scnm", "--task", "-t", help="Built-in task name or task file"),
    backend: Optional[List[str]] = typer.Option(None, "--backend", help="hf and/or gguf (repeatable; default: both)"),
    batch_size: int = typer.Option(16, "--batch-size", help="Prompts per generate() call, as the component's batch_size"),
    parallel: Optional[int] = typer.Option(None, "--parallel", help="Prompts decoding together (llama.cpp n_parallel, HF batch size); default: the backend's (llama.cpp 8, HF the batch size)"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Generation budget per doc"),
    threads: int = typer.Option(1, "--threads", help="CPU threads; 1 times CPU time, which a busy machine barely changes"),
    repeat: int = typer.Option(5, "--repeat", help="Best of this many runs per timing"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write all figures here as JSON"),
    step: Optional[List[str]] = typer.Option(None, "--step", help="Optional steps to run, repeatable: batching, drafting, constrained, limits, ginza (ja_ginza full pipeline vs tokenizer only, + giellm). Default: all but ginza"),
) -> None:
    """Docs/s through the giellm component vs the bare backend, token rates,
    time outside the model, peak RSS, batching and constrained decoding."""
    with fail_cleanly():
        from ..bench import BenchConfig, format_table, run_bench
        from ..util import atomic_write_text

        if n < 1 or batch_size < 1 or max_new_tokens < 1 or threads < 1 or repeat < 1 or (parallel is not None and parallel < 1):
            raise ValueError("--n, --batch-size, --parallel, --max-new-tokens, --threads and --repeat must be >= 1")
        from ..bench.config import ALL_STEPS

        bad_steps = sorted(set(step or ()) - set(ALL_STEPS))
        if bad_steps:
            raise ValueError(f"unknown --step {bad_steps}; use {', '.join(ALL_STEPS)}")
        kinds = list(backend or ["hf", "gguf"])
        unknown = sorted(set(kinds) - {"hf", "gguf"})
        if unknown:
            raise ValueError(f"unknown --backend {unknown}; use hf or gguf")
        if gguf is not None and model is None and "hf" in kinds:
            raise ValueError("--gguf without --model: pass --model too, or --backend gguf")
        cfg = BenchConfig(
            model=str(model) if model else None,
            gguf=str(gguf) if gguf else None,
            texts=str(texts) if texts else None,
            n=n,
            task=task,
            batch_size=batch_size,
            parallel=parallel,
            max_new_tokens=max_new_tokens,
            repeat=repeat,
            backends=kinds,
            threads=threads,
            steps=list(step) if step else None,
        )
        results = run_bench(cfg)  # progress through the spacy_giellm logger
        typer.echo(format_table(results))
        if json_out is not None:
            atomic_write_text(json_out, json.dumps(results, ensure_ascii=False, indent=2))
            typer.echo(f"wrote {json_out}")
