"""displaCy views of the component's relations, events and sentiment words,
on Docs the component annotated (a scripted backend), and the HTML page."""
import shutil
import subprocess

import pytest
import spacy
from spacy import displacy

import spacy_giellm.component  # noqa: F401  (registers the factory)
from annotated_docs import CAR, HOTEL, SCRIPT, build_pipeline, check_markup
from spacy_giellm import Relation, visualize
from spacy_giellm.docs import SENTIMENT_GROUP, set_tuples


@pytest.fixture(scope="module")
def docs():
    nlp = build_pipeline()
    return dict(zip((CAR, HOTEL, SCRIPT), nlp.pipe([CAR, HOTEL, SCRIPT])))


def test_relations_are_arcs_between_their_arguments(docs):
    data = visualize.tuple_data(docs[CAR], "relations")
    assert data["words"] == [{"text": "トヨタ", "tag": "法人名"}, {"text": "日産", "tag": "法人名"}]
    assert data["arcs"] == [{"start": 0, "end": 1, "label": "提携", "dir": "right"}]


def test_an_event_is_a_trigger_with_an_arc_to_each_argument(docs):
    data = visualize.tuple_data(docs[CAR], "events", roles=("agent", "object"))
    words = [w["text"] for w in data["words"]]
    # in text order, the trigger (the label, found in the text after the
    # first argument) among them; the argument not in the text last
    assert words == ["トヨタ", "電池の共同開発", "提携", "ホンダ"]
    assert [w["tag"] for w in data["words"]][2:] == [visualize.TRIGGER_TAG, visualize.NOT_IN_TEXT]
    assert data["arcs"] == [
        {"start": 0, "end": 2, "label": "agent", "dir": "left"},
        {"start": 1, "end": 2, "label": "object", "dir": "left"},
        {"start": 2, "end": 3, "label": "arg3", "dir": "right"},
    ]


def test_a_relation_pointing_left_and_shared_arguments(docs):
    doc = spacy.blank("ja")("日産とトヨタ")
    set_tuples(doc, "relations", [
        Relation("提携", ("トヨタ", "日産"), ((3, 6), (0, 2))),
        Relation("競合", ("日産", "トヨタ"), ((0, 2), (3, 6))),
        Relation("自己", ("日産", "日産"), ((0, 2), (0, 2))),  # cannot be drawn
    ])
    data = visualize.tuple_data(doc, "relations")
    assert [w["text"] for w in data["words"]] == ["日産", "トヨタ"]
    assert data["arcs"] == [
        {"start": 0, "end": 1, "label": "提携", "dir": "left"},
        {"start": 0, "end": 1, "label": "競合", "dir": "right"},
    ]
    # listed all the same
    assert visualize.tuple_lines(doc, "relations")[2] == "自己: 日産 | 日産"


def test_sentiment_spans_are_displacy_span_data(docs):
    doc = docs[HOTEL]
    data = visualize.sentiment_data(doc)
    assert "".join(data["tokens"]) == doc.text
    shown = [("".join(data["tokens"][s["start_token"] : s["end_token"]]), s["label"]) for s in data["spans"]]
    assert shown == [(s.text, s.label_) for s in doc.spans[SENTIMENT_GROUP]] == [("広く", "positive"), ("丁寧", "positive")]


def test_displacy_draws_them_from_a_real_doc(docs):
    svg = displacy.render(visualize.tuple_data(docs[CAR], "events"), style="dep", manual=True, jupyter=False)
    assert svg.startswith("<svg") and "電池の共同開発" in svg and ">arg1<" in svg
    check_markup(svg)
    spans = displacy.render(visualize.sentiment_data(docs[HOTEL]), style="span", manual=True, jupyter=False)
    assert "広く" in spans and "positive" in spans
    check_markup(spans)


def test_labels_and_tags_are_escaped_once():
    """displaCy escapes words and texts, not dep tags, arc labels nor
    entity and span labels (labels can come from a DocBin or a task file)."""
    doc = spacy.blank("ja")("<b>太字</b>と字")
    from spacy.tokens import Span

    ent = doc.char_span(0, 3, label="<i>人名</i>", alignment_mode="expand")
    doc.ents = [ent]
    doc.spans[SENTIMENT_GROUP] = [Span(doc, ent.start, ent.end, label="<u>pos</u>")]
    set_tuples(doc, "relations", [Relation("<em>rel</em>", ("<b>", "字"), ((ent.start_char, ent.end_char), (10, 11)))])
    markup = "".join([
        visualize.render(visualize.entity_data(doc), "ent"),
        visualize.render(visualize.sentiment_data(doc), "span"),
        visualize.render(visualize.tuple_data(doc, "relations"), "dep"),
    ])
    check = check_markup(markup)
    assert not {"i", "u", "em"} & set(check.tags)
    text = "".join(check.text)
    assert "<i>人名</i>" in text and "<u>pos</u>" in text and "<em>rel</em>" in text and "<b>" in text
    assert "&amp;lt;" not in markup  # not escaped twice


def test_the_page_is_well_formed_and_a_script_stays_text(docs):
    page = visualize.render_page(docs.values())
    check = check_markup(page)
    assert "script" not in check.tags
    text = "".join(check.text)
    assert SCRIPT in text  # the text as it was, `&amp;` included
    assert "含む&\"x\"" in text  # the relation label, drawn and listed
    assert "&amp;lt;" not in page
    assert page.count('<section class="doc">') == 3
    # the cats as bars, the highest first
    assert page.index(">技術<") < page.index("more, 0.000 or less")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium on this machine")
def test_a_browser_reads_the_page_as_text(docs, tmp_path):
    """Headless Chromium parses the page: no script element, the texts as
    written."""
    path = tmp_path / "page.html"
    path.write_text(visualize.render_page(docs.values()), encoding="utf8")
    out = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    assert "<svg" in dom and "<script" not in dom.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom


def test_tuple_data_rejects_an_unknown_kind(docs):
    with pytest.raises(ValueError, match="kind must be one of"):
        visualize.tuple_data(docs[CAR], "entities")

