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
