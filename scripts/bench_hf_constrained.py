"""Constrained decoding with transformers: the masked full head under
`generate` (HFConstraintProcessor) vs the head for the allowed tokens only
(`hf_decode.constrained_greedy`), without and with jump-forward; free
decoding beside them. Through the HF backend, in the component's batches.

    python scripts/bench_hf_constrained.py TEXTS MODEL_DIR [MODEL_DIR2 ...] [--n 48] [--task ner-ja]

Prints seconds and docs/s per mode (after one warm-up batch each), tokens
generated and jumped, and how many outputs equal the masked full head's.
"""
import time
from dataclasses import replace

from spacy_giellm.backends import hf_decode
from spacy_giellm.backends.hf import make_hf_backend
from spacy_giellm.bench.inputs import comparison_arguments, task_prompts

# (name, constrained, head for the allowed tokens only, jump-forward)
MODES = (("free", False, True, True), ("masked full head", True, False, True),
         ("allowed head", True, True, False), ("allowed head + jump", True, True, True))


def main() -> None:
    parser = comparison_arguments("transformers model directories", n=48)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    task, prompts = task_prompts(args.test, args.task, args.n)
    allowed_head = hf_decode.body_and_head
    for path in args.models:
        backend = make_hf_backend(model=path, device="cpu", batch_size=args.batch_size,
                                  max_new_tokens=args.max_new_tokens, task=task).load()
        outputs = {}
        print(f"== {path}: {len(prompts)} prompts, batches of {args.batch_size}")
        for name, constrained, restricted, jump in MODES:
            backend.reconfigure(replace(backend.settings, constrained=constrained, jump_forward=jump))
            hf_decode.body_and_head = allowed_head if restricted else (lambda model: None)
            try:
                backend.generate_ids(prompts[: args.batch_size])  # warm-up
                backend.decoding_stats(reset=True)
                start = time.perf_counter()
                outputs[name] = backend.generate_ids(prompts)
                seconds = time.perf_counter() - start
            finally:
                hf_decode.body_and_head = allowed_head
            tokens = sum(len(o) for o in outputs[name]) / len(prompts)
            print(f"{name}: {seconds:.1f} s, {len(prompts) / seconds:.2f} docs/s, {tokens:.1f} tokens/doc, "
                  f"jumped {backend.decoding_stats()['jumped']}", flush=True)
        masked = outputs["masked full head"]
        for name, out in outputs.items():
            print(f"{name}: {sum(a == b for a, b in zip(out, masked))} of {len(masked)} outputs equal the masked head's")


if __name__ == "__main__":
    main()
