"""TL / WL / ALL accuracy as the GIELLM paper defines them, plus micro P/R/F.

- TL accuracy: sequences whose predicted text label equals the gold one,
  over sequences that have a gold text label.
- WL accuracy: matched word-level items over gold items (micro). Alone it
  rewards over-generation, hence the precision / recall / F1 beside it.
- ALL accuracy: share of sequences with both levels at 100%: text label
  right (or none to predict) and every gold word-level item found. A
  sequence with no gold items is at 100% only if nothing was predicted.
- Matching is on multisets of (kind, label, strings): an item predicted
  twice matches once, and the second copy counts against precision.

All values are fractions in [0, 1], as spaCy's scorers report them.
"""
from collections import Counter
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from spacy.util import registry

from .annotation import Annotation


def _prf(tp: int, n_pred: int, n_gold: int) -> Tuple[float, float, float]:
    p = tp / n_pred if n_pred else (1.0 if n_gold == 0 else 0.0)
    r = tp / n_gold if n_gold else (1.0 if n_pred == 0 else 0.0)
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def score_annotations(pairs: Iterable[Tuple[Annotation, Annotation]]) -> Dict[str, Any]:
    """Score (gold, predicted) pairs. Returns a flat dict of metrics plus
    `per_label` word-level P/R/F and the counts behind every number."""
    n = n_tl_gold = n_tl_pred = tl_correct = all_correct = 0
    wl_tp = wl_pred = wl_gold = 0
    per_label: Dict[str, Counter] = {}
    for gold, pred in pairs:
        n += 1
        tl_ok = True
        if gold.label is not None:
            n_tl_gold += 1
            tl_ok = pred.label == gold.label
            tl_correct += tl_ok
        if pred.label is not None:
            n_tl_pred += 1
        g, p = Counter(gold.word_keys()), Counter(pred.word_keys())
        tp_counter = g & p
        tp = sum(tp_counter.values())
        wl_tp += tp
        wl_gold += sum(g.values())
        wl_pred += sum(p.values())
        seq_wl_ok = tp == sum(g.values()) and (sum(g.values()) > 0 or sum(p.values()) == 0)
        all_correct += tl_ok and seq_wl_ok
        for counter, slot in ((g, "gold"), (p, "pred"), (tp_counter, "tp")):
            for key, count in counter.items():
                label = f"{key[0]}:{key[1]}"
                per_label.setdefault(label, Counter())[slot] += count
    tl_p, tl_r, tl_f = _prf(tl_correct, n_tl_pred, n_tl_gold)
    wl_p, wl_r, wl_f = _prf(wl_tp, wl_pred, wl_gold)
    return {
        "tl_acc": tl_correct / n_tl_gold if n_tl_gold else None,
        "wl_acc": wl_tp / wl_gold if wl_gold else None,
        "all_acc": all_correct / n if n else None,
        "tl_p": tl_p if n_tl_gold else None,
        "tl_r": tl_r if n_tl_gold else None,
        "tl_f": tl_f if n_tl_gold else None,
        "wl_p": wl_p if wl_gold or wl_pred else None,
        "wl_r": wl_r if wl_gold or wl_pred else None,
        "wl_f": wl_f if wl_gold or wl_pred else None,
        "per_label": {
            label: dict(zip(("p", "r", "f"), _prf(c["tp"], c["pred"], c["gold"])))
            for label, c in sorted(per_label.items())
        },
        "counts": {
            "sequences": n,
            "tl_gold": n_tl_gold,
            "tl_pred": n_tl_pred,
            "tl_correct": tl_correct,
            "wl_gold": wl_gold,
            "wl_pred": wl_pred,
            "wl_matched": wl_tp,
            "all_correct": all_correct,
        },
    }


SCORE_KEYS = ("tl_acc", "wl_acc", "all_acc", "tl_p", "tl_r", "tl_f", "wl_p", "wl_r", "wl_f")


def calibration(pairs: Iterable[Tuple[Optional[str], Dict[str, float]]], n_bins: int = 10) -> Dict[str, Any]:
    """How well text-label probabilities (`doc.cats`) are calibrated, from
    (gold label, cats) pairs: expected calibration error over `n_bins`
    equal-width bins of the top probability (|accuracy - confidence| per
    bin, weighted by its share), the top label's accuracy, mean confidence.
    Pairs without a gold label or without cats are left out and counted."""
    rows = []
    left_out = 0
    for gold, cats in pairs:
        if gold is None or not cats:
            left_out += 1
            continue
        top = max(cats, key=cats.get)
        rows.append((float(cats[top]), top == gold))
    if not rows:
        return {"n": 0, "left_out": left_out, "ece": None, "accuracy": None, "confidence": None}
    bins: Dict[int, List[Tuple[float, bool]]] = {}
    for conf, ok in rows:
        bins.setdefault(min(int(conf * n_bins), n_bins - 1), []).append((conf, ok))
    ece = sum(
        len(b) / len(rows) * abs(sum(ok for _, ok in b) / len(b) - sum(c for c, _ in b) / len(b))
        for b in bins.values()
    )
    return {
        "n": len(rows),
        "left_out": left_out,
        "ece": ece,
        "accuracy": sum(ok for _, ok in rows) / len(rows),
        "confidence": sum(c for c, _ in rows) / len(rows),
        "bins": n_bins,
    }


def format_scores(scores: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(metric, value in %) rows for printing; metrics that do not apply show '-'."""
    return [
        (key, "-" if scores.get(key) is None else f"{100 * scores[key]:.2f}") for key in SCORE_KEYS
    ]


def score_examples(examples: Iterable[Any], task: Optional[Any] = None, **_: Any) -> Dict[str, Any]:
    """spaCy scorer: compares `example.reference` with `example.predicted`
    through the annotations the `giellm` component reads off a Doc. With a
    task, only its labels count (e.g. not GiNZA's own ENE entities)."""
    from .docs import annotation_from_doc  # spaCy Docs stay out of the pure scorer's import

    pairs = [
        (annotation_from_doc(eg.reference, task), annotation_from_doc(eg.predicted, task))
        for eg in examples
    ]
    scores = score_annotations(pairs)
    out = {f"giellm_{key}": scores[key] for key in SCORE_KEYS}
    out["giellm_per_label"] = scores["per_label"]
    return out


@registry.scorers("giellm.scorer.v1")
def make_giellm_scorer() -> Callable[..., Dict[str, Any]]:
    return score_examples
