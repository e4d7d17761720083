"""What a bench run measures (`BenchConfig`) and the figures it reports (`FIELDS`)."""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

# (key, unit / meaning) of every per-backend figure, in table order.
FIELDS: Tuple[Tuple[str, str], ...] = (
    ("docs", "docs measured"),
    ("batch_size", "prompts per generate() call (the component's batch)"),
    ("parallel", "prompts decoding together (llama.cpp n_parallel, HF batch)"),
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
    ("one_pass_speedup", "generate + label_scores time / one-pass generate_scored time"),
    ("new_tokens_per_doc", "mean generated tokens per doc (ending token not counted)"),
    ("peak_rss_mb", "peak RSS of the process, MB"),
    ("one_at_a_time_docs_per_s", "docs/s, one prompt at a time"),
    ("batch_speedup", "batched / one at a time (HF target >= 3)"),
    ("docs_per_s_parallel_1", "docs/s of generate(), 1 prompt decoding at a time"),
    ("docs_per_s_parallel_4", "docs/s of generate(), 4 at a time"),
    ("docs_per_s_parallel_8", "docs/s of generate(), 8 at a time"),
    ("prompt_lookup_speedup_1", "docs/s with / without prompt-lookup drafts, 1 at a time (llama.cpp)"),
    ("prompt_lookup_speedup", "the same at the bench's parallelism"),
    ("prompt_lookup_kept", "share of drafted tokens kept, at that parallelism"),
    ("tokens_per_step", "tokens gained per sequence per decoding step with drafts (1 = none)"),
    ("prompt_lookup_outputs_equal", "1 if drafting left every output unchanged"),
    ("constrained_docs_per_s", "docs/s, bare generate() constrained"),
    ("constrained_speed_ratio", "constrained / unconstrained generate() speed"),
    ("constrained_no_jump_docs_per_s", "docs/s, constrained without jump-forward (llama.cpp)"),
    ("jump_forward_speedup", "constrained docs/s with / without jump-forward"),
    ("jumped_tokens_per_doc", "tokens per doc appended by jump-forward, not generated"),
    ("jump_forward_outputs_equal", "1 if jump-forward left every output unchanged"),
    ("malformed_rate_unconstrained", "malformed outputs, unconstrained"),
    ("malformed_rate_constrained", "malformed outputs, constrained"),
    ("label_argmax_agreement_unconstrained", "generated label == argmax label_scores (unconstrained; docs with a label)"),
    ("label_argmax_agreement_constrained", "generated label == argmax label_scores (constrained)"),
    ("entity_f1_unconstrained", "entity F1 vs gold, unconstrained"),
    ("entity_f1_constrained", "entity F1 vs gold, constrained"),
    ("matmul_gflops", "machine: float32 GEMM GFLOPS at the bench's threads"),
    ("memory_gb_per_s", "machine: memory copy GB/s (read + write)"),
    ("gflop_per_doc", "model FLOPs per doc (body for every token, head per generated token)"),
    ("compute_limit_docs_per_s", "ceiling from matmul GFLOPS"),
    ("bandwidth_limit_docs_per_s", "ceiling from memory bandwidth at that parallelism"),
    ("kernel_ms_per_prompt_token", "llama.cpp: ms per token of one long pass, no head (prefill)"),
    ("kernel_ms_per_generated_token", "llama.cpp: the same with the head (a decoded token)"),
    ("kernel_limit_docs_per_s", "ceiling from those: every token of a doc at that rate"),
    ("share_of_compute_limit", "component docs/s / compute ceiling"),
    ("share_of_bandwidth_limit", "component docs/s / bandwidth ceiling"),
    ("share_of_kernel_limit", "component docs/s / kernel ceiling (llama.cpp)"),
    ("ginza_full_docs_per_s", "docs/s from raw text: ja_ginza full pipeline + giellm (--ginza)"),
    ("ginza_tokenizer_docs_per_s", "docs/s: ja_ginza tokenizer only + giellm (--ginza)"),
    ("ginza_alone_docs_per_s", "docs/s: ja_ginza full pipeline alone (--ginza)"),
)


# the optional measuring steps, in run order ("ginza" only when asked for)
STEPS: Tuple[str, ...] = ("batching", "drafting", "constrained", "limits")
ALL_STEPS: Tuple[str, ...] = STEPS + ("ginza",)


@dataclass
class BenchConfig:
    model: Optional[str] = None  # HF model dir; None: build the tiny test model
    gguf: Optional[str] = None  # GGUF file; None: convert the HF model (tiny only)
    texts: Optional[str] = None  # .json (list of {"text"}), .jsonl or .txt; None: the shipped sample
    n: int = 64
    task: str = "scnm"
    batch_size: int = 16  # the component's batch: prompts per generate() call
    # prompts decoding together (llama.cpp n_parallel, HF batch size);
    # None: the backend's default (llama.cpp 8; HF the component's batch)
    parallel: Optional[int] = None
    max_new_tokens: int = 32
    repeat: int = 5
    backends: Sequence[str] = ("hf", "gguf")
    threads: int = 1
    work_dir: Optional[str] = None
    # optional steps to run (None: all but "ginza"); the component, outside-
    # the-model and token-rate figures are always measured
    steps: Optional[Sequence[str]] = None

    def __post_init__(self) -> None:
        if self.parallel is not None and self.parallel > self.batch_size:
            # the component hands the backend batch_size prompts per call:
            # more never decode together, and the figures would claim they did
            raise ValueError(f"--parallel {self.parallel} is above --batch-size {self.batch_size}: at most "
                             "--batch-size prompts decode together; raise --batch-size too")
