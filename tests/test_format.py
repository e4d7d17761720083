"""The format: property tests over every built-in task, and the cases that
motivate anchored parsing.

Round-trip domain (what `parse(render(a), task, text) == a` promises):
- spans and arguments are non-empty substrings of the text, and the text
  may hold `:`, `;`, `<`, `>`, the instruction words and the labels;
- a pair span (entity, sentiment word) does not contain `:KnownLabel;` of
  its word level and does not start or end with whitespace (outputs are
  stripped);
- a tuple argument (relation, event) does not start or end with `:` or `;`
  and holds no piece boundary `::` (it may hold `:`, `;`, even
  `;KnownLabel;`, or be a label itself: the reading whose fields occur in
  the text wins). An argument holding `::` is a limit of the format
  (docs/tasks.md, "The format"): the output can also be read as more
  pieces whose fields occur in the text, and that reading wins;
  `test_an_argument_holding_a_piece_boundary_reads_as_two_pieces` pins it;
- for a task whose tuple labels are unknown (built-in TCREE) arguments hold
  no `;` and no `::` (nothing to anchor on: the parser splits on them).
"""
import re
from typing import List, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spacy_giellm.annotation import Annotation, Mention, Relation
from spacy_giellm.format import (
    _colon_cuts,
    _delims,
    build_input,
    candidate_markers,
    label_marker,
    pair_marker,
    parse_input,
    parse_output,
    render_output,
    to_pair,
)
from spacy_giellm.tasks import BUILTIN_TASKS, Task, WordLevel, get_task

TCREE_RELATIONS = ("提携", "所属", "出演", "開発", "買収", "監督", "本社")
TCREE_EVENTS = ("発売", "移籍", "公開", "受賞", "発表", "優勝", "結婚", "開始", "就任", "引退", "開催")
TCREE_LABELLED = get_task("tcree").with_labels(
    word_labels={"relations": TCREE_RELATIONS, "events": TCREE_EVENTS}
)
TASKS = {**BUILTIN_TASKS, "tcree+labels": TCREE_LABELLED}

SETTINGS = settings(max_examples=int(__import__("os").environ.get("GIELLM_HYPOTHESIS_EXAMPLES", "50")), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _fragments(task: Task) -> List[str]:
    words = ["東京", "トヨタ", "日産", "Re:ゼロ", "10:30", "は", "の", " ", "a", "。"]
    delims = [":", ";", "::", "<", ">", ":;", ";:"]
    labels = [label for wl in task.word_levels for label in wl.labels] + list(task.text_labels)
    return words + delims + labels + list(task.instructions) + [label_marker(label) for label in task.text_labels]


def _texts(task: Task) -> st.SearchStrategy[str]:
    piece = st.sampled_from(_fragments(task)) | st.text(alphabet="あいう東京:;<>ab ", min_size=1, max_size=3)
    return st.lists(piece, min_size=1, max_size=12).map("".join)


def _bad_pair_span(span: str, labels: Sequence[str]) -> bool:
    return span != span.strip() or any(pair_marker(label) in span for label in labels)


def _bad_arg(arg: str, wl: WordLevel, task: Task) -> bool:
    # the parser's own delimiters and piece boundaries, not a copy of them
    colon, semi = _delims(task.fullwidth_delimiters)
    edge = f"(?:{colon}|{semi})"
    if re.match(edge, arg) or re.search(f"{edge}$", arg) or _colon_cuts(arg, colon):
        return True
    if not wl.labels:
        return re.search(semi, arg) is not None
    return False


@st.composite
def annotations(draw: st.DrawFn, task: Task) -> Annotation:
    text = draw(_texts(task))
    substrings = st.tuples(st.integers(0, len(text) - 1), st.integers(1, len(text))).map(
        lambda ij: text[min(ij) : max(ij)] if ij[0] != ij[1] else text[ij[0] : ij[0] + 1]
    ).filter(bool)
    label = draw(st.sampled_from(task.text_labels)) if task.text_labels else None
    ann = Annotation(text=text, task=task.name, label=label)
    if not task.word_levels:
        return ann
    wl = draw(st.sampled_from(task.word_levels))
    if len(task.word_levels) > 1:
        ann.instruction = wl.instruction
    item_labels = st.sampled_from(wl.labels) if wl.labels else st.sampled_from(("提携", "発売", "X"))
    if wl.is_pair:
        span = substrings.filter(lambda s: not _bad_pair_span(s, wl.labels))
        items = draw(st.lists(st.builds(Mention, item_labels, span), max_size=4))
    else:
        arg = substrings.filter(lambda s: not _bad_arg(s, wl, task))
        args = st.tuples(*[arg] * (wl.arity - 1))
        items = draw(st.lists(st.builds(Relation, item_labels, args), max_size=3))
    setattr(ann, wl.kind, items)
    return ann


@pytest.mark.parametrize("name", sorted(TASKS))
@SETTINGS
@given(data=st.data())
def test_parse_never_raises(name: str, data: st.DataObject) -> None:
    task = TASKS[name]
    junk = st.text(max_size=60) | st.lists(
        st.sampled_from(_fragments(task) + ["：", "；", "\n", "無い"]), max_size=15
    ).map("".join)
    output = data.draw(junk)
    text = data.draw(st.none() | junk)
    result = parse_output(output, task, text)
    assert all(isinstance(p, str) and p for p in result.problems)
    assert result.ok == (result.problems == [])
    assert result.annotation.task == task.name
    # what it read is the task's: a known text label, known word labels
    ann = result.annotation
    assert ann.label is None or ann.label in task.text_labels
    for wl in task.word_levels:
        for item in getattr(ann, wl.kind):
            assert item.label and (not wl.labels or item.label in wl.labels)
    if not output.strip():
        # every task expects a text label or an instruction word
        assert result.problems


@pytest.mark.parametrize("name", sorted(TASKS))
@SETTINGS
@given(data=st.data())
def test_round_trip(name: str, data: st.DataObject) -> None:
    task = TASKS[name]
    ann = data.draw(annotations(task))
    model_input, output = to_pair(ann, task)
    result = parse_output(output, task, ann.text)
    assert result.problems == []
    assert result.annotation == ann
    assert parse_input(model_input, task) == (ann.text, ann.instruction)



def test_an_argument_holding_a_piece_boundary_reads_as_two_pieces() -> None:
    """The format's documented limit (docs/tasks.md): `::` ends one tuple
    piece and starts the next, so an argument holding it renders to an
    output that also reads as two pieces; where all their fields occur in
    the text, that reading wins. A single `:` inside an argument is read back."""
    task = TCREE_LABELLED
    text = "A社は「B社::C社;買収;D社」と提携"
    ann = Annotation(text=text, task=task.name, label="IT", instruction="Relation Extraction",
                     relations=[Relation("提携", ("A社", "B社::C社;買収;D社"))])
    model_input, output = to_pair(ann, task)
    assert output == "<IT>Relation Extraction:A社;提携;B社::C社;買収;D社:"
    result = parse_output(output, task, text)
    assert result.problems == []
    assert result.annotation.relations == [Relation("提携", ("A社", "B社")), Relation("買収", ("C社", "D社"))]
    assert _bad_arg("B社::C社;買収;D社", task.word_level("Relation Extraction"), task)  # outside the round-trip domain

    one_colon = text.replace("::", ":")
    ann = Annotation(text=one_colon, task=task.name, label="IT", instruction="Relation Extraction",
                     relations=[Relation("提携", ("A社", "B社:C社;買収;D社"))])
    assert parse_output(to_pair(ann, task)[1], task, one_colon).annotation == ann
    assert not _bad_arg("B社:C社;買収;D社", task.word_level("Relation Extraction"), task)

def test_input_and_output_shape() -> None:
    task = get_task("scnm")
    ann = Annotation(text="東京に行く", task="scnm", label="自然", entities=[Mention("地名", "東京")])
    model_input, output = to_pair(ann, task)
    assert model_input == "東京に行く<社会><文芸><学問><技術><自然>Named Entity Recognition"
    assert output == "<自然>Named Entity Recognition:地名;東京"
    assert build_input("x", get_task("sentiment-ja")) == "x<positive><neutral><negative>Sentiment Classification"


def test_markers_and_instruction_words() -> None:
    scnm, tcree, sentiment = get_task("scnm"), get_task("tcree"), get_task("sentiment-ja")
    assert label_marker("社会") == "<社会>"
    assert pair_marker("人名") == ":人名;"
    assert candidate_markers(scnm) == "<社会><文芸><学問><技術><自然>"
    assert candidate_markers(get_task("ner-ja")) == ""
    assert scnm.instruction_for() == "Named Entity Recognition"
    assert tcree.instruction_for() == "Relation Extraction"
    assert tcree.instruction_for("Event Extraction") == "Event Extraction"
    assert tcree.instruction_for(tcree.word_levels[1]) == "Event Extraction"
    assert sentiment.instruction_for() == "Sentiment Classification"
    with pytest.raises(KeyError):
        scnm.instruction_for("Event Extraction")
    spaced = Task("spaced", ("a", "b"), instruction="Go", separator=" ")
    assert candidate_markers(spaced) == "<a> <b>"
    assert build_input("t", spaced) == "t <a> <b> Go"
    assert render_output(Annotation(text="t", label="b"), spaced) == "<b> Go"


def test_parse_input_takes_the_instruction() -> None:
    tcree = get_task("tcree")
    assert parse_input("A社<sports><movies><women><IT><CM>Event Extraction", tcree) == ("A社", "Event Extraction")
    assert parse_input("x<positive><neutral><negative>Sentiment Classification", get_task("sentiment-ja")) == ("x", None)
    # the instruction is named only where the task has a choice (as in Annotation)
    assert parse_input(build_input("本文", get_task("scnm")), get_task("scnm")) == ("本文", None)
    # the longest suffix wins where one instruction word ends another
    nested = Task("nested", (), (WordLevel("entities", "Extraction"), WordLevel("relations", "Event Extraction")))
    assert parse_input("本文Event Extraction", nested) == ("本文", "Event Extraction")
    assert parse_input("本文Extraction", nested) == ("本文", "Extraction")
    with pytest.raises(ValueError, match="does not end with the task's labels"):
        parse_input("not a prompt", get_task("scnm"))


def test_anchored_re_zero() -> None:
    task = get_task("scnm")
    text = "Re:ゼロのスバル"
    result = parse_output("<文芸>Named Entity Recognition:製品名;Re:ゼロ:人名;スバル", task, text)
    assert result.ok
    assert result.annotation.entities == [Mention("製品名", "Re:ゼロ"), Mention("人名", "スバル")]


def test_anchored_time_in_tuple() -> None:
    text = "試写会は10:30に始まった"
    output = "<movies>Event Extraction:試写会;開始;試写会;10:30:"
    result = parse_output(output, TCREE_LABELLED, text)
    assert result.ok
    assert result.annotation.events == [Relation("開始", ("試写会", "試写会", "10:30"))]
    # an argument with `;` is cut where the text says; where the text cannot
    # say (`4月` is not in it), the piece is not guessed at
    text = "アプリ「ToDo;メモ」をC社が発売"
    result = parse_output("<IT>Event Extraction:C社;発売;ToDo;メモ;4月:", TCREE_LABELLED, text)
    assert result.annotation.events == [] and len(result.problems) == 1
    text = "C社は4月にアプリ「ToDo;メモ」を発売"
    result = parse_output("<IT>Event Extraction:C社;発売;ToDo;メモ;4月:", TCREE_LABELLED, text)
    assert result.ok
    assert result.annotation.events == [Relation("発売", ("C社", "ToDo;メモ", "4月"))]


def test_argument_that_looks_like_a_label() -> None:
    text = "新製品の発売は発表の翌日"
    event = Relation("発表", ("新製品", "発売", "翌日"))
    ann = Annotation(text=text, task="tcree", label="IT", instruction="Event Extraction", events=[event, event])
    result = parse_output(render_output(ann, TCREE_LABELLED), TCREE_LABELLED, text)
    assert result.ok and result.annotation == ann
    text = "A;提携;BはCと提携"
    rel = Relation("提携", ("A;提携;B", "C"))
    ann = Annotation(text=text, task="tcree", label="IT", instruction="Relation Extraction", relations=[rel])
    assert render_output(ann, TCREE_LABELLED) == "<IT>Relation Extraction:A;提携;B;提携;C:"
    result = parse_output(render_output(ann, TCREE_LABELLED), TCREE_LABELLED, text)
    assert result.ok and result.annotation == ann


def test_pair_span_with_time() -> None:
    task = get_task("ner-ja")
    result = parse_output("Named Entity Recognition:イベント名;10:30の会議:地名;東京", task, "10:30の会議を東京で")
    assert result.ok
    assert [m.text for m in result.annotation.entities] == ["10:30の会議", "東京"]


def test_unknown_labels_dropped_and_counted() -> None:
    task = get_task("ner-ja")
    result = parse_output("Named Entity Recognition:人名;山田:動物名;ネコ", task, "山田とネコ")
    assert result.annotation.entities == [Mention("人名", "山田")]
    assert len(result.problems) == 1 and "動物名" in result.problems[0]
    result = parse_output("<unknown>Sentiment Classification", get_task("sentiment-ja"))
    assert result.annotation.label is None
    assert len(result.problems) == 1 and "unknown" in result.problems[0]
    # unknown tuple labels are dropped too: nothing anchors them
    result = parse_output("<IT>Relation Extraction:A;謎;B:", TCREE_LABELLED, "AとB")
    assert result.annotation.relations == [] and len(result.problems) == 1


def test_null_marker() -> None:
    task = Task("ner-null", (), (WordLevel("entities", "Named Entity Recognition", ("人名",)),), null_marker=":無い;")
    result = parse_output("Named Entity Recognition:無い;", task, "何もない")
    assert result.ok and result.annotation.entities == []
    # without a null marker configured, the same string is a problem, not an entity
    result = parse_output("Named Entity Recognition:無い;", get_task("ner-ja"), "何もない")
    assert result.annotation.entities == [] and not result.ok


def test_fullwidth_delimiters_only_when_configured() -> None:
    output = "Named Entity Recognition：人名；山田"
    plain = get_task("ner-ja")
    wide = Task("ner-wide", (), plain.word_levels, fullwidth_delimiters=True)
    assert parse_output(output, wide, "山田さん").annotation.entities == [Mention("人名", "山田")]
    result = parse_output(output, plain, "山田さん")
    assert result.annotation.entities == [] and not result.ok
    # a full-width colon inside a span is text for a task that does not use them
    result = parse_output("Named Entity Recognition:製品名;Re：ゼロ", plain, "Re：ゼロ")
    assert result.ok and result.annotation.entities == [Mention("製品名", "Re：ゼロ")]
