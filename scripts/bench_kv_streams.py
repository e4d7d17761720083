"""Decoding steps with one unified KV cache against a stream per sequence
(`kv_unified = false`), interleaved within each round.

    python scripts/bench_kv_streams.py MODEL.gguf [--rows 8,16,32,64] [--rounds 3] [--threads 2]

For each row count R: R sequences each get a PROMPT-token prompt
(prefilled, not timed), then STEPS decoding steps of R rows (one token of
every sequence, logits for each) are timed: ms per token = the steps' time /
(STEPS x R). In the unified cache every row's attention spans all R
sequences' cells (masked); with streams, only its own. Both contexts come
from one loaded model; each round runs every (R, cache) once, in order.
"""
import argparse
import statistics
import time

from llama_cpp import Llama

from spacy_giellm.backends.llamacpp_batch import SequenceBatcher

PROMPT = 40
STEPS = 20


def steps_ms_per_token(engine: SequenceBatcher, rows: int) -> float:
    engine._clear()
    prompts = [(100 + i, i, (s,), False) for s in range(rows) for i in range(PROMPT)]
    for start in range(0, len(prompts), engine.n_batch):
        engine._decode(prompts[start : start + engine.n_batch])
    t = time.perf_counter()
    for j in range(STEPS):
        engine._decode([(200 + j, PROMPT + j, (s,), True) for s in range(rows)])
    return (time.perf_counter() - t) * 1e3 / (STEPS * rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--rows", default="8,16,32,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    llm = Llama(model_path=args.model, n_ctx=256, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    cells = PROMPT + STEPS
    engines = {}
    for r in rows:
        # the unified cache holds every sequence's cells; a stream, its own
        engines[r, "unified"] = SequenceBatcher(llm, n_ctx=max(256, r * cells), n_seq=r, n_threads=args.threads)
        engines[r, "unified+fa"] = SequenceBatcher(llm, n_ctx=max(256, r * cells), n_seq=r, n_threads=args.threads,
                                                   flash_attn=True)
        engines[r, "streams"] = SequenceBatcher(llm, n_ctx=256, n_seq=r, n_threads=args.threads, kv_unified=False)
    times = {key: [] for key in engines}
    for key, engine in engines.items():  # warm-up, untimed
        steps_ms_per_token(engine, key[0])
    for rnd in range(args.rounds):
        for key, engine in engines.items():
            times[key].append(steps_ms_per_token(engine, key[0]))
    print("| rows | unified, ms a token (rounds) | unified + flash attention | streams | unified / flash | unified / streams |")
    print("| ---: | --- | --- | --- | ---: | ---: |")
    for r in rows:
        u, f, s = times[r, "unified"], times[r, "unified+fa"], times[r, "streams"]
        fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)
        med = statistics.median
        print(f"| {r} | {fmt(u)} | {fmt(f)} | {fmt(s)} | {med(u) / med(f):.2f}x | {med(u) / med(s):.2f}x |")
    for engine in engines.values():
        engine.close()


if __name__ == "__main__":
    main()
