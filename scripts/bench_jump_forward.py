"""Free vs constrained (step by step) vs constrained with jump-forward decoding,
in alternating rounds, through the llama.cpp backend as the component calls it.

    python scripts/bench_jump_forward.py TEXTS MODEL.gguf [MODEL2.gguf ...] [--n 100] [--rounds 3] [--task ner-ja]

Prints docs/s per round and mode, the ratios of the means, how many tokens
jump-forward appended per doc, and how many outputs differ from step-by-step
constrained decoding.
"""
import time
from dataclasses import replace

from spacy_giellm.backends.llamacpp import make_llamacpp_backend
from spacy_giellm.bench.inputs import comparison_arguments, task_prompts
from spacy_giellm.bench.measure import generate_like_component

MODES = ("free", "step", "jump")


def main() -> None:
    parser = comparison_arguments("GGUF files", n=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    task, prompts = task_prompts(args.test, args.task, args.n)
    for path in args.models:
        backend = make_llamacpp_backend(model_path=path, n_ctx=2048, max_new_tokens=96, n_threads=args.threads,
                                        task=task)
        generate_like_component(backend.load(), prompts[:16], args.batch_size)  # warm-up
        rates = {mode: [] for mode in MODES}
        outputs = {}
        jumped = 0
        for _ in range(args.rounds):
            for mode in MODES:
                backend.reconfigure(replace(backend.settings, constrained=mode != "free", jump_forward=mode == "jump"))
                backend.decoding_stats(reset=True)
                start = time.perf_counter()
                outputs[mode] = generate_like_component(backend, prompts, args.batch_size)
                rates[mode].append(len(prompts) / (time.perf_counter() - start))
                if mode == "jump":
                    jumped = backend.decoding_stats()["jumped"]
        backend.close()
        mean = {mode: sum(r) / len(r) for mode, r in rates.items()}
        print(path)
        for mode in MODES:
            print(f"  {mode:5s} docs/s {', '.join(f'{r:.2f}' for r in rates[mode])}  mean {mean[mode]:.2f}")
        print(f"  jump/step {mean['jump'] / mean['step']:.3f}  jump/free {mean['jump'] / mean['free']:.3f}  "
              f"step/free {mean['step'] / mean['free']:.3f}")
        differ = sum(a != b for a, b in zip(outputs["jump"], outputs["step"]))
        print(f"  jumped tokens per doc {jumped / len(prompts):.2f}; outputs differing jump vs step: {differ} of {len(prompts)}")


if __name__ == "__main__":
    main()
