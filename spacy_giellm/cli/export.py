"""The `merge` and `export-gguf` commands: a trained model made deployable."""
from pathlib import Path
from typing import Optional

import typer

from ._util import app, echo_json, fail_cleanly

BASE_HELP = (
    "Base model to merge into (default: the one the adapter's training config.cfg names, "
    "else the path the adapter recorded)"
)


def _hf_model(model_dir: Path, output_path: Path, base_model: Optional[str]):
    from ..training.export import merged_model

    return merged_model(model_dir, output_path, base_model)


@app.command("merge")
def merge_cli(
    model_dir: Path = typer.Argument(..., help="LoRA adapter dir (or a full model dir, copied)"),
    output_dir: Path = typer.Argument(..., help="Merged model dir (safetensors)"),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="Also write what was merged to this JSON file"),
    base_model: Optional[str] = typer.Option(None, "--base-model", "-b", help=BASE_HELP),
) -> None:
    """Merge a LoRA adapter into its base model's weights. The merged model
    keeps the adapter's training config.cfg."""
    with fail_cleanly():
        from ..training.export import merge
        from ..util import atomic_write_json

        info = merge(model_dir, output_dir, base_model)
        if manifest is not None:
            atomic_write_json(manifest, info)
        echo_json(info)


@app.command("export-gguf")
def export_gguf_cli(
    model_dir: Path = typer.Argument(..., help="Merged / full HF model dir, or a LoRA adapter dir (merged first)"),
    output_path: Path = typer.Argument(..., help="The .gguf file"),
    outtype: str = typer.Option(
        "auto", "--type",
        help="auto (the fastest on this CPU: bf16 with native bf16, else q8_0), f32, f16, bf16, q8_0, "
        "or a llama.cpp quant type like Q4_K_M"),
    verify_data: Optional[Path] = typer.Option(None, "--verify", help="Held-out JSONL: compare greedy outputs with the HF model"),
    verify_n: int = typer.Option(4, "--verify-n", help="Prompts per task to compare"),
    verify_tokens: int = typer.Option(48, "--verify-tokens", help="New tokens per compared prompt"),
    strict: bool = typer.Option(False, "--strict", help="Fail on any mismatch"),
    base_model: Optional[str] = typer.Option(None, "--base-model", "-b", help="For a LoRA adapter: " + BASE_HELP),
) -> None:
    """Convert to GGUF with llama.cpp's converter (and quantizer), then check
    the GGUF's greedy outputs against the HF model's. The report is written
    next to the GGUF as <name>.verify.json. A LoRA adapter is merged into
    its base first, in a temporary directory (the base: as `merge`)."""
    with fail_cleanly(), _hf_model(model_dir, output_path, base_model) as hf_dir:
        from ..training.export import AUTO_TYPE, export_gguf, fastest_weight_type, verify_gguf
        from ..util import atomic_write_json

        if outtype.lower() == AUTO_TYPE:
            outtype, why = fastest_weight_type()
            typer.echo(f"--type auto: {outtype} ({why})")
        info = export_gguf(hf_dir, output_path, outtype)
        typer.echo(f"wrote {info['gguf']} ({info['bytes']:,} bytes, {outtype}) in {info['seconds']} s")
        if verify_data is not None:
            report = verify_gguf(output_path, hf_dir, verify_data, n=verify_n, max_new_tokens=verify_tokens)
            report["export"] = info
            atomic_write_json(output_path.with_suffix(".verify.json"), report)
            typer.echo(
                f"verify: {report['identical']}/{report['prompts']} greedy outputs identical to the HF model"
                + (f" ({report['near_ties']} more differ only at a near-tie)" if report["near_ties"] else "")
            )
            for m in report["mismatches"][:5]:
                typer.echo(f"  MISMATCH {m['prompt'][:50]!r}\n    hf:   {m['hf'][:80]!r}\n    gguf: {m['gguf'][:80]!r}")
            if report["mismatches"] and strict:
                raise ValueError(f"{len(report['mismatches'])} GGUF outputs differ from the HF model")
