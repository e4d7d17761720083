"""TL / WL / ALL and P/R/F on hand-computed cases."""
import pytest

from spacy_giellm.annotation import Annotation, Mention, Relation
from spacy_giellm.scoring import format_scores, score_annotations


def ann(label=None, ents=(), **kw):
    return Annotation(text="t", label=label, entities=[Mention(l, t) for l, t in ents], **kw)


TOKYO, YAMADA, OSAKA, TANAKA, KYOTO = ("地名", "東京"), ("人名", "山田"), ("地名", "大阪"), ("人名", "田中"), ("地名", "京都")


def test_mixed_case_by_hand():
    pairs = [
        # over-generation: every gold item found, one extra
        (ann("positive", [TOKYO, YAMADA]), ann("positive", [TOKYO, YAMADA, OSAKA])),
        # missing predicted label, no items on either side
        (ann("negative"), ann(None)),
        # a duplicate prediction matches once
        (ann("neutral", [TANAKA]), ann("neutral", [TANAKA, TANAKA])),
        # wrong label, an item where gold has none
        (ann("positive"), ann("negative", [KYOTO])),
    ]
    s = score_annotations(pairs)
    # TL: 2 of 4 gold labels right; 3 labels predicted
    assert s["tl_acc"] == pytest.approx(0.5)
    assert s["tl_p"] == pytest.approx(2 / 3)
    assert s["tl_r"] == pytest.approx(0.5)
    assert s["tl_f"] == pytest.approx(4 / 7)
    # WL: 3 gold, 6 predicted, 3 matched
    assert s["wl_acc"] == pytest.approx(1.0)
    assert (s["wl_p"], s["wl_r"], s["wl_f"]) == pytest.approx((0.5, 1.0, 2 / 3))
    # ALL: sequences 1 and 3
    assert s["all_acc"] == pytest.approx(0.5)
    assert s["counts"] == {
        "sequences": 4, "tl_gold": 4, "tl_pred": 3, "tl_correct": 2,
        "wl_gold": 3, "wl_pred": 6, "wl_matched": 3, "all_correct": 2,
    }
    assert s["per_label"]["entity:地名"] == pytest.approx({"p": 1 / 3, "r": 1.0, "f": 0.5})
    assert s["per_label"]["entity:人名"] == pytest.approx({"p": 2 / 3, "r": 1.0, "f": 0.8})


def test_gold_duplicates_need_two_predictions():
    s = score_annotations([(ann(ents=[TANAKA, TANAKA]), ann(ents=[TANAKA]))])
    assert (s["wl_acc"], s["wl_p"], s["wl_r"]) == pytest.approx((0.5, 1.0, 0.5))
    assert s["all_acc"] == 0.0


def test_missing_item_breaks_all_but_not_tl():
    s = score_annotations([(ann("positive", [TOKYO, YAMADA]), ann("positive", [TOKYO]))])
    assert s["tl_acc"] == 1.0 and s["wl_acc"] == 0.5 and s["all_acc"] == 0.0


def test_no_gold_items():
    # nothing to find and nothing found: 100%; WL metrics do not apply
    s = score_annotations([(ann(), ann())])
    assert s["all_acc"] == 1.0
    assert s["wl_acc"] is None and s["wl_p"] is None and s["tl_acc"] is None
    # nothing to find, something found: ALL fails, precision is 0
    s = score_annotations([(ann(), ann(ents=[TOKYO]))])
    assert s["all_acc"] == 0.0 and s["wl_acc"] is None
    assert (s["wl_p"], s["wl_r"], s["wl_f"]) == (0.0, 0.0, 0.0)


def test_kinds_and_tuples_are_distinct():
    gold = Annotation(text="t", relations=[Relation("提携", ("トヨタ", "日産"))], sentiments=[Mention("positive", "良い")])
    pred = Annotation(
        text="t", relations=[Relation("提携", ("日産", "トヨタ"))], entities=[Mention("positive", "良い")]
    )
    s = score_annotations([(gold, pred)])
    assert s["counts"]["wl_matched"] == 0
    s = score_annotations([(gold, gold)])
    assert s["wl_acc"] == 1.0 and s["all_acc"] == 1.0


def test_gold_against_itself_is_100_everywhere():
    gold = [ann("positive", [TOKYO]), ann("negative"), ann("neutral", [YAMADA, YAMADA])]
    s = score_annotations(zip(gold, gold))
    assert all(value == "100.00" for _, value in format_scores(s))


def test_format_scores_marks_missing_levels():
    rows = dict(format_scores(score_annotations([(ann(ents=[TOKYO]), ann(ents=[TOKYO]))])))
    assert rows["tl_acc"] == "-" and rows["wl_f"] == "100.00"


def test_calibration_error_of_label_probabilities():
    from spacy_giellm.scoring import calibration

    # Two confident right answers (0.9), two confident wrong ones (0.9):
    # accuracy 0.5 at confidence 0.9 -> ECE 0.4. One pair without gold.
    pairs = [
        ("positive", {"positive": 0.9, "negative": 0.1}),
        ("negative", {"positive": 0.1, "negative": 0.9}),
        ("negative", {"positive": 0.9, "negative": 0.1}),
        ("positive", {"positive": 0.1, "negative": 0.9}),
        (None, {"positive": 0.5, "negative": 0.5}),
    ]
    cal = calibration(pairs)
    assert cal["n"] == 4 and cal["left_out"] == 1
    assert cal["accuracy"] == 0.5 and abs(cal["ece"] - 0.4) < 1e-9
    # Bin [0.5, 0.6): one right and one wrong at 0.55 (|0.5 - 0.55| on 2/3
    # of the rows); bin [0.9, 1]: right at 1.0 (no error).
    rows = [("a", {"a": 1.0, "b": 0.0}), ("a", {"a": 0.55, "b": 0.45}), ("a", {"a": 0.45, "b": 0.55})]
    cal = calibration(rows)
    assert abs(cal["ece"] - (2 / 3) * 0.05) < 1e-9
    assert calibration([])["ece"] is None
