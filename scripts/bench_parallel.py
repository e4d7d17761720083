"""Docs/s of the llama.cpp backend at several `n_parallel` settings, in
alternating rounds (every model and setting once per round, so that a change
in the machine's load hits them all), through the component's batches (free
decoding). `n_parallel` 1 is plain sequential greedy decoding.

    python scripts/bench_parallel.py TEXTS MODEL.gguf [MODEL2.gguf ...] [--n 96] [--rounds 2] [--parallel 1,4,8,16]

Prints docs/s per round for each model and setting, each setting's mean
against the first one's, and how many outputs equal those of the default (8).
"""
import time
from dataclasses import replace

from spacy_giellm.backends.llamacpp import make_llamacpp_backend
from spacy_giellm.bench.inputs import comparison_arguments, task_prompts
from spacy_giellm.bench.measure import generate_like_component


def main() -> None:
    parser = comparison_arguments("GGUF files", n=96)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--parallel", default="1,4,8,16", help="comma-separated n_parallel settings")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    task, prompts = task_prompts(args.test, args.task, args.n)
    settings = [int(x) for x in args.parallel.split(",")]
    backends = {path: make_llamacpp_backend(model_path=path, n_ctx=4096, max_new_tokens=96, n_threads=args.threads,
                                            task=task).load() for path in args.models}
    rates = {(path, n): [] for path in args.models for n in settings}
    outputs = {}
    try:
        for backend in backends.values():
            generate_like_component(backend, prompts[: args.batch_size], args.batch_size)  # warm-up
        for _ in range(args.rounds):
            for path, backend in backends.items():
                for n in settings:
                    backend.reconfigure(replace(backend.settings, n_parallel=n))
                    start = time.perf_counter()
                    outputs[path, n] = generate_like_component(backend, prompts, args.batch_size)
                    rates[path, n].append(len(prompts) / (time.perf_counter() - start))
    finally:
        for backend in backends.values():
            backend.close()
    for path in args.models:
        print(f"== {path}: {len(prompts)} prompts, batches of {args.batch_size}")
        default = outputs.get((path, 8))
        base = sum(rates[path, settings[0]]) / len(rates[path, settings[0]])
        for n in settings:
            mean = sum(rates[path, n]) / len(rates[path, n])
            same = f"; {sum(a == b for a, b in zip(outputs[path, n], default))} outputs equal n_parallel 8's" if default else ""
            print(f"n_parallel {n}: docs/s {', '.join(f'{r:.2f}' for r in rates[path, n])} "
                  f"(mean {mean:.2f}, {mean / base:.2f}x n_parallel {settings[0]}'s){same}")


if __name__ == "__main__":
    main()
