"""Development tooling for the leak-free starting-model measurement (not
shipped with the package): split a converted NER corpus (`convert`'s JSONL)
into a pool for the starting model, in which some labels are never named,
and a pool for a "user task" made of exactly those labels, under new names,
on sentences the starting model never sees.

    python scripts/heldout_labels.py NER.jsonl OUT --heldout 製品名=製品 --heldout イベント名=イベント \
        --heldout 施設名=施設 --user 800 --seed 0

writes
    OUT/start.jsonl      the starting pool: the other labels only (the held-out
                         labels' spans unlabelled), task `START_NAME` (schema form)
    OUT/user.jsonl       the user pool: only the held-out labels, renamed,
                         task `USER_NAME` (schema form); sentences never in start.jsonl
with their sidecars, and prints the counts.
"""
from __future__ import annotations

import argparse
import json
import random
from dataclasses import replace
from pathlib import Path

from spacy_giellm.corpora import read_corpus, write_jsonl
from spacy_giellm.tasks import Task, WordLevel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ner_jsonl", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--heldout", action="append", required=True, help="OLD=NEW: a label the starting model never sees, and its name in the user task")
    ap.add_argument("--user", type=int, default=800, help="sentences in the user pool")
    ap.add_argument("--start-name", default="giellm-ja-ner")
    ap.add_argument("--user-name", default="user-ner")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    heldout = dict(spec.split("=", 1) for spec in args.heldout)
    annotations, _ = read_corpus("jsonl", args.ner_jsonl)
    if not annotations:
        raise SystemExit(f"{args.ner_jsonl}: no records")
    task_names = {a.task for a in annotations}
    if len(task_names) != 1:
        raise SystemExit(f"{args.ner_jsonl}: one task expected, found {sorted(task_names)}")
    from spacy_giellm.corpora.sidecar import task_resolver

    source_task = task_resolver(None, args.ner_jsonl).resolve(task_names.pop())
    wl = source_task.word_level()
    missing = set(heldout) - set(wl.labels)
    if missing:
        raise SystemExit(f"--heldout label(s) {sorted(missing)} are not labels of task {source_task.name}: {list(wl.labels)}")
    kept = [label for label in wl.labels if label not in heldout]
    start_task = Task(args.start_name, (), (replace(wl, labels=tuple(kept)),), label_schema=True)
    user_task = Task(args.user_name, (), (WordLevel("entities", wl.instruction, tuple(heldout.values())),), label_schema=True)

    order = list(range(len(annotations)))
    random.Random(args.seed).shuffle(order)
    user_ids = set(order[: args.user])
    start, user = [], []
    for i, ann in enumerate(annotations):
        if i in user_ids:
            ents = [replace(m, label=heldout[m.label]) for m in ann.entities if m.label in heldout]
            user.append(ann.copy(task=user_task.name, entities=ents))
        else:
            start.append(ann.copy(task=start_task.name, entities=[m for m in ann.entities if m.label in kept]))
    args.out.mkdir(parents=True, exist_ok=True)
    counts = {
        "start": write_jsonl(start, args.out / "start.jsonl", start_task),
        "user": write_jsonl(user, args.out / "user.jsonl", user_task),
        "start_labels": kept,
        "user_labels": list(heldout.values()),
        "user_sentences_with_a_user_label": sum(bool(a.entities) for a in user),
    }
    print(json.dumps(counts, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
