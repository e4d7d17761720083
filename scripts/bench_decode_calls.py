"""The cost of one llama_decode call against the tokens in it: what a
decoding step of a few rows costs per token, next to a long pass of one
sequence (the shape llama.cpp's kernels run best).

    python scripts/bench_decode_calls.py MODEL.gguf [MODEL2.gguf ...] [--threads 2]

For each model: the median of 5 calls, in ms per call and per token, of
  * S sequences x 1 token each (a decoding step of S rows, after a 40-token
    prompt each; every row wants logits), S = 1, 2, 4, 8, 16, 32;
  * 1 sequence x N tokens (a prompt's prefill, logits for every token),
    N = 8, 40, 128, 320.
"""
import argparse
import time

from llama_cpp import Llama

from spacy_giellm.backends.llamacpp_batch import SequenceBatcher

PROMPT = 40


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for path in args.models:
        llm = Llama(model_path=path, n_ctx=4096, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
        engine = SequenceBatcher(llm, n_ctx=4096, n_seq=32, n_threads=args.threads)
        try:
            print(f"== {path}")
            shapes = [(s, 1) for s in (1, 2, 4, 8, 16, 32)] + [(1, n) for n in (8, 40, 128, 320)]
            for n_seq, per in shapes:
                times = []
                for _ in range(5):
                    engine._clear()
                    prompts = [(100 + i, i, (s,), False) for s in range(n_seq) for i in range(PROMPT)]
                    for start in range(0, len(prompts), engine.n_batch):
                        engine._decode(prompts[start : start + engine.n_batch])
                    step = [(200 + j, PROMPT + j, (s,), True) for s in range(n_seq) for j in range(per)]
                    t = time.perf_counter()
                    engine._decode(step)
                    times.append(time.perf_counter() - t)
                ms = sorted(times)[2] * 1e3
                n = n_seq * per
                print(f"{n_seq:3d} sequences x {per:3d} tokens = {n:4d}: {ms:7.2f} ms a call, {ms / n:5.2f} ms a token")
        finally:
            engine.close()


if __name__ == "__main__":
    main()
