"""Readers and writers on the shipped assets and on small malformed files."""
import json
from pathlib import Path

import pytest

from spacy_giellm.annotation import Annotation, Mention, Relation
from spacy_giellm.corpora import (
    READERS,
    CorpusError,
    ReadReport,
    char_nlp,
    get_reader,
    infer_task_labels,
    read_corpus,
    read_docbin,
    sample_mix,
    split_train_dev_test,
    write_docbin,
    write_jsonl,
)
from spacy_giellm.format import parse_output, render_output
from spacy_giellm.tasks import get_task

ASSETS = Path(__file__).parent.parent / "assets"
STOCKMARK = ASSETS / "stockmark-ner-sample.json"
SENTIMENT = ASSETS / "sentiment-sample.tsv"
TCREE = ASSETS / "tcree-sample.jsonl"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf8")
    return path


def assert_round_trip(annotations, task):
    """parse(render(gold)) == gold for every record."""
    for gold in annotations:
        result = parse_output(render_output(gold, task), task, gold.text)
        assert result.problems == [], gold
        assert result.annotation == gold


def test_registry():
    assert set(READERS) >= {"jsonl", "pairs", "docbin", "stockmark-ner", "jrte-pn"}
    with pytest.raises(KeyError, match="unknown reader"):
        get_reader("nope")


# stockmark-ner


def test_stockmark_sample():
    anns, report = read_corpus("stockmark-ner", STOCKMARK)
    assert (report.read, report.out, report.skipped) == (600, 600, 0)
    first = anns[0]
    assert first.task == "ner-ja"
    assert first.entities == [Mention("法人名", "レッドフォックス株式会社"), Mention("地名", "東京都千代田区")]
    assert (first.entities[1].start, first.entities[1].end) == (14, 21)
    for a in anns:
        assert [m.start for m in a.entities] == sorted(m.start for m in a.entities)
        assert all(a.text[m.start : m.end] == m.text for m in a.entities)
    assert_round_trip(anns, get_task("ner-ja"))


def _stockmark(records) -> str:
    return json.dumps(records, ensure_ascii=False)


def test_stockmark_offset_mismatch_is_an_error(tmp_path):
    good = {"curid": "1", "text": "東京に行く", "entities": [{"name": "東京", "span": [0, 2], "type": "地名"}]}
    shifted = {"curid": "42", "text": "大阪と京都", "entities": [
        {"name": "大阪", "span": [0, 2], "type": "地名"}, {"name": "京都", "span": [2, 4], "type": "地名"}]}
    path = write(tmp_path / "ner.json", _stockmark([good, shifted]))
    with pytest.raises(CorpusError) as err:
        list(get_reader("stockmark-ner")(path))
    message = str(err.value)
    assert str(path) in message and "record 1" in message and "curid 42" in message and "entity 1" in message
    anns, report = read_corpus("stockmark-ner", path, skip_errors=True)
    assert len(anns) == 1 and (report.read, report.skipped) == (2, 1)
    assert "curid 42" in report.reasons[0]


def test_stockmark_malformed(tmp_path):
    path = write(tmp_path / "bad.json", '[{"curid": "1",\n "text": }]')
    with pytest.raises(ValueError, match=r"bad\.json:2: invalid JSON"):
        read_corpus("stockmark-ner", path)
    path = write(tmp_path / "noent.json", _stockmark([{"curid": "7", "text": "x", "entities": [{"name": "x"}]}]))
    with pytest.raises(CorpusError, match="curid 7.*entity 0"):
        read_corpus("stockmark-ner", path)


def test_stockmark_keeps_span_order(tmp_path):
    record = {"curid": "3", "text": "京都と東京", "entities": [
        {"name": "東京", "span": [3, 5], "type": "地名"}, {"name": "京都", "span": [0, 2], "type": "地名"}]}
    anns, _ = read_corpus("stockmark-ner", write(tmp_path / "n.json", _stockmark([record])))
    assert [m.text for m in anns[0].entities] == ["京都", "東京"]


# jrte-pn


def test_sentiment_sample():
    anns, report = read_corpus("jrte-pn", SENTIMENT)
    assert (report.read, report.out) == (180, 180)
    assert {a.label for a in anns} == {"positive", "neutral", "negative"}
    assert anns[0].meta == {"id": "giellm0001", "split": "train"}
    assert all(a.task == "sentiment-ja" for a in anns)
    assert_round_trip(anns, get_task("sentiment-ja"))
    dev, report = read_corpus("jrte-pn", SENTIMENT, split="dev")
    assert len(dev) == 12 and report.filtered == 168 and report.read == 180
    assert all(a.meta["split"] == "dev" for a in dev)


def test_jrte_malformed(tmp_path):
    path = write(
        tmp_path / "pn.tsv",
        'a1\t1\t良い\t{"1": 3}\ttrain\n'
        "a2\t1\t三列だけ\n"
        'a3\t2\t悪い\t{"-1": 3}\ttrain\n'
        'a4\t-1\t悪い\t{"-1": 3}\tdev\n',
    )
    with pytest.raises(CorpusError, match=r"pn\.tsv:2: expected 5 tab-separated columns"):
        read_corpus("jrte-pn", path)
    anns, report = read_corpus("jrte-pn", path, skip_errors=True)
    assert [a.label for a in anns] == ["positive", "negative"]
    assert (report.read, report.out, report.skipped) == (4, 2, 2)
    assert "pn.tsv:3: label must be 1, 0 or -1" in report.reasons[1]


# jsonl


def test_jsonl_round_trip_keeps_offsets_and_meta(tmp_path):
    anns, _ = read_corpus("jrte-pn", SENTIMENT)
    ner, _ = read_corpus("stockmark-ner", STOCKMARK)
    mixed = anns[:5] + ner[:5]
    path = tmp_path / "mixed.jsonl"
    assert write_jsonl(mixed, path) == 10
    back, report = read_corpus("jsonl", path)
    assert back == mixed and report.out == 10
    assert [m.start for m in back[5].entities] == [m.start for m in ner[0].entities]
    assert back[0].meta == {"id": "giellm0001", "split": "train"}
    record = json.loads(path.read_text(encoding="utf8").splitlines()[0])
    assert list(record)[:4] == ["text", "task", "input", "output"]
    assert record["output"] == "<positive>Sentiment Classification" and record["id"] == "giellm0001"


def test_jsonl_output_only_and_input_only(tmp_path):
    path = write(
        tmp_path / "p.jsonl",
        json.dumps({"task": "ner-ja", "text": "東京に行く", "output": "Named Entity Recognition:地名;東京"}) + "\n\n"
        + json.dumps({"task": "sentiment-ja", "input": "良い<positive><neutral><negative>Sentiment Classification",
                      "output": "<positive>Sentiment Classification"}) + "\n",
    )
    anns, report = read_corpus("jsonl", path)
    assert anns[0].entities == [Mention("地名", "東京")]
    assert anns[1].text == "良い" and anns[1].label == "positive"
    assert report.read == 2


def test_jsonl_structured_fields_win(tmp_path):
    record = {"text": "東京", "task": "ner-ja", "output": "Named Entity Recognition:人名;東京",
              "entities": [{"label": "地名", "text": "東京", "start": 0, "end": 2}]}
    anns, _ = read_corpus("jsonl", write(tmp_path / "s.jsonl", json.dumps(record) + "\n"))
    assert anns[0].entities == [Mention("地名", "東京")]


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", "invalid JSON"),
        ('{"text": "x", "output": "Named Entity Recognition"}', "names no task"),
        ('{"text": "x", "task": "nope", "label": "a"}', "unknown task"),
        ('{"text": "東京", "task": "ner-ja", "entities": [{"label": "地名", "text": "東京", "start": 1, "end": 3}]}', "offsets"),
        ('{"text": "東京", "task": "ner-ja", "entities": [{"text": "東京"}]}', "malformed structured"),
        ('{"text": "x", "task": "sentiment-ja", "output": "<bad>Sentiment Classification"}', "cannot parse output"),
        ('{"task": "sentiment-ja", "input": "x<a>Sentiment Classification"}', "does not end with"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_jsonl_malformed(tmp_path, line, message):
    good = json.dumps({"text": "良い", "task": "sentiment-ja", "label": "positive"})
    path = write(tmp_path / "bad.jsonl", good + "\n" + line + "\n" + good + "\n")
    with pytest.raises(CorpusError, match=message) as err:
        read_corpus("jsonl", path)
    assert str(err.value).startswith(f"{path}:2: ")
    anns, report = read_corpus("jsonl", path, skip_errors=True)
    assert len(anns) == 2 and (report.read, report.skipped) == (3, 1)


def test_jsonl_lenient_counts_problems(tmp_path):
    path = write(tmp_path / "pred.jsonl", json.dumps({"task": "sentiment-ja", "output": "<bad>Sentiment Classification"}) + "\n")
    anns, report = read_corpus("jsonl", path, lenient=True)
    assert anns[0].label is None and report.problems == 1


def test_write_jsonl_is_atomic(tmp_path):
    path = write(tmp_path / "out.jsonl", "old\n")
    bad = [Annotation(text="x", task="sentiment-ja", label="positive"), Annotation(text="y", task="sentiment-ja")]
    with pytest.raises(CorpusError, match="record 2"):
        write_jsonl(bad, path)
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]
    report = ReadReport()
    assert write_jsonl(bad, path, skip_errors=True, report=report) == 1
    assert report.skipped == 1 and report.written == 1


# pairs


def test_tcree_pairs_infer_labels_and_round_trip():
    anns, report = read_corpus("pairs", TCREE, task="tcree")
    assert (report.read, report.out) == (30, 30)
    task = report.task
    assert task.text_labels == ("sports", "movies", "women", "IT", "CM")
    assert len(task.word_level("Relation Extraction").labels) == 7
    assert len(task.word_level("Event Extraction").labels) == 8
    assert anns[0].relations == [Relation("提携", ("トヨタ", "日産"))]
    assert anns[0].instruction == "Relation Extraction" and anns[1].instruction == "Event Extraction"
    outputs = [json.loads(line)["output"] for line in TCREE.read_text(encoding="utf8").splitlines()]
    assert [render_output(a, task) for a in anns] == outputs
    assert_round_trip(anns, task)
    assert any(r.args[1] == "Re:ゼロ" for a in anns for r in a.events)
    assert any("ToDo;メモ" in r.args for a in anns for r in a.relations)


def test_pairs_csv_with_own_columns_and_labels(tmp_path):
    path = write(
        tmp_path / "p.csv",
        "src,tgt\n"
        '"本は楽しい<面白い><退屈>Sentiment Classification","<面白い>Sentiment Classification"\n'
        '"会議は長い<面白い><退屈>Sentiment Classification","<退屈>Sentiment Classification"\n',
    )
    rows = [{"input": line.split('","')[0].strip('"'), "output": ""} for line in path.read_text().splitlines()[1:]]
    task = infer_task_labels(rows, "sentiment-ja")
    assert task.text_labels == ("面白い", "退屈")  # the data's own labels win
    anns, report = read_corpus("pairs", path, task=task, input_col="src", output_col="tgt")
    assert [(a.text, a.label) for a in anns] == [("本は楽しい", "面白い"), ("会議は長い", "退屈")]
    # with the built-in labels, the inputs do not end as the task says
    with pytest.raises(CorpusError, match=r"p\.csv:2: input does not end with"):
        read_corpus("pairs", path, task="sentiment-ja", input_col="src", output_col="tgt")


def test_pairs_malformed(tmp_path):
    good = {"input": "東京<社会><文芸><学問><技術><自然>Named Entity Recognition", "output": "<自然>Named Entity Recognition:地名;東京"}
    lines = [good, {"input": good["input"]}, {**good, "output": "<自然>Named Entity Recognition:地名;大阪:謎;x"}, good]
    path = write(tmp_path / "p.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in lines) + "\n")
    with pytest.raises(CorpusError, match=r"p\.jsonl:2: no string column"):
        read_corpus("pairs", path, task="scnm")
    anns, report = read_corpus("pairs", path, task="scnm", skip_errors=True)
    assert len(anns) == 2 and report.skipped == 2 and report.reasons[1].startswith(f"{path}:3: cannot parse")
    with pytest.raises(ValueError, match="needs the task"):
        read_corpus("pairs", path)


# docbin


def test_docbin_both_ways(tmp_path):
    ner, _ = read_corpus("stockmark-ner", STOCKMARK)
    pn, _ = read_corpus("jrte-pn", SENTIMENT)
    tcree, report = read_corpus("pairs", TCREE, task="tcree")
    for name, anns, task in (("ner", ner[:50], "ner-ja"), ("pn", pn, "sentiment-ja"), ("tcree", tcree, report.task)):
        path = tmp_path / f"{name}.spacy"
        write_report = ReadReport()
        assert write_docbin(anns, path, task, report=write_report) == len(anns)
        assert not write_report.warnings
        back, read_report = read_corpus("docbin", path, task=task)
        assert back == anns and read_report.out == len(anns)
        for a, b in zip(anns, back):
            assert [(m.start, m.end) for m in a.entities] == [(m.start, m.end) for m in b.entities]
            assert b.meta == a.meta
    # a DocBin names its task: no task needed to read it back
    back, _ = read_corpus("docbin", tmp_path / "pn.spacy")
    assert back == pn


def test_docbin_with_coarse_tokens_counts_widened_spans(tmp_path):
    import spacy

    anns = [Annotation(text="東京都に行く", task="ner-ja", entities=[Mention("地名", "東京", 0, 2)]),
            Annotation(text="京都 と 大阪", task="ner-ja", entities=[Mention("地名", "大阪"), Mention("地名", "奈良")])]
    report = ReadReport()
    write_docbin(anns, tmp_path / "x.spacy", nlp=spacy.blank("xx"), report=report)
    assert report.warnings == {"entities widened to token boundaries": 1, "entities not found in the text (dropped)": 1}
    back, _ = read_corpus("docbin", tmp_path / "x.spacy")
    assert back[0].entities == [Mention("地名", "東京都に行く")]
    assert back[1].entities == [Mention("地名", "大阪")] and back[1].entities[0].start == 5


def test_docbin_reads_cats_ents_and_extensions(tmp_path):
    from spacy.tokens import DocBin

    nlp = char_nlp()
    doc = nlp.make_doc("トヨタと日産")
    doc.cats = {"IT": 0.9, "CM": 0.1}
    db = DocBin(store_user_data=True)
    db.add(doc)
    db.to_disk(tmp_path / "d.spacy")
    anns, _ = read_corpus("docbin", tmp_path / "d.spacy", task="tcree")
    assert anns[0].label == "IT" and anns[0].relations == []
    anns, _ = read_corpus("docbin", tmp_path / "d.spacy", task="ner-ja")
    assert anns[0].label is None  # no text labels in ner-ja
    with pytest.raises(CorpusError, match=r"d\.spacy: doc 0: record names no task"):
        read_corpus("docbin", tmp_path / "d.spacy")
    with pytest.raises(ValueError, match="not a DocBin"):
        list(read_docbin(write(tmp_path / "bad.spacy", "garbage"), task="ner-ja"))


# sampling


def test_sample_mix():
    data = {"scnm": list(range(100)), "scpos-rw": list(range(100, 150)), "tcree": list(range(200, 230))}
    mix = sample_mix(data, {"scnm": 10, "scpos-rw": 5}, seed=1)
    assert len(mix) == 10 + 5 + 30
    assert sum(x < 100 for x in mix) == 10 and len(set(mix)) == len(mix)
    assert mix == sample_mix(dict(reversed(list(data.items()))), {"scpos-rw": 5, "scnm": 10}, seed=1)
    assert mix != sample_mix(data, {"scnm": 10, "scpos-rw": 5}, seed=2)
    with pytest.raises(ValueError, match="'tcree' has 30 records, 1000 were asked"):
        sample_mix(data, {"tcree": 1000})
    assert len(sample_mix(data, {"tcree": 1000}, allow_fewer=True)) == 180
    with pytest.raises(ValueError, match="unknown dataset"):
        sample_mix(data, {"scpos-n": 5})
    # oversampling: every drawn record K times, the others once
    over = sample_mix(data, {"scnm": 10}, seed=1, repeats={"tcree": 3})
    assert len(over) == 10 + 50 + 90
    assert all(over.count(x) == 3 for x in range(200, 230)) and all(over.count(x) == 1 for x in range(100, 150))
    assert [x for x in over if x < 100] != sorted(x for x in over if x < 100)  # still shuffled
    assert sorted(set(x for x in over if x < 100)) == sorted(x for x in mix if x < 100)  # the same draw
    with pytest.raises(ValueError, match="'tcree': repeats must be a whole number >= 1, got 0"):
        sample_mix(data, {}, repeats={"tcree": 0})
    with pytest.raises(ValueError, match="unknown dataset"):
        sample_mix(data, {}, repeats={"scpos-n": 2})


def test_split_train_dev_test():
    train, dev, test = split_train_dev_test(list(range(100)), dev=0.1, test=20, seed=0)
    assert (len(train), len(dev), len(test)) == (70, 10, 20)
    assert sorted(train + dev + test) == list(range(100))
    assert split_train_dev_test(list(range(100)), 0.1, 20, seed=0) == (train, dev, test)
    with pytest.raises(ValueError):
        split_train_dev_test(list(range(10)), 6, 5)
