"""What a bench run measures (`BenchConfig`) and the figures it reports (`FIELDS`)."""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

# (key, unit / meaning) of every per-backend figure, in table order.
FIELDS: Tuple[Tuple[str, str], ...] = (
    ("docs", "docs measured"),
    ("chars_per_doc", "mean characters per doc"),
    ("prompt_tokens_mean", "mean prompt tokens"),
    ("shared_prefix_tokens", "mean prompt prefix shared with another prompt, tokens"),
    ("shared_suffix_tokens", "mean prompt suffix shared with another prompt, tokens"),
    ("component_docs_per_s", "docs/s, full component"),
    ("backend_docs_per_s", "docs/s, bare backend (same prompts)"),
    ("generate_docs_per_s", "docs/s, bare generate() only (no label scores)"),
    ("component_efficiency", "bare time / component time (target >= 0.97)"),
    ("label_scores_share", "label_scores share of the bare time"),
    ("prompt_tokens_per_s", "prompt tokens/s"),
    ("generated_tokens_per_s", "generated tokens/s"),
    ("outside_model_ms_per_doc", "ms/doc outside the model (target <= 1)"),
    ("peak_rss_mb", "peak RSS of the process, MB"),
    ("one_at_a_time_docs_per_s", "docs/s, one prompt at a time"),
    ("batch_speedup", "batch 16 / one at a time (HF target >= 3)"),
    ("constrained_docs_per_s", "docs/s, bare generate() constrained"),
    ("constrained_speed_ratio", "constrained / unconstrained generate() speed"),
    ("malformed_rate_unconstrained", "malformed outputs, unconstrained"),
    ("malformed_rate_constrained", "malformed outputs, constrained"),
    ("label_argmax_agreement_unconstrained", "generated label == argmax label_scores (unconstrained; docs with a label)"),
    ("label_argmax_agreement_constrained", "generated label == argmax label_scores (constrained)"),
    ("entity_f1_unconstrained", "entity F1 vs gold, unconstrained"),
    ("entity_f1_constrained", "entity F1 vs gold, constrained"),
)


@dataclass
class BenchConfig:
    model: Optional[str] = None  # HF model dir; None: build the tiny test model
    gguf: Optional[str] = None  # GGUF file; None: convert the HF model (tiny only)
    texts: Optional[str] = None  # .json (list of {"text"}), .jsonl or .txt; None: the shipped sample
    n: int = 64
    task: str = "scnm"
    batch_size: int = 16
    max_new_tokens: int = 32
    repeat: int = 5
    backends: Sequence[str] = ("hf", "gguf")
    threads: int = 1
    work_dir: Optional[str] = None
