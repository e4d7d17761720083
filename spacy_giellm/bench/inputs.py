"""What the bench runs on: texts (by default the sample shipped in the
package, `spacy_giellm/data/bench_texts.jsonl`), their gold outputs, and the
tiny random-weight model."""
import argparse
import json
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

# 600 sentences with their entities from stockmark's Wikipedia NER data
# (the records of assets/stockmark-ner-sample.json; see assets/README.md).
DEFAULT_TEXTS = "bench_texts.jsonl"


def _default_texts() -> Tuple[str, str]:
    """(name, content) of the shipped sample."""
    path = resources.files("spacy_giellm") / "data" / DEFAULT_TEXTS
    return str(path), path.read_text(encoding="utf-8")


def _read(path: Optional[str]) -> Tuple[str, str, str]:
    """(name, suffix, content) of a texts file, or of the shipped sample."""
    if not path:
        name, raw = _default_texts()
        return name, ".jsonl", raw
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"bench: no texts file {str(p)!r} (pass --texts)")
    return str(p), p.suffix, p.read_text(encoding="utf-8")


def _record(item: Any) -> Optional[Dict[str, Any]]:
    """{"text", optional "entities": [(label, text)]}, or None without a text."""
    if isinstance(item, str):
        item = {"text": item}
    text = item.get("text")
    if not isinstance(text, str) or not text.strip():
        return None
    record: Dict[str, Any] = {"text": text}
    if isinstance(item.get("entities"), list):
        ents = []
        for e in item["entities"]:
            if isinstance(e, dict) and "type" in e and "name" in e:
                ents.append((e["type"], e["name"]))
            elif isinstance(e, dict) and "label" in e and "text" in e:
                ents.append((e["label"], e["text"]))
        record["entities"] = ents
    return record


def load_texts(path: Optional[str] = None, n: Optional[int] = None) -> List[Dict[str, Any]]:
    """Records {"text", optional "entities": [(label, text)]} from a .json
    list, a .jsonl or a .txt file (one text a line); None: the shipped
    sample. With `n`, exactly n records (the file's cycled)."""
    name, suffix, raw = _read(path)
    if suffix == ".json":
        items = json.loads(raw)
    elif suffix == ".jsonl":
        items = [json.loads(line) for line in raw.splitlines() if line.strip()]
    else:
        items = [{"text": line} for line in raw.splitlines() if line.strip()]
    records = [r for r in map(_record, items) if r is not None]
    if not records:
        raise ValueError(f"bench: no texts in {name!r}")
    if n:
        records = [records[i % len(records)] for i in range(n)]
    return records


def gold_outputs(task: Any, records: Sequence[Dict[str, Any]]) -> Optional[List[str]]:
    """Gold outputs (first text label where the texts have none), or None."""
    from ..annotation import Annotation, Mention
    from ..format import render_output

    if not all("entities" in r for r in records) or not any(wl.kind == "entities" for wl in task.word_levels):
        return None
    label = task.text_labels[0] if task.text_labels else None
    return [
        render_output(Annotation(text=r["text"], task=task.name, label=label,
                                 entities=[Mention(lab, text) for lab, text in r["entities"]]), task)
        for r in records
    ]


def build_bench_models(out_dir: Path, texts: Sequence[str], task_name: str, gguf: bool = True) -> Tuple[Path, Optional[Path]]:
    """The tiny random-weight Llama the tests use (same layer sizes), with a
    tokenizer trained on `texts` and the task's markers; and its f32 GGUF."""
    from ..format import build_input, label_marker, pair_marker
    from ..tasks import get_task
    from ..training.tiny import build_tiny_llama

    task = get_task(task_name)
    symbols = [label_marker(label) for label in task.text_labels] + list(task.instructions)
    for wl in task.word_levels:
        symbols += [pair_marker(label) for label in wl.labels]
    corpus = list(texts) + [build_input(t, task) for t in texts[:50]]
    # the tests' 1000 pieces, or room for every character of a larger corpus
    needed = len(set("".join(corpus))) + 256 + 4 + len(symbols)
    hf_dir = build_tiny_llama(
        out_dir / "hf", corpus, vocab_size=max(1000, needed + 500), hidden_size=64, num_layers=2, num_heads=4,
        intermediate_size=128, max_position_embeddings=512, seed=0, user_symbols=symbols,
    )
    if not gguf:
        return hf_dir, None
    from ..training.gguf_export import convert_to_gguf

    return hf_dir, Path(convert_to_gguf(hf_dir, out_dir / "tiny-f32.gguf", outtype="f32"))


def comparison_arguments(models_help: str, n: int) -> argparse.ArgumentParser:
    """The command line the model comparisons in `scripts/` share: the texts,
    the models, how many texts, the task and the component's batch size."""
    parser = argparse.ArgumentParser()
    parser.add_argument("test", help="texts as `bench --texts` reads them (.jsonl, .json, .txt)")
    parser.add_argument("models", nargs="+", help=models_help)
    parser.add_argument("--n", type=int, default=n)
    parser.add_argument("--task", default="ner-ja")
    parser.add_argument("--batch-size", type=int, default=16, help="the component's batch size")
    return parser


def task_prompts(path: Optional[str], task_name: str, n: Optional[int]) -> Tuple[Any, List[str]]:
    """(task, the prompts of the first `n` texts of `path` for it)."""
    from ..format import build_input
    from ..tasks import get_task

    task = get_task(task_name)
    return task, [build_input(r["text"], task) for r in load_texts(path, n)]
