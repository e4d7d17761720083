"""`training.evaluate` scores what the component generated, part by part for
a long doc. No model: a backend answers each part with the gold output of
the sentences it holds."""
import json
from typing import Dict, List

import pytest

from spacy_giellm import Annotation, Mention, build_input, get_task, render_output
from spacy_giellm.format import parse_output
from spacy_giellm.registry import giellm_backends
from spacy_giellm.training import evaluate as evaluate_module
from spacy_giellm.training.evaluate import evaluate

TASK = get_task("scnm")
SUFFIX = build_input("", TASK)
# 50 sentences, 1,450 characters: more than the component's max_chars (1000),
# so the doc is generated in two parts.
SENTENCES = {
    f"会社員の山田太郎{i:03d}さんは東京都{i:03d}区に住んでいる。": [["人名", f"山田太郎{i:03d}"], ["地名", f"東京都{i:03d}区"]]
    for i in range(50)
}
LONG_TEXT = "".join(SENTENCES)


def _output(text: str) -> str:
    """The gold output for `text`: the entities of the sentences it holds."""
    ents = [Mention(label, span) for sent, pairs in SENTENCES.items() if sent in text for label, span in pairs]
    return render_output(Annotation(text=text, task="scnm", label="社会", entities=ents), TASK)


class _GoldPerPart:
    def generate(self, prompts: List[str]) -> List[str]:
        assert all(p.endswith(SUFFIX) for p in prompts)
        return [_output(p[: len(p) - len(SUFFIX)]) for p in prompts]


@giellm_backends.register("test.GoldPerPart.v1")
def make_gold_per_part() -> _GoldPerPart:
    return _GoldPerPart()


@pytest.fixture()
def gold_path(tmp_path):
    gold = Annotation(text=LONG_TEXT, task="scnm", label="社会",
                      entities=[Mention(label, span) for pairs in SENTENCES.values() for label, span in pairs])
    record = {"text": LONG_TEXT, "task": "scnm", "label": "社会",
              "entities": [{"label": m.label, "text": m.text} for m in gold.entities]}
    path = tmp_path / "gold.jsonl"
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf8")
    return path


def test_a_long_doc_is_scored_part_by_part(gold_path, tmp_path, monkeypatch):
    assert len(LONG_TEXT) > 1000
    monkeypatch.setattr(evaluate_module, "backend_config",
                        lambda model, **_: {"@giellm_backends": "test.GoldPerPart.v1"})
    metrics = evaluate("gold-per-part", gold_path, tmp_path / "metrics")
    row = json.loads((tmp_path / "metrics" / "predictions.jsonl").read_text(encoding="utf8"))
    assert row["problems"] == []
    for level in ("model", "pipeline"):
        scores = metrics["results"]["scnm"][level]
        assert (scores["tl_acc"], scores["wl_p"], scores["wl_r"], scores["all_acc"]) == (1.0, 1.0, 1.0, 1.0), level
    assert metrics["results"]["scnm"]["model"]["counts"]["wl_gold"] == 100


def test_model_annotation_pools_the_parts():
    from spacy_giellm.training.evaluate import model_annotation

    sents = list(SENTENCES)
    outputs = [_output(sents[0]), _output(sents[1]), "<文芸>Named Entity Recognition", "<文芸>Named Entity Recognition"]
    ann, problems = model_annotation(outputs, TASK, LONG_TEXT)
    assert ann.label == "社会"  # two parts each for 社会 and 文芸: the first of those tied
    assert [[m.label, m.text] for m in ann.entities] == SENTENCES[sents[0]] + SENTENCES[sents[1]]
    assert problems == []
    # one output is read as parse_output reads it; none is an empty reading
    one = _output(sents[0])
    assert model_annotation([one], TASK, sents[0]) == (parse_output(one, TASK, sents[0]).annotation, [])
    assert model_annotation([], TASK, "x")[0].label is None
