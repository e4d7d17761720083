"""Bad data in, a named error or a counted skip out (issue 11, items 5, 6, 7,
9, 11, 12, 13): readers, writers, the parser's speed on adversarial output,
task names in data, output file modes, alignment."""
import json
import os
import time
from pathlib import Path

import pytest

from spacy_giellm.annotation import Annotation
from spacy_giellm.format import parse_output
from spacy_giellm.tasks import get_task

TCREE = get_task("tcree").with_labels(
    word_labels={"relations": ("提携", "所属", "出演"), "events": ("発売", "移籍", "公開")}
)


# 9: the parser stays roughly linear on adversarial output


def _cpu_seconds(output: str, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for _ in range(repeat):
            parse_output(output, TCREE)
        best = min(best, time.process_time() - start)
    return best


@pytest.mark.parametrize(
    "shape",
    [
        # one region between two pieces, full of `::` cuts and `;`
        lambda k: "<IT>Relation Extraction:x;提携;y" + "::y;y" * (300 * k) + ";提携;y:",
        # 30 pieces and trailing junk: the reading that re-labels anchors runs
        lambda k: "<IT>Relation Extraction" + (":x;提携;y" + "::y;y" * (5 * k)) * 30 + "junk",
    ],
    ids=["long-region", "many-pieces"],
)
def test_parse_output_is_roughly_linear(shape):
    small, large = shape(1), shape(4)
    assert len(large) > 3 * len(small)
    # quadratic work would take ~10-16x as long; linear ~3-4x
    ratio = _cpu_seconds(large) / _cpu_seconds(small)
    assert ratio < 8, f"{len(small)} -> {len(large)} chars took {ratio:.1f}x the CPU time"


# 13: alignment under NFKC over the whole string, one mention per occurrence


@pytest.mark.parametrize(
    "text,needle,expected",
    [
        ("僕のｶﾞｯｺｳは遠い", "ガッコウ", "ｶﾞｯｺｳ"),  # halfwidth katakana with dakuten
        ("僕のガッコウは遠い", "ｶﾞｯｺｳ", "ガッコウ"),  # and the other way round
        ("Cafe\u0301 de Flore", "Café", "Cafe\u0301"),  # a combining accent
        ("Caf\u00e9 au lait", "Cafe\u0301", "Caf\u00e9"),
        ("株式会社は㍿とも書く", "㍿", "㍿"),
    ],
)
def test_locator_normalizes_whole_strings(text, needle, expected):
    from spacy_giellm.align import StringLocator

    hit = StringLocator(text).locate(needle)
    assert hit is not None and text[hit[0] : hit[1]] == expected


def test_locator_never_places_two_mentions_on_one_occurrence():
    from spacy_giellm.align import StringLocator

    text = "日本と日本と日本"
    locator = StringLocator(text)
    assert [locator.locate("日本") for _ in range(4)] == [(0, 2), (3, 5), (6, 8), None]
    # the same under NFKC: two fullwidth-A mentions, one in the text
    locator = StringLocator("ＡとB")
    assert [locator.locate("A"), locator.locate("A")] == [(0, 1), None]
    # a mention inside the previous one is still found; a new kind starts afresh
    locator = StringLocator("東京大学")
    assert [locator.locate("東京大学"), locator.locate("東京")] == [(0, 4), (0, 2)]
    locator.prev = None
    assert locator.locate("東京大学") == (0, 4)
