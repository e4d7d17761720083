"""Development tooling: the markdown table of scripts/starting_model_curve.sh's
results (entity P / R / F on the Doc for the Gemma runs, as spaCy's are
scored; training steps and CPU seconds used).

    python scripts/starting_model_table.py OUT 100 400
"""
import json
import sys
from pathlib import Path


def _load(path: Path):
    return json.loads(path.read_text(encoding="utf8")) if path.is_file() else None


def _gemma(metrics):
    if metrics is None:
        return None
    group = metrics["results"].get("ALL") or next(iter(metrics["results"].values()))
    return group["pipeline"], group["model"]


def _prf(s) -> str:
    return f"**{100 * (s['wl_f'] or 0):.1f}** ({100 * (s['wl_p'] or 0):.1f} / {100 * (s['wl_r'] or 0):.1f})"


def main(out: Path, sizes) -> None:
    rows = ["| training sentences | system | entity F (P / R), Doc | F, raw strings | steps / epochs | CPU s used |",
            "| ---: | --- | --- | ---: | --- | ---: |"]
    zero = _gemma(_load(out / "zero-shot" / "metrics.json"))
    if zero:
        rows.append(f"| 0 | starting model, no fine-tuning (zero-shot) | {_prf(zero[0])} | {100 * (zero[1]['wl_f'] or 0):.1f} | - | - |")
    for n in sizes:
        for key, name in (("start", "GIELLM from the starting model"), ("raw", "GIELLM from the raw base")):
            scores = _gemma(_load(out / f"{key}{n}" / "eval" / "metrics.json"))
            manifest = _load(out / f"{key}{n}" / "train" / "manifest.json") or {}
            if scores:
                epochs = manifest.get("epochs")
                rows.append(
                    f"| {n} | {name} | {_prf(scores[0])} | {100 * (scores[1]['wl_f'] or 0):.1f} | "
                    f"{manifest.get('steps', '?')} / {epochs:.1f} | {manifest.get('train_cpu_seconds_this_run', '?')} |"
                    if epochs is not None else f"| {n} | {name} | {_prf(scores[0])} | {100 * (scores[1]['wl_f'] or 0):.1f} | ? | ? |"
                )
        spacy = _load(out / f"spacy-ner{n}.json")
        if spacy:
            rows.append(
                f"| {n} | spaCy `ner` on ja_ginza's tok2vec | {_prf(spacy['scores'])} | - | "
                f"{spacy.get('epochs', '?')} epochs (best {spacy.get('best_epoch', '?')}) | {spacy.get('cpu_seconds_training', '?')} |"
            )
    print("\n".join(rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
