"""The loop stop (`stop_loops`), off against on, interleaved: docs/s of the
giellm component on ja_ginza docs, and whether the Docs' annotations are
the same.

    python scripts/bench_loop_stop.py MODEL.gguf TEST.jsonl --task TASK.json [--n 100] [--rounds 2]
        [--max-new-tokens 96] [--threads 2] [--json out.json]
    python scripts/bench_loop_stop.py MODEL_DIR TEST.jsonl --backend hf [--batch-size 16] ...

MODEL: a GGUF file (llama.cpp), or with `--backend hf` a transformers
model directory run on the CPU.
TEST.jsonl: converted records (their "input" texts are re-read through the
task; only the text is used). Each round runs both settings over the same
docs, one after the other (the order alternates between rounds), timing
`nlp.pipe` on Docs already tokenized by ja_ginza (the tokenizer is not
timed). With `--parallel 1` each prompt decodes alone, so the outputs
differ only where the stop cut them. The annotations compared per doc: doc.ents (label, start, end),
doc.cats, and every span group and relation/event extension the component
wrote.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import spacy

from spacy_giellm.component import add_giellm
from spacy_giellm.docs import TUPLE_KINDS, get_tuples
from spacy_giellm.format import parse_input
from spacy_giellm.tasks import get_task, load_task_file


def annotations(doc):
    spans = {key: [(s.label_, s.start, s.end) for s in group] for key, group in doc.spans.items()}
    tuples = {kind: get_tuples(doc, kind) for kind in TUPLE_KINDS}
    return {"ents": [(e.label_, e.start, e.end) for e in doc.ents], "cats": doc.cats, "spans": spans, **tuples}


def _only(these, those):
    """The parts of annotations `these` that `those` lacks, by kind."""
    out = {}
    for kind, value in these.items():
        other = those.get(kind)
        if isinstance(value, dict) and kind != "cats":
            diff = {k: [x for x in v if x not in other.get(k, [])] for k, v in value.items()}
            diff = {k: v for k, v in diff.items() if v}
        elif isinstance(value, list):
            diff = [x for x in value if x not in other]
        else:
            diff = value if value != other else None
        if diff:
            out[kind] = diff
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("test", type=Path)
    ap.add_argument("--task", required=True, help="built-in task name or task file")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, help="n_parallel (default: the backend's); 1 compares the outputs "
                    "without the float rounding a batch's changing layout brings")
    ap.add_argument("--backend", choices=("llamacpp", "hf"), default="llamacpp")
    ap.add_argument("--batch-size", type=int, help="the HF backend's batch_size (default: the backend's)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    task = load_task_file(args.task) if Path(args.task).is_file() else get_task(args.task)
    texts = []
    for line in args.test.read_text(encoding="utf-8").splitlines()[: args.n]:
        texts.append(parse_input(json.loads(line)["input"], task)[0])
    tokenizer = spacy.load("ja_ginza")
    docs = [tokenizer.make_doc(t) for t in texts]
    pipes = {}
    for stop in (False, True):
        nlp = spacy.blank("ja")
        if args.backend == "hf":
            import torch

            torch.set_num_threads(args.threads)
            backend = {"@giellm_backends": "giellm.HF.v1", "model": args.model, "device": "cpu",
                       "max_new_tokens": args.max_new_tokens, "stop_loops": stop}
            if args.batch_size:
                backend["batch_size"] = args.batch_size
        else:
            backend = {"@giellm_backends": "giellm.LlamaCpp.v1", "model_path": args.model, "n_threads": args.threads,
                       "max_new_tokens": args.max_new_tokens, "stop_loops": stop}
            if args.parallel:
                backend["n_parallel"] = args.parallel
        add_giellm(nlp, task, backend, name="giellm")
        list(nlp.pipe([d.copy() for d in docs[:2]]))  # load, warm up
        pipes[stop] = nlp
    seconds = {False: [], True: []}
    results = {}
    for r in range(args.rounds):
        for stop in ((False, True) if r % 2 == 0 else (True, False)):
            nlp = pipes[stop]
            backend = nlp.get_pipe("giellm").backend
            backend.decoding_stats(reset=True)
            t = time.perf_counter()
            out = list(nlp.pipe([d.copy() for d in docs]))
            seconds[stop].append(time.perf_counter() - t)
            results[stop] = ([annotations(d) for d in out], backend.decoding_stats())
    same = sum(a == b for a, b in zip(results[False][0], results[True][0]))
    report = {
        "model": args.model, "backend": args.backend, "docs": len(docs), "rounds": args.rounds,
        "docs_per_s_off": [round(len(docs) / s, 2) for s in seconds[False]],
        "docs_per_s_on": [round(len(docs) / s, 2) for s in seconds[True]],
        "speedup_median": round(statistics.median(seconds[False]) / statistics.median(seconds[True]), 2),
        "same_annotations": same,
        "loops_stopped": results[True][1].get("loops_stopped"),
        "differing": [i for i, (a, b) in enumerate(zip(results[False][0], results[True][0])) if a != b][:20],
    }
    # what each differing Doc has with the stop off and not on, and the reverse
    report["differences"] = [
        {"doc": i, "text": texts[i], "off_only": _only(off, on), "on_only": _only(on, off)}
        for i, (off, on) in enumerate(zip(results[False][0], results[True][0])) if off != on
    ][:20]
    print(json.dumps(report, ensure_ascii=False, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
