"""The `trim-vocab` command: a base (or fine-tuned) model with fewer output rows."""
from pathlib import Path
from typing import List

import typer

from ._util import app, echo_json, fail_cleanly


@app.command("trim-vocab")
def trim_vocab_cli(
    model: str = typer.Argument(..., help="Base model: a transformers dir, a .gguf file or a model package "
                                          "(as train's --base-model), or a merged fine-tuned model dir"),
    output_dir: Path = typer.Argument(..., help="The trimmed model dir (use it as --base-model, or export it)"),
    data: List[Path] = typer.Option(..., "--data", "-d", help="Training JSONL whose tokens are kept (repeatable)"),
    keep_japanese: bool = typer.Option(
        True, "--keep-japanese/--data-only",
        help="Also keep every Japanese-script token of the vocabulary (unseen Japanese text splits as before)",
    ),
    keep_ascii: int = typer.Option(
        0, "--keep-ascii", help="Also keep every ASCII token of up to N characters (a space counts as one), "
                                "for text with many Latin words (4: Gemma 3 keeps 58,822 tokens, not 26,770)",
    ),
) -> None:
    """Keep only the vocabulary a Japanese extraction model uses: the output
    head shrinks with it (Gemma 3: 262,144 rows to about 27,000), so every
    generated token costs fewer FLOPs, and the GGUF is smaller. Trim the base
    before `train` (training and inference then share the trimmed tokenizer)
    or a merged model before `export-gguf` (its outputs are unchanged where
    they use kept tokens)."""
    with fail_cleanly():
        from ..training.base_model import resolve_base_model
        from ..training.trim_vocab import training_texts, trim_vocabulary

        texts = training_texts(data)  # before the base: a bad --data fails before a GGUF is dequantized
        source = resolve_base_model(model, hub=False)  # trimming reads a local tokenizer.json
        echo_json(trim_vocabulary(source, output_dir, texts, keep_japanese=keep_japanese,
                                   keep_ascii_chars=keep_ascii))
