"""The base model of a from-scratch run: a tiny Llama with a SentencePiece
tokenizer trained on the training texts, the format's markers kept whole."""
import logging
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from ..tasks import Task
from ..util import atomic_dir
from .config import TrainConfig

logger = logging.getLogger(__name__)

BASE_DIR = "base"


def format_markers(tasks: Iterable[Union[str, Task]]) -> List[str]:
    """Format pieces worth keeping as single tokens in a from-scratch
    tokenizer: `<label>`, `:Label;`, one-word instruction words. Pieces with
    whitespace are left out: SentencePiece and the HF tokenizer disagree on
    user-defined symbols holding a space."""
    from ..format import label_marker, pair_marker
    from ..tasks import task_named

    out: List[str] = []
    for task in tasks:
        if not isinstance(task, Task):
            try:
                task = task_named(task)  # a name from data, never a file path
            except KeyError:
                continue
        out.extend(label_marker(label) for label in task.text_labels)
        out.extend(task.instructions)
        for wl in task.word_levels:
            if wl.is_pair:
                out.extend(pair_marker(label) for label in wl.labels)
            else:
                out.extend(f";{label};" for label in wl.labels)
    return list(dict.fromkeys(m for m in out if not any(c.isspace() for c in m)))


def build_scratch_base(
    out_dir: Path, records: Sequence[Dict[str, Any]], cfg: TrainConfig, tasks: Optional[Mapping[str, Task]] = None
) -> Path:
    """The tiny Llama + tokenizer for `from_scratch`, built once per output
    dir (a rerun that resumes must find the same tokenizer). The markers
    kept whole are those of `tasks` (the records' task definitions), else
    of the built-in tasks the records name."""
    from .tiny import build_tiny_llama

    base = out_dir / BASE_DIR
    if (base / "config.json").is_file():
        return base
    texts = [t for r in records for t in (r["input"], r["output"])]
    symbols = format_markers(tasks.values() if tasks else sorted({str(r.get("task")) for r in records}))
    t = cfg.tiny
    # SentencePiece needs a piece per character (coverage 1.0), the 256 byte
    # pieces, the specials and the markers, before any merge.
    n_chars = len({c for text in texts for c in text})
    vocab_size = max(t.vocab_size, n_chars + len(symbols) + 260 + 64)
    if vocab_size != t.vocab_size:
        logger.info("vocab_size %d -> %d: the texts have %d distinct characters", t.vocab_size, vocab_size, n_chars)
    with atomic_dir(base) as tmp:
        build_tiny_llama(
            tmp,
            texts,
            vocab_size=vocab_size,
            hidden_size=t.hidden_size,
            num_layers=t.num_layers,
            num_heads=t.num_heads,
            intermediate_size=t.intermediate_size,
            max_position_embeddings=max(512, cfg.max_length),
            seed=cfg.seed,
            user_symbols=symbols,
            init_std=t.init_std,
        )
        if t.ginza_vectors:
            from .vectors import init_embeddings_from_vectors

            logger.info("token embeddings from ja_ginza vectors: %s", init_embeddings_from_vectors(tmp))
    return base
