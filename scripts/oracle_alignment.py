"""How well does the component place entities, given perfect generations?

An oracle backend returns the gold output string for every prompt; the
component parses and aligns it on GiNZA docs. Measures entity P/R/F against
the gold char offsets, with `split_tokens` off and on.

    python scripts/oracle_alignment.py ../shared/data/stockmark-ner/ner.json
"""
import json
import sys
import time

import spacy

from spacy_giellm import Annotation, Mention, build_input, get_task, render_output
from spacy_giellm.registry import giellm_backends

_TABLE = {}


@giellm_backends.register("oracle.Table.v1")
def make_oracle():
    class Oracle:
        def generate(self, prompts):
            return [_TABLE[p] for p in prompts]

    return Oracle()


def main(path: str) -> None:
    records = json.load(open(path, encoding="utf8"))
    task = get_task("ner-ja")
    for r in records:
        gold = Annotation(text=r["text"], entities=[Mention(e["type"], e["name"]) for e in r["entities"]])
        _TABLE[build_input(r["text"], task)] = render_output(gold, task)
    texts = [r["text"] for r in records]
    for split in (False, True):
        nlp = spacy.load("ja_ginza")
        pipe = nlp.add_pipe("giellm", config={
            "task": "ner-ja", "backend": {"@giellm_backends": "oracle.Table.v1"}, "split_tokens": split,
        })
        tp = n_gold = n_pred = tp_ents = n_ents = 0
        start = time.time()
        for r, doc in zip(records, nlp.pipe(texts)):
            gold = {(e["span"][0], e["span"][1], e["type"]) for e in r["entities"]}
            pred = {(s.start_char, s.end_char, s.label_) for s in doc.spans["giellm_entities"]}
            ents = {(s.start_char, s.end_char, s.label_) for s in doc.ents}
            tp += len(gold & pred); n_gold += len(gold); n_pred += len(pred)
            tp_ents += len(gold & ents); n_ents += len(ents)
        p, r_ = tp / n_pred, tp / n_gold
        print(json.dumps({
            "split_tokens": split, "sentences": len(records), "gold": n_gold,
            "span_group": {"p": round(p, 4), "r": round(r_, 4), "f": round(2 * p * r_ / (p + r_), 4)},
            "doc_ents_f": round(2 * tp_ents / (n_gold + n_ents), 4),
            "stats": dict(pipe.stats), "seconds": round(time.time() - start, 1),
        }, ensure_ascii=False))


if __name__ == "__main__":
    main(sys.argv[1])
