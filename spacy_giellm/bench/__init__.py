"""Throughput benchmark: the `giellm` component against its bare backends.

Each backend (HF, GGUF) is measured in its own child process, so its peak RSS
is its own. All figures of one backend come from one run, and the figures
meant to be compared are ratios of timings taken back to back (the machine
may be shared and noisy); each timing is the best of `repeat` runs. With
`threads = 1` (the default) timings are the process's CPU time, which other
load on the machine barely changes (multi-threaded runs are timed by the wall
clock, and spin-waiting threads make them very noisy on a busy machine).

Per backend:

* docs/s through the full component (prompt building, generation, label
  scores, parsing, alignment) and through the bare backend on the same
  prompts (same length-sorted batches, generate + label_scores):
  `component_efficiency` = bare time / component time;
* prompt tokens/s (generation capped at one new token) and generated
  tokens/s (the rest of the time);
* time per doc outside the model: the component over a replay backend that
  answers instantly with the recorded outputs;
* batched (the component's batches, `batch_size`, with the backend's own
  parallelism: llama.cpp's `n_parallel`, default 8, or the HF batch; both
  reported) vs one prompt at a time, and docs/s at 1, 4 and 8 prompts
  decoding together;
* the one-pass `generate_scored` against generate + a separate label_scores;
* prompt-lookup drafting (llama.cpp): speed with and without, one sequence
  at a time and batched, the share of drafted tokens kept, and whether any
  output changed;
* constrained vs unconstrained decoding: speed, malformed-output rate (any
  parse problem, or a span not in the text), and how often the generated text
  label is the argmax of `label_scores`; where the texts have gold entities,
  entity F1 of both;
* the machine's float32 GEMM GFLOPS and memory bandwidth, and from them and
  the model's FLOPs and bytes per doc, ceilings on docs/s (`limits`);
* with `--step ginza`: from raw text through ja_ginza's full pipeline +
  giellm against its tokenizer alone + giellm.

`--step` picks the optional steps (batching, drafting, constrained, limits,
ginza); the component, outside-the-model and token-rate figures always run.
"""
from .config import FIELDS, BenchConfig
from .inputs import build_bench_models, load_texts
from .run import format_table, machine_info, run_bench

__all__ = ["BenchConfig", "run_bench", "format_table", "load_texts", "build_bench_models", "machine_info", "FIELDS"]
