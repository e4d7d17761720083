"""Bad data in, a named error or a counted skip out (issue 11, items 5, 6, 7,
9, 11, 12, 13): readers, writers, the parser's speed on adversarial output,
task names in data, output file modes, alignment."""
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spacy_giellm.annotation import Annotation
from spacy_giellm.cli import app
from spacy_giellm.corpora import CorpusError, read_corpus, write_docbin, write_jsonl
from spacy_giellm.format import parse_output
from spacy_giellm.tasks import get_task
from spacy_giellm.util import atomic_write_text

GOOD = {"text": "良い", "task": "sentiment-ja", "label": "positive"}
GOOD_PAIR = ["良い<positive><neutral><negative>Sentiment Classification", "<positive>Sentiment Classification"]
GOOD_PN = "id1\t1\t良い\t{}\ttrain\n"


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def lines_file(path: Path, lines, bad: int = 2, encoding: str = "shift_jis") -> Path:
    """`lines` as UTF-8, except line `bad` in another encoding."""
    path.write_bytes(b"".join(
        (line + "\n").encode(encoding if i == bad else "utf8") for i, line in enumerate(lines, 1)
    ))
    return path


# 5: text that is not UTF-8, and a byte order mark

JSONL_LINE = json.dumps(GOOD, ensure_ascii=False)
PAIRS_LINE = json.dumps(dict(zip(("input", "output"), GOOD_PAIR)), ensure_ascii=False)
CSV_LINE = ",".join(f'"{cell}"' for cell in GOOD_PAIR)
READERS_ON_LINES = [
    ("jsonl", "d.jsonl", [JSONL_LINE] * 3, {}, 2),
    ("pairs", "d.jsonl", [PAIRS_LINE] * 3, {"task": "sentiment-ja"}, 2),
    ("pairs", "d.csv", ["input,output"] + [CSV_LINE] * 3, {"task": "sentiment-ja"}, 3),
    ("jrte-pn", "d.tsv", [GOOD_PN.strip()] * 3, {}, 2),
]


@pytest.mark.parametrize("reader,name,lines,options,bad", READERS_ON_LINES)
def test_readers_name_a_line_that_is_not_utf8_and_skip_it(tmp_path, reader, name, lines, options, bad):
    path = lines_file(tmp_path / name, lines, bad)
    with pytest.raises(CorpusError, match=rf"^{path}:{bad}: not UTF-8 text \(byte 0x97"):
        read_corpus(reader, path, **options)
    anns, report = read_corpus(reader, path, skip_errors=True, **options)
    assert (report.read, len(anns), report.skipped) == (3, 2, 1)
    assert report.reasons[0].startswith(f"{path}:{bad}: not UTF-8")


@pytest.mark.parametrize("reader,name,lines,options,bad", READERS_ON_LINES)
def test_readers_accept_a_byte_order_mark(tmp_path, reader, name, lines, options, bad):
    path = lines_file(tmp_path / name, lines, bad=1, encoding="utf-8-sig")
    anns, report = read_corpus(reader, path, **options)
    assert len(anns) == report.read == 3
    assert all(a.text == "良い" and a.meta.get("id", "id1") == "id1" for a in anns)


def test_csv_header_not_utf8_is_an_error(tmp_path):
    path = lines_file(tmp_path / "d.csv", ["入力,output", CSV_LINE], bad=1)
    with pytest.raises(CorpusError, match=rf"^{path}:1: not UTF-8"):
        read_corpus("pairs", path, task="sentiment-ja", skip_errors=True)


def test_stockmark_not_utf8_names_the_file_and_line(tmp_path):
    records = [{"curid": "1", "text": "東京", "entities": [{"name": "東京", "span": [0, 2], "type": "地名"}]}]
    text = json.dumps(records, ensure_ascii=False, indent=1)
    path = tmp_path / "ner.json"
    path.write_bytes(text.encode("shift_jis"))
    with pytest.raises(CorpusError, match=rf"^{path}:4: not UTF-8"):
        read_corpus("stockmark-ner", path, skip_errors=True)
    path.write_bytes(text.encode("utf-8-sig"))
    assert len(read_corpus("stockmark-ner", path)[0]) == 1
    # with a BOM, the bad byte is still the one named
    path.write_bytes("\ufeff".encode() + text.encode("shift_jis"))
    with pytest.raises(CorpusError, match=rf"^{path}:4: not UTF-8 text \(byte 0x93, byte 12 of"):
        read_corpus("stockmark-ner", path)


def test_docbin_that_is_random_bytes_names_the_file(tmp_path):
    path = tmp_path / "d.spacy"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=f"^{path}: not a DocBin"):
        read_corpus("docbin", path, task="scnm")


def test_convert_and_evaluate_name_the_line_that_is_not_utf8(tmp_path):
    data = lines_file(tmp_path / "d.jsonl", [JSONL_LINE] * 3)
    result = cli("convert", "jsonl", data, tmp_path / "out.jsonl")
    assert result.exit_code == 1 and f"error: {data}:2: not UTF-8" in result.output
    result = cli("convert", "jsonl", data, tmp_path / "out.jsonl", "--skip-errors")
    assert result.exit_code == 0 and "3 records in = 2 out + 1 skipped" in result.output
    gold = tmp_path / "gold.jsonl"
    gold.write_text("\ufeff" + (JSONL_LINE + "\n") * 3, encoding="utf8")
    result = cli("evaluate", gold, data)
    assert result.exit_code == 1 and f"error: {data}:2: not UTF-8" in result.output
    result = cli("evaluate", gold, gold)
    assert result.exit_code == 0, result.output

TCREE = get_task("tcree").with_labels(
    word_labels={"relations": ("提携", "所属", "出演"), "events": ("発売", "移籍", "公開")}
)


# 9: the parser stays roughly linear on adversarial output


def _chars_examined(output: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """The characters the parser hands to its field splitter and its piece
    cutter while reading `output`: the work the bounds MAX_FIELD_CUTS and
    MAX_PIECE_CUTS keep linear. A count, not a CPU time, so that the load of
    the machine cannot change it."""
    from spacy_giellm import format as fmt

    seen = [0]
    split_fields, colon_cuts = fmt._split_fields, fmt._colon_cuts

    def counting_split(part, *args):
        seen[0] += len(part)
        return split_fields(part, *args)

    def counting_cuts(region, colon):
        seen[0] += len(region)
        return colon_cuts(region, colon)

    with monkeypatch.context() as m:
        m.setattr(fmt, "_split_fields", counting_split)
        m.setattr(fmt, "_colon_cuts", counting_cuts)
        parse_output(output, TCREE)
    return seen[0]


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
def test_parse_output_is_roughly_linear(shape, monkeypatch):
    small, large = shape(1), shape(4)
    assert len(large) > 3 * len(small)
    # linear work examines 4-4.6x the characters here; without the bounds
    # (MAX_PIECE_CUTS unlimited) it is 11-16x
    small_work, large_work = _chars_examined(small, monkeypatch), _chars_examined(large, monkeypatch)
    assert small_work > len(small)  # the counters see the parser's work
    ratio = large_work / small_work
    assert ratio < 8, f"{len(small)} -> {len(large)} chars: {ratio:.1f}x the characters examined"


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


# 6: types and labels in the JSONL reader


def _ner(**entity):
    return {"text": "松友美佐紀は日本の選手", "task": "ner-ja", "entities": [{"label": "人名", "text": "松友美佐紀", "start": 0, "end": 5, **entity}]}


TCREE_RECORD = {"text": "トヨタは日産と提携", "task": "tcree", "label": "IT", "instruction": "Relation Extraction",
                "relations": [{"label": "提携", "args": ["トヨタ", "日産"]}]}


@pytest.mark.parametrize(
    "record,message",
    [
        (_ner(label=5), r"entities\[0\]\.label must be a non-empty string, got 5"),
        (_ner(text=["松友美佐紀"]), r"entities\[0\]\.text must be a non-empty string"),
        (_ner(end=True), r"entities\[0\]\.end must be an integer, got True"),
        (_ner(start=False), r"entities\[0\]\.start must be an integer, got False"),
        (_ner(start=0.0), r"start must be an integer"),
        (_ner(end=99), r"offsets \[0, 99\) hold"),
        (_ner(label="FOO"), r"label 'FOO' is not one of task 'ner-ja'"),
        ({**_ner(), "entities": {"label": "人名"}}, r"'entities' must be a list"),
        ({**_ner(), "entities": ["松友美佐紀"]}, r"entities\[0\] must be an object"),
        ({**_ner(), "label": "positive"}, r"label 'positive' is not one of task 'ner-ja'"),
        ({**GOOD, "label": "FOO"}, r"label 'FOO' is not one of task 'sentiment-ja'"),
        ({**GOOD, "sentiments": [{"label": "positive", "text": "良い"}]}, r"sentiments: task 'sentiment-ja' has none"),
        ({"text": "良い", "task": "scpos-rw", "label": "positive", "instruction": None,
          "sentiments": [{"label": "great", "text": "良い"}]}, r"label 'great' is not one of task 'scpos-rw'"),
        ({**TCREE_RECORD, "relations": [{"label": "提携", "args": ["トヨタ", 5]}]}, r"args must be a list of non-empty strings"),
        ({**TCREE_RECORD, "relations": [{"label": "提携", "args": ["トヨタ"]}]}, r"1 arguments, task 'tcree' has 2"),
        ({**TCREE_RECORD, "relations": [{"label": 1, "args": ["トヨタ", "日産"]}]}, r"relations\[0\]\.label must be"),
        ({**TCREE_RECORD, "relations": [{"label": "提携", "args": ["トヨタ", "日産"], "offsets": [[0, True], None]}]},
         r"offsets must be a list of \[start, end\]"),
        ({**TCREE_RECORD, "relations": [{"label": "提携", "args": ["トヨタ", "日産"], "offsets": [[1, 4], None]}]},
         r"relations\[0\]\.args\[0\] 'トヨタ': its offsets \[1, 4\)"),
        ({**TCREE_RECORD, "events": [{"label": "発売", "args": ["a", "b"]}]}, r"2 arguments, task 'tcree' has 3"),
    ],
)
def test_jsonl_checks_types_and_labels(tmp_path, record, message):
    path = tmp_path / "d.jsonl"
    path.write_text(f"{JSONL_LINE}\n{json.dumps(record, ensure_ascii=False)}\n", encoding="utf8")
    with pytest.raises(CorpusError, match=rf"^{path}:2: .*{message}"):
        read_corpus("jsonl", path)
    anns, report = read_corpus("jsonl", path, skip_errors=True)
    assert (report.read, len(anns), report.skipped) == (2, 1, 1)


def test_jsonl_open_labels_stay_open(tmp_path):
    """Built-in TCREE's relation and event labels come from the data: any new one is read."""
    record = {**TCREE_RECORD, "relations": [{"label": "新しい関係", "args": ["トヨタ", "日産"]}]}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf8")
    anns, _ = read_corpus("jsonl", path)
    assert anns[0].relations[0].label == "新しい関係"
    # a task that lists its labels closes them
    with pytest.raises(CorpusError, match="label '新しい関係' is not one of task 'tcree'"):
        read_corpus("jsonl", path, task=TCREE)


def test_stockmark_label_not_of_the_task(tmp_path):
    records = [{"curid": "7", "text": "東京", "entities": [{"name": "東京", "span": [0, 2], "type": "FOO"}]}]
    path = tmp_path / "ner.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf8")
    with pytest.raises(CorpusError, match=r"record 0 \(curid 7\): entities\[0\]: label 'FOO'"):
        read_corpus("stockmark-ner", path)


def test_docbin_label_not_of_the_task(tmp_path):
    from spacy_giellm.annotation import Mention

    path = tmp_path / "d.spacy"
    write_docbin([Annotation(text="東京", task="ner-ja", entities=[Mention("FOO", "東京", 0, 2)])], path)
    with pytest.raises(CorpusError, match=rf"^{path}: doc 0: entities\[0\]: label 'FOO'"):
        read_corpus("docbin", path)
    anns, report = read_corpus("docbin", path, skip_errors=True)
    assert (report.read, report.skipped) == (1, 1)


# 7: a writer's error names the input file and line


def test_writer_errors_name_the_input_line(tmp_path):
    bad = {**TCREE_RECORD, "relations": [{"label": "提:携", "args": ["トヨタ", "日産"]}]}
    data = tmp_path / "in.jsonl"
    data.write_text(f"{json.dumps(TCREE_RECORD)}\n\n{json.dumps(bad)}\n", encoding="utf8")
    for out in ("out.jsonl", "out.spacy"):
        result = cli("convert", "jsonl", data, tmp_path / out)
        if out == "out.jsonl":
            assert result.exit_code == 1 and f"error: {data}:3: cannot write" in result.output
        else:
            assert result.exit_code == 0  # a DocBin keeps any label
    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text(json.dumps({"task": "ner-ja", "output": "Named Entity Recognition:地名;東京"}) + "\n", encoding="utf8")
    result = cli("convert", "jsonl", no_text, tmp_path / "o.spacy", "--skip-errors")
    assert result.exit_code == 0 and f"skipped {no_text}:1: an annotation without text" in result.output
    # annotations from no reader are still named by their place in the output
    with pytest.raises(CorpusError, match=r"o2\.jsonl: record 1"):
        write_jsonl([Annotation(text="x", task="sentiment-ja")], tmp_path / "o2.jsonl")


# 11: a task named in data is a name, never a file


def test_a_record_cannot_open_a_task_file(tmp_path):
    evil = tmp_path / "x" / "evil.json"
    evil.parent.mkdir()
    evil.write_text(json.dumps({"name": "evil", "text_labels": ["A"]}), encoding="utf8")
    data = tmp_path / "d" / "data.jsonl"
    data.parent.mkdir()
    record = {"text": "t", "task": "../x/evil.json", "label": "A"}
    data.write_text(json.dumps(record) + "\n", encoding="utf8")
    cwd = os.getcwd()
    os.chdir(data.parent)  # where the relative path would resolve
    try:
        with pytest.raises(CorpusError, match=rf"^{data}:1: unknown task '\.\./x/evil\.json'"):
            read_corpus("jsonl", data)
        # the user may give that file; then the record must name its task
        with pytest.raises(
            CorpusError, match=r"unknown task '\.\./x/evil\.json'; .*given or carried by the data or model: \['evil'\]"
        ):
            read_corpus("jsonl", data, task=str(evil))
        data.write_text(json.dumps({**record, "task": "evil"}) + "\n", encoding="utf8")
        assert read_corpus("jsonl", data, task=str(evil))[0][0].label == "A"
    finally:
        os.chdir(cwd)


# 12: output files get the usual permissions


def test_written_files_get_mode_from_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        ann = [Annotation(text="良い", task="sentiment-ja", label="positive")]
        write_jsonl(ann, tmp_path / "a.jsonl")
        write_docbin(ann, tmp_path / "a.spacy")
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    # a.tasks.json: the task definitions beside a.jsonl and a.spacy (one sidecar for the two)
    for name in ("a.jsonl", "a.spacy", "a.json", "a.tasks.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.jsonl", "a.spacy", "a.tasks.json"]


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    from spacy_giellm.util import atomic_path

    target = tmp_path / "t.txt"
    target.write_text("old", encoding="utf8")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half", encoding="utf8")
            raise RuntimeError
    assert target.read_text(encoding="utf8") == "old" and [p.name for p in tmp_path.iterdir()] == ["t.txt"]
