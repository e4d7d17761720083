"""The giellm component on real GiNZA docs, driven by a scripted backend.

The scripted backend answers each prompt with a fixed output; it exercises
the component (prompting, parsing, alignment, Doc writing, serialization,
scoring). The real HF and GGUF backends are tested in test_backends.py and
test_pipeline_tiny.py.
"""
import json
from pathlib import Path

import pytest
import spacy
from spacy.tokens import DocBin
from spacy.training import Example

from spacy_giellm import Annotation, Mention, Relation, build_input, get_task, render_output
from spacy_giellm.docs import RelationRecord, annotation_from_doc
from spacy_giellm.registry import giellm_backends

ASSETS = Path(__file__).parent.parent / "assets"


class ScriptedBackend:
    """Answers from a prompt -> output table; records every call."""

    def __init__(self, table, default=""):
        self.table = table
        self.default = default
        self.calls = []

    def generate(self, prompts):
        self.calls.append(list(prompts))
        return [self.table.get(p, self.default) for p in prompts]


_TABLES = {}


@giellm_backends.register("test.Scripted.v1")
def make_scripted(table: str, default: str = "") -> ScriptedBackend:
    return ScriptedBackend(_TABLES[table], default)


@pytest.fixture(scope="module")
def nlp():
    return spacy.load("ja_ginza")


@pytest.fixture(scope="module")
def stockmark():
    records = json.loads((ASSETS / "stockmark-ner-sample.json").read_text(encoding="utf8"))
    return records[:120]


def _gold(record):
    return Annotation(
        text=record["text"],
        task="ner-ja",
        entities=[Mention(e["type"], e["name"], *e["span"]) for e in record["entities"]],
    )


def _add(nlp, name, table, default="", **config):
    _TABLES[name] = table
    backend = {"@giellm_backends": "test.Scripted.v1", "table": name, "default": default}
    cfg = {"task": "ner-ja", "backend": backend}
    cfg.update(config)
    return nlp.add_pipe("giellm", name=name, config=cfg)


@pytest.fixture()
def fresh(nlp):
    """The shared GiNZA pipeline, with every giellm pipe removed afterwards."""
    yield nlp
    for name in [n for n in nlp.pipe_names if n.startswith("giellm")]:
        nlp.remove_pipe(name)


def _oracle_table(records, task):
    return {build_input(r["text"], task): render_output(_gold(r), task) for r in records}


@pytest.mark.parametrize("split_tokens", [False, True])
def test_oracle_recovers_gold_entities(fresh, stockmark, split_tokens):
    task = get_task("ner-ja")
    pipe = _add(fresh, "giellm_oracle", _oracle_table(stockmark, task), split_tokens=split_tokens)
    tp = n_gold = n_pred = 0
    for record, doc in zip(stockmark, fresh.pipe(r["text"] for r in stockmark)):
        gold = {(e["span"][0], e["span"][1], e["type"]) for e in record["entities"]}
        pred = {(s.start_char, s.end_char, s.label_) for s in doc.spans["giellm_entities"]}
        tp += len(gold & pred)
        n_gold += len(gold)
        n_pred += len(pred)
        assert {(e.start_char, e.end_char) for e in doc.ents} <= {(s, e) for s, e, _ in pred}
    f1 = 2 * tp / (n_gold + n_pred)
    # Strings carry no offsets: a mention whose text occurs earlier in the
    # sentence is placed on the earlier occurrence, hence not exactly 1.0.
    assert f1 >= 0.99
    if split_tokens:
        assert pipe.stats["misaligned"] == 0
    assert pipe.stats["problems"] == 0


def test_split_tokens_makes_exact_spans(fresh):
    text = "東京都千代田区に本社を置く。"
    doc = fresh(text)
    inner = next(t for t in doc if len(t.text) > 1)
    # A span that ends inside a token
    label_text = inner.text[:-1]
    start = text.index(label_text)
    task = get_task("ner-ja")
    out = render_output(Annotation(text=text, entities=[Mention("地名", label_text)]), task)
    _add(fresh, "giellm_split", {build_input(text, task): out}, split_tokens=True)
    doc = fresh(text)
    assert [(e.start_char, e.end_char, e.label_) for e in doc.ents] == [(start, start + len(label_text), "地名")]
    assert all(t.head is not None for t in doc)  # still a parsed tree
    assert doc.has_annotation("DEP")


def test_cats_ents_sentiments_relations_events(fresh):
    text = "トヨタは日産と提携し、2023年に東京で新車を発表した。"
    tcree = get_task("tcree").with_labels(word_labels={"relations": ["提携"], "events": ["発表"]})
    rel = Annotation(text=text, label="IT", instruction="Relation Extraction",
                     relations=[Relation("提携", ("トヨタ", "日産"))])
    _add(fresh, "giellm_rel", {build_input(text, tcree, "Relation Extraction"): render_output(rel, tcree)},
         task=tcree.to_dict(), instruction="Relation Extraction")
    doc = fresh(text)
    assert doc.cats == {"sports": 0.0, "movies": 0.0, "women": 0.0, "IT": 1.0, "CM": 0.0}
    [record] = doc._.relations
    assert record.label == "提携"
    assert [a.text for a in record.args] == ["トヨタ", "日産"]
    assert record.head.start_char == 0
    fresh.remove_pipe("giellm_rel")

    ev = Annotation(text=text, label="IT", instruction="Event Extraction",
                    events=[Relation("発表", ("トヨタ", "2023年", "どこにもない語"))])
    _add(fresh, "giellm_ev", {build_input(text, tcree, "Event Extraction"): render_output(ev, tcree)},
         task=tcree.to_dict(), instruction="Event Extraction", store_output=True)
    doc = fresh(text)
    [event] = doc._.events
    assert event.label == "発表"
    assert event.args[1].text == "2023年"
    # An argument not in the text stays a string and is reported.
    assert event.args[2] == "どこにもない語"
    assert doc._.giellm_output["not_found"] == ["どこにもない語"]
    # relations/events survive DocBin
    db = DocBin(store_user_data=True, docs=[doc])
    [back] = DocBin().from_bytes(db.to_bytes()).get_docs(fresh.vocab)
    assert [(e.label, [a if isinstance(a, str) else a.text for a in e.args]) for e in back._.events] == [
        ("発表", ["トヨタ", "2023年", "どこにもない語"])
    ]

    text2 = "このホテルは朝食がとても美味しかった。"
    sent = Annotation(text=text2, label="positive", sentiments=[Mention("positive", "美味しかった")])
    task = get_task("scpos-adj")
    _add(fresh, "giellm_sent", {build_input(text2, task): render_output(sent, task)}, task="scpos-adj")
    doc = fresh(text2)
    assert [(s.text, s.label_) for s in doc.spans["giellm_sentiment"]] == [("美味しかった", "positive")]
    assert max(doc.cats, key=doc.cats.get) == "positive"


def test_empty_doc_is_not_generated(fresh):
    pipe = _add(fresh, "giellm_empty", {}, default=":人名;誰か")
    docs = list(fresh.pipe(["", "   ", "太郎が来た。"]))
    assert [len(c) for c in pipe.backend.calls] == [1]  # only the real text reached the model
    assert list(docs[0].ents) == [] and list(docs[1].ents) == []


def test_long_doc_is_split_by_sentence_and_offsets_map_back(fresh):
    sents = ["太郎は東京に住んでいる。", "花子は大阪で働いている。", "次郎は京都の大学に通う。"]
    text = "".join(sents)
    task = get_task("ner-ja")
    table = {}
    for s, (who, where) in zip(sents, [("太郎", "東京"), ("花子", "大阪"), ("次郎", "京都")]):
        ann = Annotation(text=s, entities=[Mention("人名", who), Mention("地名", where)])
        table[build_input(s, task)] = render_output(ann, task)
    pipe = _add(fresh, "giellm_long", table, max_chars=15)
    doc = fresh(text)
    assert pipe.backend.calls == [[build_input(s, task) for s in sents]] or sorted(pipe.backend.calls[0]) == sorted(
        build_input(s, task) for s in sents
    )
    assert [(e.text, e.label_) for e in doc.ents] == [
        ("太郎", "人名"), ("東京", "地名"), ("花子", "人名"), ("大阪", "地名"), ("次郎", "人名"), ("京都", "地名")
    ]
    assert doc.ents[3].start_char == text.index("大阪")


def test_malformed_outputs_do_not_crash(fresh):
    pipe = _add(fresh, "giellm_bad", {}, default="<<<:人名;;;:無効;ゴミ:地名;存在しない地名", store_output=True)
    doc = fresh("太郎は東京に住んでいる。")
    assert list(doc.ents) == []
    assert pipe.stats["problems"] + pipe.stats["not_found"] > 0
    assert doc._.giellm_output["outputs"] == ["<<<:人名;;;:無効;ゴミ:地名;存在しない地名"]


@pytest.mark.parametrize("policy", ["overwrite", "merge", "keep"])
def test_ents_policies(fresh, policy):
    text = "太郎は東京に住んでいる。"
    ginza = {(e.text, e.label_) for e in fresh(text).ents}
    ginza_tokyo = {(t, l) for t, l in ginza if t == "東京"}
    ginza_other = ginza - ginza_tokyo
    assert ginza_tokyo and ginza_other, f"GiNZA should tag both names here: {ginza}"
    task = get_task("ner-ja")
    out = render_output(Annotation(text=text, entities=[Mention("地名", "東京")]), task)
    _add(fresh, "giellm_pol", {build_input(text, task): out}, ents=policy)
    got = {(e.text, e.label_) for e in fresh(text).ents}
    expected = {
        "overwrite": {("東京", "地名")},
        "merge": {("東京", "地名")} | ginza_other,  # ours win where they overlap
        "keep": ginza,  # GiNZA's win where they overlap
    }[policy]
    assert got == expected


def test_keep_drops_a_generated_entity_inside_a_longer_one_that_loses(fresh):
    """`keep`: overlapping generated entities are filtered first (the
    longest wins), then the pipeline's entities win: a generated entity
    inside a longer generated one stays out even where the longer one loses."""
    text = "太郎は東京に住んでいる。"
    ginza = {(e.text, e.label_) for e in fresh(text).ents}
    assert {"太郎", "東京"} <= {t for t, _ in ginza}, ginza
    task = get_task("ner-ja")
    # `は` lies inside the longer generated entity, and outside GiNZA's
    out = render_output(Annotation(text=text, entities=[Mention("人名", "太郎は東京"), Mention("地名", "は")]), task)
    _add(fresh, "giellm_nested", {build_input(text, task): out}, ents="keep")
    doc = fresh(text)
    assert [(s.text, s.label_) for s in doc.spans["giellm_entities"]] == [("太郎は東京", "人名"), ("は", "地名")]
    assert {(e.text, e.label_) for e in doc.ents} == ginza
    fresh.remove_pipe("giellm_nested")
    _add(fresh, "giellm_nested", {build_input(text, task): out}, ents="merge")
    assert [(e.text, e.label_) for e in fresh(text).ents if e.label_ in ("人名", "地名")] == [("太郎は東京", "人名")]


def test_predict_leaves_docs_alone_and_set_annotations_writes(fresh):
    text = "太郎は東京に住んでいる。"
    task = get_task("ner-ja")
    out = render_output(Annotation(text=text, entities=[Mention("人名", "太郎"), Mention("地名", "京都")]), task)
    pipe = _add(fresh, "giellm_predict", {build_input(text, task): out}, store_output=True)
    doc = fresh.make_doc(text)
    [prediction] = pipe.predict([doc])
    assert (list(doc.ents), dict(doc.spans), doc.cats, doc._.giellm_output) == ([], {}, {}, None)
    assert [part.output for part in prediction.parts] == [out]
    assert prediction.parts[0].parse.annotation.entities == [Mention("人名", "太郎"), Mention("地名", "京都")]
    assert [(m.label, m.start, m.end) for m in prediction.found.entities] == [("人名", 0, 2)]
    assert prediction.not_found == ["京都"] and prediction.skipped is None
    pipe.set_annotations([doc], [prediction])
    assert [(e.text, e.label_) for e in doc.ents] == [("太郎", "人名")]
    assert doc._.giellm_output["not_found"] == ["京都"]


class _Failing:
    def generate(self, prompts):
        if any("失敗" in p for p in prompts):
            raise RuntimeError("backend down")
        return ["Named Entity Recognition:人名;太郎" if "太郎" in p else "Named Entity Recognition" for p in prompts]


@giellm_backends.register("test.Failing.v1")
def make_failing() -> _Failing:
    return _Failing()


def test_error_handler_gets_the_failing_batch():
    nlp = spacy.blank("ja")
    nlp.add_pipe("giellm", name="giellm_fail", config={
        "task": "ner-ja", "batch_size": 1, "backend": {"@giellm_backends": "test.Failing.v1"}})
    texts = ["太郎が来た。", "失敗した。", "花子が来た。"]
    with pytest.raises(RuntimeError, match="backend down"):
        list(nlp.pipe(texts))
    failed = []
    nlp.set_error_handler(lambda name, proc, docs, e: failed.append((name, [d.text for d in docs], str(e))))
    docs = list(nlp.pipe(texts, batch_size=1))
    doc = nlp("失敗した。")
    assert failed == [("giellm_fail", ["失敗した。"], "backend down")] * 2
    assert [d.text for d in docs] == ["太郎が来た。", "花子が来た。"]
    assert [(e.text, e.label_) for e in docs[0].ents] == [("太郎", "人名")]
    assert doc.text == "失敗した。" and list(doc.ents) == []


def test_serialization_honours_exclude(fresh, tmp_path):
    task = get_task("tcree").with_labels(word_labels={"relations": ["住所"]})
    pipe = _add(fresh, "giellm_exclude", {}, task=task.to_dict(), instruction="Relation Extraction")
    pipe.to_disk(tmp_path / "all")
    pipe.to_disk(tmp_path / "none", exclude=["task"])
    assert [p.name for p in (tmp_path / "all").iterdir()] == ["task.json"]
    assert list((tmp_path / "none").iterdir()) == []
    other = _add(fresh, "giellm_exclude2", {}, task="tcree", instruction="Relation Extraction")
    other.from_disk(tmp_path / "all", exclude=["task"])
    assert other.task == get_task("tcree")
    other.from_disk(tmp_path / "all")
    assert other.task == task
    plain = json.dumps(get_task("tcree").to_dict(), ensure_ascii=False).encode("utf8")
    other.from_bytes(plain, exclude=["task"])
    assert other.task == task
    other.from_bytes(plain)
    assert other.task == get_task("tcree")
    assert pipe.to_bytes(exclude=["task"]) == b""
    assert json.loads(pipe.to_bytes()) == task.to_dict()


def test_relation_spans_are_built_once_per_doc(fresh):
    text = "トヨタは日産と提携した。"
    tcree = get_task("tcree").with_labels(word_labels={"relations": ["提携"]})
    ann = Annotation(text=text, label="IT", instruction="Relation Extraction", relations=[Relation("提携", ("トヨタ", "日産"))])
    _add(fresh, "giellm_once", {build_input(text, tcree, "Relation Extraction"): render_output(ann, tcree)},
         task=tcree.to_dict(), instruction="Relation Extraction")
    doc = fresh(text)
    stored = doc.user_data[("giellm", "relations")]
    first, again = doc._.relations, doc._.relations
    assert first == again and [a.text for a in first[0].args] == ["トヨタ", "日産"]
    assert doc.user_data[("giellm", "relations")] is stored  # reading stores nothing
    # setting new records (Spans or strings) replaces what the getter shows
    doc._.relations = [RelationRecord("提携", (doc[0:1], "どこか"))]
    assert [(r.label, [a if isinstance(a, str) else a.text for a in r.args]) for r in doc._.relations] == [
        ("提携", ["トヨタ", "どこか"])
    ]


def test_to_disk_round_trip_keeps_config_and_task(fresh, tmp_path):
    text = "太郎は東京に住んでいる。"
    task = get_task("tcree").with_labels(word_labels={"relations": ["住所"]})
    ann = Annotation(text=text, label="IT", instruction="Relation Extraction",
                     relations=[Relation("住所", ("太郎", "東京"))])
    _add(fresh, "giellm_disk", {build_input(text, task, "Relation Extraction"): render_output(ann, task)},
         task=task.to_dict(), instruction="Relation Extraction")
    fresh.to_disk(tmp_path / "pipeline")
    assert not any(p.suffix in (".bin", ".safetensors", ".gguf") for p in (tmp_path / "pipeline" / "giellm_disk").iterdir())
    loaded = spacy.load(tmp_path / "pipeline")
    pipe = loaded.get_pipe("giellm_disk")
    assert pipe.task == task
    assert loaded.config["components"]["giellm_disk"]["backend"]["table"] == "giellm_disk"
    doc = loaded(text)
    assert [(r.label, r.head.text, r.tail.text) for r in doc._.relations] == [("住所", "太郎", "東京")]


def test_nlp_evaluate_reports_paper_metrics(fresh, stockmark):
    task = get_task("ner-ja")
    records = stockmark[:30]
    table = _oracle_table(records, task)
    # Corrupt one prediction: drop all its entities.
    victim = next(r for r in records if r["entities"])
    table[build_input(victim["text"], task)] = "Named Entity Recognition"
    _add(fresh, "giellm_eval", table)
    examples = []
    for r in records:
        doc = fresh.make_doc(r["text"])
        ents = [(e["span"][0], e["span"][1], e["type"]) for e in r["entities"]]
        examples.append(Example.from_dict(doc, {"entities": ents}))
    scores = fresh.evaluate(examples)
    n_gold = sum(len(r["entities"]) for r in records)
    n_victim = len(victim["entities"])
    assert scores["giellm_wl_acc"] == pytest.approx((n_gold - n_victim) / n_gold, abs=0.02)
    assert scores["giellm_wl_p"] > 0.95
    assert scores["giellm_all_acc"] <= (len(records) - 1) / len(records)
    assert scores["giellm_tl_acc"] is None  # ner-ja has no text level


def test_annotation_from_doc_ignores_other_labels(fresh):
    doc = fresh("太郎は東京に住んでいる。")  # GiNZA's ENE labels only
    assert annotation_from_doc(doc, get_task("ner-ja")).entities == []
    assert annotation_from_doc(doc).entities  # without a task, everything counts


def test_bad_config_is_a_clear_error(fresh):
    with pytest.raises(ValueError, match="ents"):
        _add(fresh, "giellm_badcfg", {}, ents="replace")
    with pytest.raises(KeyError, match="instruction word"):
        _add(fresh, "giellm_badcfg2", {}, instruction="Event Extraction")


def test_importing_the_plugin_is_cheap():
    import subprocess
    import sys

    # thinc imports torch itself when it is installed; the plugin must add nothing heavy.
    code = (
        "import sys, spacy; before = set(sys.modules);"
        "import spacy_giellm, spacy_giellm.component, spacy_giellm.scoring;"
        "spacy.registry.giellm_backends.get_all();"
        "heavy = [m for m in ('torch', 'transformers', 'llama_cpp', 'peft', 'sentencepiece')"
        " if m in sys.modules and m not in before];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_two_giellm_pipes_share_doc_cats(fresh):
    text = "このホテルは朝食がとても美味しかった。"
    sentiment, tcree = get_task("sentiment-ja"), get_task("tcree")
    _add(fresh, "giellm_sentiment", {build_input(text, sentiment): render_output(
        Annotation(text=text, label="positive"), sentiment)}, task="sentiment-ja")
    _add(fresh, "giellm_topic", {build_input(text, tcree): render_output(
        Annotation(text=text, label="women", instruction="Relation Extraction"), tcree)}, task="tcree")
    cats = fresh(text).cats
    assert cats["positive"] == 1.0 and cats["neutral"] == 0.0
    assert cats["women"] == 1.0 and cats["IT"] == 0.0


def test_relation_and_event_pipes_on_one_task_keep_each_others_records(fresh):
    """`package` builds one pipe per instruction word of TCREE: the event pipe
    must not wipe the relation pipe's records, nor the other way round."""
    text = "トヨタは日産と提携し、2023年に東京で新車を発表した。"
    tcree = get_task("tcree").with_labels(word_labels={"relations": ["提携"], "events": ["発表"]})
    rel = Annotation(text=text, label="IT", instruction="Relation Extraction",
                     relations=[Relation("提携", ("トヨタ", "日産"))])
    ev = Annotation(text=text, label="IT", instruction="Event Extraction",
                    events=[Relation("発表", ("トヨタ", "2023年", "東京"))])
    ginza_ents = [(e.text, e.label_) for e in fresh(text).ents]
    for name, instruction, ann in (("giellm_rel", "Relation Extraction", rel), ("giellm_ev", "Event Extraction", ev)):
        _add(fresh, name, {build_input(text, tcree, instruction): render_output(ann, tcree)},
             task=tcree.to_dict(), instruction=instruction)
    doc = fresh(text)
    assert [(r.label, [a.text for a in r.args]) for r in doc._.relations] == [("提携", ["トヨタ", "日産"])]
    assert [(e.label, [a.text for a in e.args]) for e in doc._.events] == [("発表", ["トヨタ", "2023年", "東京"])]
    # a task without an entity level leaves GiNZA's entities alone
    assert [(e.text, e.label_) for e in doc.ents] == ginza_ents


def test_generation_calls_are_batches_of_like_length():
    from spacy_giellm.backends.base import generation_calls

    prompts = ["ccc", "a", "bbbb", "dd", "eeeee"]
    assert generation_calls(prompts, 2) == [[1, 3], [0, 2], [4]]
    assert generation_calls(prompts, 10) == [[1, 3, 0, 2, 4]]
    assert generation_calls([], 2) == []


def test_component_generates_in_those_calls(fresh):
    from spacy_giellm.backends.base import generation_calls

    task = get_task("ner-ja")
    texts = ["太郎が来た。", "花子と次郎が東京へ行った。", "京都。", "山田さんが大阪で会った。", "雨。"]
    table = {build_input(t, task): render_output(Annotation(text=t, entities=[Mention("人名", t[:2])]), task)
             for t in texts}
    pipe = _add(fresh, "giellm_calls", table, batch_size=2)
    docs = list(fresh.pipe(texts, batch_size=10))
    prompts = [build_input(t, task) for t in texts]
    assert pipe.backend.calls == [[prompts[k] for k in call] for call in generation_calls(prompts, 2)]
    assert [[(e.text, e.label_) for e in d.ents] for d in docs] == [[(t[:2], "人名")] for t in texts]
