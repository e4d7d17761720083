"""Would a repeat guard help? Replays the outputs an `evaluate-model` run
stored (predictions.jsonl) through the component and its scoring, as they
were and with a guard on *looping pieces*: a piece whose string the output
already gave as many times as it occurs in the text (it can never be
placed: two mentions never share an occurrence).

- `none`: the outputs as generated (reproduces the run's metrics.json);
- `drop`: looping pieces removed;
- `stop`: the output ended before its first looping piece: what a decoding
  stop there would give, since greedy decoding makes the same prefix.

    python scripts/repeat_guard_replay.py test.jsonl task.json eval-gemma1600/predictions.jsonl --nlp ja_ginza

Entity (pair) tasks only; one output per doc (texts under max_chars).
"""
import argparse
import json
from collections import Counter

from spacy_giellm.corpora import ReadReport, read_jsonl
from spacy_giellm.format import build_input, parse_output, render_output
from spacy_giellm.registry import giellm_backends
from spacy_giellm.scoring import score_annotations
from spacy_giellm.tasks import load_task_file
from spacy_giellm.component import add_giellm
from spacy_giellm.training.evaluate import evaluate_group, make_nlp

MODES = ("none", "drop", "stop")


def guard(output: str, text: str, task, mode: str) -> str:
    if mode == "none":
        return output
    ann = parse_output(output, task, text).annotation
    given: Counter = Counter()
    kept = []
    for mention in ann.entities:
        if given[mention.text] >= max(1, text.count(mention.text)):
            if mode == "stop":
                break
            continue
        given[mention.text] += 1
        kept.append(mention)
    ann.entities = kept
    return render_output(ann, task)


class Replay:
    def __init__(self, outputs, task, mode):
        self.outputs, self.task, self.mode = outputs, task, mode

    def generate(self, prompts):
        return [guard(*self.outputs[p], self.task, self.mode) for p in prompts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="the held-out JSONL the run scored")
    parser.add_argument("task", help="the task file")
    parser.add_argument("predictions", nargs="+", help="predictions.jsonl of evaluate-model runs")
    parser.add_argument("--nlp", default="blank", help="as evaluate-model's --nlp")
    args = parser.parse_args()
    task = load_task_file(args.task)
    golds = list(read_jsonl(args.data, task=task, report=ReadReport(path=args.data)))
    nlp = make_nlp(args.nlp)
    for path in args.predictions:
        rows = [json.loads(line) for line in open(path, encoding="utf8")]
        outputs = {build_input(r["text"], task): (r["output"], r["text"]) for r in rows}
        for mode in MODES:
            name = f"replay.{mode}.v1"
            giellm_backends.register(name, func=lambda mode=mode: Replay(outputs, task, mode))
            add_giellm(nlp, task, {"@giellm_backends": name}, "replay", store_output=True, split_tokens=True,
                       score_cats=False)
            model_pairs, doc_pairs, _, _ = evaluate_group(nlp, task, golds)
            nlp.remove_pipe("replay")
            shown = []
            for level, pairs in (("Doc", doc_pairs), ("raw strings", model_pairs)):
                s = score_annotations(pairs)
                shown.append(f"{level} F {s['wl_f']:.3f} (P {s['wl_p']:.3f} / R {s['wl_r']:.3f}, {s['counts']['wl_pred']} predicted)")
            print(f"{path} {mode}: " + "; ".join(shown), flush=True)


if __name__ == "__main__":
    main()
