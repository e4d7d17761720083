"""Docs/s of the llama.cpp backend at several `n_parallel` settings, in
alternating rounds, through the component's batches (free decoding).

    python scripts/bench_parallel.py TEXTS MODEL.gguf [MODEL2.gguf ...] [--n 96] [--rounds 2] [--parallel 1,4,8,16]

Prints docs/s per round for each setting, and how many outputs equal those
of the default (8).
"""
import time

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
    for path in args.models:
        backend = make_llamacpp_backend(model_path=path, n_ctx=4096, max_new_tokens=96, n_threads=args.threads,
                                        task=task).load()
        try:
            generate_like_component(backend, prompts[: args.batch_size], args.batch_size)  # warm-up
            rates = {n: [] for n in settings}
            outputs = {}
            for _ in range(args.rounds):
                for n in settings:
                    backend.n_parallel = n
                    start = time.perf_counter()
                    outputs[n] = generate_like_component(backend, prompts, args.batch_size)
                    rates[n].append(len(prompts) / (time.perf_counter() - start))
        finally:
            backend.close()
        print(f"== {path}: {len(prompts)} prompts, batches of {args.batch_size}")
        default = outputs.get(8)
        for n in settings:
            same = f"; {sum(a == b for a, b in zip(outputs[n], default))} outputs equal n_parallel 8's" if default else ""
            print(f"n_parallel {n}: docs/s {', '.join(f'{r:.2f}' for r in rates[n])}{same}")


if __name__ == "__main__":
    main()
