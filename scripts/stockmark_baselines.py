"""Baselines for the stockmark NER measurement, scored like GIELLM
(`scoring.score_annotations`: (label, string) multisets per sentence).

    python scripts/stockmark_baselines.py ginza TEST.jsonl OUT.json
    python scripts/stockmark_baselines.py spacy-ner TRAIN.jsonl DEV.jsonl TEST.jsonl OUT.json --seconds 1800 [--base ja_ginza]
    python scripts/stockmark_baselines.py spacy-textcat TRAIN.jsonl DEV.jsonl TEST.jsonl OUT.json --seconds 1800
    python scripts/stockmark_baselines.py majority TRAIN.jsonl TEST.jsonl OUT.json

`ginza`: ja_ginza's own NER (ENE labels) mapped to the 8 stockmark types by
`ENE_TO_STOCKMARK` below; ENE labels not listed (dates, numbers, ...) are
dropped. `spacy-ner`: a spaCy `ner` component on spacy.blank("ja")
(SudachiPy tokens) or on ja_ginza's pretrained tok2vec (`--base ja_ginza`),
trained on the same sentences for a CPU-time budget, the best epoch on dev
kept. `spacy-textcat` / `majority`: sentiment (text label) baselines. Each
command reads only the records of its own task from mixed JSONL files.
"""
import json
import random
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import typer

from spacy_giellm.annotation import Annotation, Mention
from spacy_giellm.corpora import read_jsonl
from spacy_giellm.scoring import score_annotations

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

# ja_ginza 5.x emits 189 ENE (Sekine's Extended Named Entity) labels. Those
# that correspond to one of stockmark's 8 types, by the stockmark guideline:
ENE_TO_STOCKMARK: Dict[str, str] = {
    # 人名
    "Person": "人名",
    # 法人名 (companies and other corporations)
    "Company": "法人名",
    "Company_Group": "法人名",
    "Corporation_Other": "法人名",
    # 政治的組織名
    "Political_Organization_Other": "政治的組織名",
    "Political_Party": "政治的組織名",
    "Government": "政治的組織名",
    "Cabinet": "政治的組織名",
    "Military": "政治的組織名",
    # その他の組織名
    "Organization_Other": "その他の組織名",
    "International_Organization": "その他の組織名",
    "Sports_Organization_Other": "その他の組織名",
    "Pro_Sports_Organization": "その他の組織名",
    "Sports_League": "その他の組織名",
    "Show_Organization": "その他の組織名",
    # 地名
    "Province": "地名",
    "City": "地名",
    "County": "地名",
    "Country": "地名",
    "GPE_Other": "地名",
    "Location_Other": "地名",
    "Domestic_Region": "地名",
    "Continental_Region": "地名",
    "Region_Other": "地名",
    "Geological_Region_Other": "地名",
    "Mountain": "地名",
    "River": "地名",
    "Lake": "地名",
    "Sea": "地名",
    "Bay": "地名",
    "Island": "地名",
    "Water_Route": "地名",
    "Spa": "地名",
    # 施設名
    "Facility_Other": "施設名",
    "GOE_Other": "施設名",
    "School": "施設名",
    "Public_Institution": "施設名",
    "Research_Institute": "施設名",
    "Museum": "施設名",
    "Zoo": "施設名",
    "Amusement_Park": "施設名",
    "Worship_Place": "施設名",
    "Park": "施設名",
    "Sports_Facility": "施設名",
    "Theater": "施設名",
    "Airport": "施設名",
    "Station": "施設名",
    "Car_Stop": "施設名",
    "Port": "施設名",
    "Railroad": "施設名",
    "Road": "施設名",
    "Bridge": "施設名",
    "Tunnel": "施設名",
    "Line_Other": "施設名",
    "Archaeological_Place_Other": "施設名",
    "Tumulus": "施設名",
    # 製品名 (products and works)
    "Product_Other": "製品名",
    "Car": "製品名",
    "Train": "製品名",
    "Aircraft": "製品名",
    "Ship": "製品名",
    "Spaceship": "製品名",
    "Vehicle_Other": "製品名",
    "Weapon": "製品名",
    "Drug": "製品名",
    "Clothing": "製品名",
    "Book": "製品名",
    "Magazine": "製品名",
    "Newspaper": "製品名",
    "Movie": "製品名",
    "Music": "製品名",
    "Show": "製品名",
    "Broadcast_Program": "製品名",
    "Art_Other": "製品名",
    "Printing_Other": "製品名",
    # イベント名
    "Event_Other": "イベント名",
    "Occasion_Other": "イベント名",
    "Game": "イベント名",
    "Conference": "イベント名",
    "Religious_Festival": "イベント名",
    "War": "イベント名",
    "Incident_Other": "イベント名",
    "Natural_Disaster": "イベント名",
    "Earthquake": "イベント名",
}


def _gold(path: Path, task: str) -> List[Annotation]:
    """The records of `task` in a (possibly mixed) JSONL file."""
    return [g for g in read_jsonl(path) if g.task == task]


def _write(out: Path, data: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf8")
    s = data["scores"]
    print(
        f"{data['system']}: WL acc {100 * (s['wl_acc'] or 0):.2f}  P {100 * (s['wl_p'] or 0):.2f}  "
        f"R {100 * (s['wl_r'] or 0):.2f}  F {100 * (s['wl_f'] or 0):.2f}  ALL {100 * (s['all_acc'] or 0):.2f}  "
        f"({data['seconds']} s)"
    )


@app.command("ginza")
def ginza(test_path: Path, out: Path) -> None:
    """ja_ginza's NER, ENE labels mapped to the stockmark types."""
    import spacy

    t0 = time.time()
    nlp = spacy.load("ja_ginza")
    emitted = set(nlp.get_pipe("ner").labels)
    unknown = sorted(set(ENE_TO_STOCKMARK) - emitted)
    if unknown:
        raise SystemExit(f"mapping names labels ja_ginza does not have: {unknown}")
    golds = _gold(test_path, "ner-ja")
    pairs, unmapped = [], {}
    for gold, doc in zip(golds, nlp.pipe([g.text for g in golds], batch_size=64)):
        ents = []
        for e in doc.ents:
            label = ENE_TO_STOCKMARK.get(e.label_)
            if label is None:
                unmapped[e.label_] = unmapped.get(e.label_, 0) + 1
            else:
                ents.append(Mention(label, e.text))
        pairs.append((gold, Annotation(text=gold.text, task=gold.task, entities=ents)))
    _write(out, {
        "system": "ja_ginza NER (ENE -> stockmark mapping)",
        "test": str(test_path),
        "sequences": len(pairs),
        "seconds": round(time.time() - t0, 1),
        "mapping": ENE_TO_STOCKMARK,
        "dropped_ene_labels": dict(sorted(unmapped.items(), key=lambda kv: -kv[1])),
        "scores": score_annotations(pairs),
    })


def _examples(nlp, golds: List[Annotation]) -> Tuple[list, int]:
    from spacy.training import Example

    examples, misaligned = [], 0
    for g in golds:
        doc = nlp.make_doc(g.text)
        spans = []
        for m in g.entities:
            span = doc.char_span(m.start, m.end, label=m.label) if m.start is not None else None
            if span is None:
                misaligned += 1
                continue
            spans.append(span)
        from spacy.util import filter_spans

        ents = [(s.start_char, s.end_char, s.label_) for s in filter_spans(spans)]
        examples.append(Example.from_dict(doc, {"entities": ents}))
    return examples, misaligned


def _predict(nlp, golds: List[Annotation]) -> List[Tuple[Annotation, Annotation]]:
    return [
        (g, Annotation(text=g.text, task=g.task, entities=[Mention(e.label_, e.text) for e in doc.ents]))
        for g, doc in zip(golds, nlp.pipe([g.text for g in golds], batch_size=128))
    ]


def _ner_pipeline(base: str):
    """A fresh `ner` on spacy.blank("ja") (its own CNN tok2vec), or on a
    pretrained pipeline's tok2vec (ja_ginza: a listener to its `tok2vec`,
    fine-tuned with the ner; its own NER and other components left out)."""
    import spacy

    if base == "blank":
        nlp = spacy.blank("ja")
        return nlp, nlp.add_pipe("ner"), ["ner"]
    nlp = spacy.load(base, exclude=["ner", "parser", "morphologizer", "compound_splitter", "bunsetu_recognizer"])
    width = nlp.get_pipe("tok2vec").model.get_dim("nO")
    listener = {"@architectures": "spacy.Tok2VecListener.v1", "width": width, "upstream": "tok2vec"}
    ner = nlp.add_pipe("ner", config={"model": {"@architectures": "spacy.TransitionBasedParser.v2",
                                               "state_type": "ner", "extra_state_tokens": False,
                                               "hidden_width": 64, "maxout_pieces": 2, "use_upper": True,
                                               "tok2vec": listener}})
    return nlp, ner, ["tok2vec", "ner"]


@app.command("spacy-ner")
def spacy_ner(
    train_path: Path, dev_path: Path, test_path: Path, out: Path,
    seconds: float = typer.Option(3600, "--seconds", help="Training budget in seconds of --clock"),
    clock: str = typer.Option("cpu", "--clock", help="'cpu' (process CPU seconds, all threads) or 'wall'"),
    patience: int = typer.Option(5, "--patience", help="Stop after this many epochs without a better dev F"),
    seed: int = typer.Option(0, "--seed"),
    base: str = typer.Option("blank", "--base", help="'blank' (own CNN tok2vec) or a pipeline whose pretrained tok2vec the ner listens to, e.g. ja_ginza"),
    task: str = typer.Option("ner-ja", "--task", help="The entity task whose records to read (a user task resolves through the files' sidecars)"),
) -> None:
    """A spaCy NER trained for a time budget (on blank ja, or on a
    pretrained pipeline's tok2vec)."""
    from spacy.util import compounding, fix_random_seed, minibatch

    t0 = time.time()
    fix_random_seed(seed)
    nlp, ner, trained = _ner_pipeline(base)
    train, dev, test = (_gold(p, task) for p in (train_path, dev_path, test_path))
    train_ex, misaligned = _examples(nlp, train)
    n_gold = sum(len(g.entities) for g in train)
    for g in train:
        for m in g.entities:
            ner.add_label(m.label)
    optimizer = nlp.initialize(lambda: train_ex) if base == "blank" else nlp.resume_training()
    if base != "blank":
        ner.initialize(lambda: train_ex, nlp=nlp)
    rng = random.Random(seed)
    best, best_f, epochs, log = None, -1.0, 0, []
    now = time.process_time if clock == "cpu" else time.monotonic
    t_train, best_epoch = now(), 0
    while now() - t_train < seconds and epochs - best_epoch < patience:
        rng.shuffle(train_ex)
        losses: Dict[str, float] = {}
        for batch in minibatch(train_ex, size=compounding(4.0, 32.0, 1.001)):
            with nlp.select_pipes(enable=trained):
                nlp.update(batch, sgd=optimizer, drop=0.2, losses=losses)
            if now() - t_train >= seconds:
                break
        epochs += 1
        f = score_annotations(_predict(nlp, dev))["wl_f"] or 0.0
        log.append({"epoch": epochs, "loss": float(losses.get("ner", 0.0)), "dev_f": f, "t": round(now() - t_train)})
        print(log[-1], file=sys.stderr)
        if f > best_f:
            best, best_f, best_epoch = nlp.to_bytes(), f, epochs
    if best is not None:
        nlp.from_bytes(best)
    pairs = _predict(nlp, test)
    _write(out, {
        "system": f"spaCy ner ({'blank ja, own tok2vec CNN' if base == 'blank' else base + ' pretrained tok2vec, fine-tuned'}), best epoch on dev",
        "test": str(test_path),
        "sequences": len(pairs),
        "train_sentences": len(train),
        "train_entities_not_on_token_boundaries": f"{misaligned} of {n_gold}",
        "budget_seconds": seconds,
        "budget_clock": clock,
        "cpu_seconds_training": round(now() - t_train, 1) if clock == "cpu" else None,
        "epochs": epochs,
        "best_epoch": best_epoch,
        "epoch_log": log,
        "seconds": round(time.time() - t0, 1),
        "scores": score_annotations(pairs),
    })


@app.command("majority")
def majority(train_path: Path, test_path: Path, out: Path) -> None:
    """The most frequent training text label, for every test sentence."""
    from collections import Counter

    label = Counter(g.label for g in _gold(train_path, "sentiment-ja")).most_common(1)[0][0]
    test = _gold(test_path, "sentiment-ja")
    pairs = [(g, Annotation(text=g.text, task=g.task, label=label)) for g in test]
    _write(out, {"system": f"majority class ({label})", "test": str(test_path), "sequences": len(pairs),
                 "seconds": 0.0, "scores": score_annotations(pairs)})


@app.command("spacy-textcat")
def spacy_textcat(
    train_path: Path, dev_path: Path, test_path: Path, out: Path,
    seconds: float = typer.Option(1800, "--seconds", help="Training budget in seconds of --clock"),
    clock: str = typer.Option("cpu", "--clock"),
    patience: int = typer.Option(5, "--patience"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """A spaCy `textcat` (exclusive classes, bag-of-words model) on
    spacy.blank("ja") tokens, best epoch on dev accuracy."""
    import spacy
    from spacy.training import Example
    from spacy.util import fix_random_seed, minibatch

    t0 = time.time()
    fix_random_seed(seed)
    train, dev, test = (_gold(p, "sentiment-ja") for p in (train_path, dev_path, test_path))
    labels = sorted({g.label for g in train})
    nlp = spacy.blank("ja")
    textcat = nlp.add_pipe("textcat", config={"model": {
        "@architectures": "spacy.TextCatBOW.v3", "exclusive_classes": True, "ngram_size": 2,
        "no_output_layer": False, "length": 262144,
    }})
    for label in labels:
        textcat.add_label(label)
    examples = [Example.from_dict(nlp.make_doc(g.text), {"cats": {l: float(l == g.label) for l in labels}})
                for g in train]
    optimizer = nlp.initialize(lambda: examples)

    def predict(golds):
        return [(g, Annotation(text=g.text, task=g.task, label=max(d.cats, key=d.cats.get)))
                for g, d in zip(golds, nlp.pipe([g.text for g in golds], batch_size=256))]

    rng = random.Random(seed)
    now = time.process_time if clock == "cpu" else time.monotonic
    t_train, best, best_acc, best_epoch, epochs, log = now(), None, -1.0, 0, 0, []
    while now() - t_train < seconds and epochs - best_epoch < patience:
        rng.shuffle(examples)
        losses: Dict[str, float] = {}
        for batch in minibatch(examples, size=32):
            nlp.update(batch, sgd=optimizer, losses=losses)
        epochs += 1
        acc = score_annotations(predict(dev))["tl_acc"] or 0.0
        log.append({"epoch": epochs, "loss": float(losses.get("textcat", 0.0)), "dev_acc": acc})
        print(log[-1], file=sys.stderr)
        if acc > best_acc:
            best, best_acc, best_epoch = nlp.to_bytes(), acc, epochs
    nlp.from_bytes(best)
    pairs = predict(test)
    _write(out, {"system": "spaCy textcat (bag of words, unigrams + bigrams), best epoch on dev",
                 "test": str(test_path), "sequences": len(pairs), "train_sentences": len(train),
                 "budget_seconds": seconds, "budget_clock": clock, "epochs": epochs, "best_epoch": best_epoch,
                 "epoch_log": log, "seconds": round(time.time() - t0, 1), "scores": score_annotations(pairs)})


if __name__ == "__main__":
    app()
