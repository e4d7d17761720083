"""Constrained decoding: the output language, its GBNF and byte DFA forms,
the token-level walk and the transformers LogitsProcessor."""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spacy_giellm.annotation import Annotation, Mention, Relation
from spacy_giellm.backends.hf_constraints import HFConstraintProcessor, token_vocab_from_hf
from spacy_giellm.constraints import (
    FormatAutomaton,
    PromptConstrainer,
    TokenAutomaton,
    TokenVocab,
    build_gbnf,
    split_prompt,
)
from spacy_giellm.format import build_input, parse_output, render_output
from spacy_giellm.tasks import NE_LABELS, SCNM_TOPICS, get_task

TEXT = "松友美佐紀は、日本のバドミントン選手。"


def test_automaton_accepts_gold_and_rejects_off_format():
    auto = FormatAutomaton("scnm", TEXT)
    good = [
        "<社会>Named Entity Recognition",
        "<社会>Named Entity Recognition:人名;松友美佐紀:地名;日本",
        " <学問>Named Entity Recognition:人名;松友美佐紀",  # dummy-prefix space
        "<社会>Named Entity Recognition:地名;日本:地名;日本",
    ]
    bad = [
        "",
        "<社会>",
        "<社会>Named Entity Recognitio",
        "<社>Named Entity Recognition",
        "Named Entity Recognition:人名;松友美佐紀",
        "<社会>Named Entity Recognition:人名;",  # empty span
        "<社会>Named Entity Recognition:人名;松友美佐紀x",  # span not in the text
        "<社会>Named Entity Recognition:人物;松友美佐紀",  # unknown label
        "<社会>Relation Extraction",
    ]
    assert all(auto.matches(s) for s in good)
    assert not any(auto.matches(s) for s in bad)
    # a prefix of a good output is alive, not accepting
    state = auto.feed(auto.start, "<社会>Named Entity Recognition:人".encode())
    assert state >= 0 and not auto.accepting(state)


def test_relations_events_free_labels_null_and_separator():
    tcree = get_task("tcree")
    text = "AがBを買収した"
    rel = FormatAutomaton(tcree, text, "Relation Extraction")
    assert rel.matches("<IT>Relation Extraction:A;買収;B::B;被買収;A:")
    assert not rel.matches("<IT>Relation Extraction:A;買収;C:")
    assert not rel.matches("<IT>Relation Extraction:A;買:収;B:")  # label with a delimiter
    assert not rel.matches("<IT>Event Extraction")
    assert not rel.matches("<IT>Relation Extraction:A;" + "x" * 31 + ";B:")  # free labels are short
    ev = FormatAutomaton(tcree, text, "Event Extraction")
    assert ev.matches("<CM>Event Extraction:A;買収;B;した:")
    task = get_task({"name": "t", "text_labels": ["a", "b"], "separator": " ", "null_marker": "無い",
                     "word_levels": [{"kind": "entities", "instruction": "NER", "labels": ["X"]}]})
    auto = FormatAutomaton(task, "東京")
    assert auto.matches("<a> NER :X;東京")
    assert auto.matches("<a> NER 無い")
    assert auto.matches("<a> NER ")
    assert not auto.matches("<a>NER:X;東京")
    only_label = FormatAutomaton("sentiment-ja", "良い")
    assert only_label.matches("<positive>Sentiment Classification")
    assert not only_label.matches("<positive>Sentiment Classification:x;良い")


_TEXTS = st.text(alphabet=st.sampled_from(list("東京大阪日本の会社はにでありが:;。 Ab1")), min_size=1, max_size=40)


@given(text=_TEXTS, data=st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_rendered_gold_output_is_accepted(text, data):
    """The automaton accepts everything render_output writes for spans of the
    text (spans as the parser reads them: without outer whitespace)."""
    task = get_task("scnm")
    n = data.draw(st.integers(0, 4))
    ents = []
    for _ in range(n):
        i = data.draw(st.integers(0, len(text) - 1))
        j = data.draw(st.integers(i + 1, len(text)))
        if text[i:j].strip() == text[i:j]:
            ents.append(Mention(data.draw(st.sampled_from(NE_LABELS)), text[i:j]))
    ann = Annotation(text=text, task="scnm", label=data.draw(st.sampled_from(SCNM_TOPICS)), entities=ents)
    output = render_output(ann, task)
    assert FormatAutomaton(task, text).matches(output)
    assert FormatAutomaton(task, text).matches(" " + output)
    if ents:
        assert not FormatAutomaton(task, text).matches(output + " ")


def test_accepted_outputs_parse_cleanly():
    """What the automaton accepts, the parser reads without problems (spans in the text).

    The span is half the time a piece of the text (mostly accepted), else any
    string (mostly not): the check inside `if` must run on a fair share of
    the examples, or the test would pass having checked nothing."""
    task = get_task("scnm")
    runs = {"examples": 0, "accepted": 0}

    @given(text=_TEXTS, data=st.data())
    @settings(max_examples=150, deadline=None)
    def check(text, data):
        runs["examples"] += 1
        i = data.draw(st.integers(0, len(text) - 1))
        piece = text[i : data.draw(st.integers(i + 1, len(text)))]
        junk = data.draw(st.sampled_from([piece, piece.strip() or piece]) | st.text(min_size=1, max_size=8))
        candidate = f"<社会>Named Entity Recognition:地名;{junk}"
        if FormatAutomaton(task, text).matches(candidate):
            runs["accepted"] += 1
            parsed = parse_output(candidate, task, text=text)
            assert parsed.ok
            assert parsed.annotation.label == "社会" and parsed.annotation.entities
            assert all(m.text in text for m in parsed.annotation.entities)

    check()
    assert runs["examples"] >= 100
    assert runs["accepted"] >= runs["examples"] // 4, runs


def test_relations_round_trip_through_the_automaton():
    task = get_task("tcree").with_labels(word_labels={"relations": ["買収"]})
    text = "A社がB社を買収した"
    ann = Annotation(text=text, task="tcree", label="IT", relations=[Relation("買収", ("A社", "B社"))])
    output = render_output(ann, task)
    assert FormatAutomaton(task, text, "Relation Extraction").matches(output)


def test_gbnf_is_compact_and_well_formed():
    g = build_gbnf("scnm", TEXT)
    assert g.startswith("root ::= ")
    assert '"<社会>"' in g and '"Named Entity Recognition"' in g and '"人名"' in g
    names = {line.split(" ::= ")[0] for line in g.splitlines()}
    for line in g.splitlines():
        body = line.split(" ::= ", 1)[1]
        body = __import__("re").sub(r'"(?:[^"\\]|\\.)*"', "", body)  # drop literals
        for ref in __import__("re").findall(r"\b(s\d+|span)\b", body):
            assert ref in names, ref
    # linear in the text: a suffix automaton has < 2n states
    long = "トヨタ自動車は愛知県豊田市に本社を置く。" * 50
    g_long = build_gbnf("scnm", long)
    assert g_long.count("\n") < 2 * len(long) + 5
    assert len(g_long.encode()) < 60 * len(long)
    # quotes and backslashes in the text are escaped
    g_q = build_gbnf("scnm", 'a"b\\c')
    assert '"\\""' in g_q and '"\\\\"' in g_q
    # free labels become a bounded character class
    assert "{1,30}" in build_gbnf("tcree", "AがB", "Relation Extraction")


def test_split_prompt():
    task = get_task("tcree")
    for iw in ("Relation Extraction", "Event Extraction"):
        assert split_prompt(task, build_input("本文です", task, iw)) == ("本文です", iw)
    assert split_prompt(get_task("scnm"), "not a prompt") == ("not a prompt", None)
    assert split_prompt(get_task("scnm"), build_input("本文", get_task("scnm"))) == ("本文", "Named Entity Recognition")
    assert split_prompt(get_task("sentiment-ja"), build_input("本文", get_task("sentiment-ja"))) == ("本文", None)


# ------------------------------------------------------------------ tokens


def _toy_vocab():
    pieces = [None, None, b"<a>", b"<b>", b"<", b"a", b">", b"NER", b":X;", b":", b";", b"X", b"\xe6\x9d\xb1",
              b"\xe4\xba\xac", b"\xe6", b"\x9d", b"\xb1", b" ", b"\xe6\x9d\xb1\xe4\xba\xac"]
    return TokenVocab(pieces, eos_ids=[1])


def test_token_walk_on_a_toy_vocab():
    task = get_task({"name": "t", "text_labels": ["a", "b"],
                     "word_levels": [{"kind": "entities", "instruction": "NER", "labels": ["X"]}]})
    vocab = _toy_vocab()
    ta = TokenAutomaton(FormatAutomaton(task, "東京"), vocab, opening_sequences=[[2], [3]])
    state = ta.start()
    ids, _ = ta.allowed(state)
    assert ids == [2, 3]  # only the labels' own tokens, not "<" + "a" + ">"
    state = ta.advance(state, 2)
    assert ta.allowed(state)[0] == [7]
    state = ta.advance(state, 7)
    ids, _ = ta.allowed(state)
    assert 1 in ids and 8 in ids and 9 in ids and 12 not in ids  # EOS, ":X;", ":"
    state = ta.advance(state, 8)
    ids, _ = ta.allowed(state)
    assert set(ids) == {12, 13, 14, 18}  # 東, 京, a byte of 東, 東京; not EOS (empty span)
    s2 = ta.advance(ta.advance(ta.advance(state, 14), 15), 16)  # 東 as three bytes
    assert s2 == ta.advance(state, 12)
    assert 1 in ta.allowed(s2)[0]
    assert ta.advance(state, 11) is None


def test_dead_end_falls_back_to_eos():
    task = get_task({"name": "t", "word_levels": [{"kind": "entities", "instruction": "NER", "labels": ["X"]}]})
    vocab = TokenVocab([None, None, b"NER", b":X;", b"\xe6"], eos_ids=[1])  # no token finishes 東
    ta = TokenAutomaton(FormatAutomaton(task, "東"), vocab)
    state = ta.advance(ta.advance(ta.advance(ta.start(), 2), 3), 4)
    assert ta.allowed(state)[0] == [1]


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_hf_token_bytes_round_trip(tiny_tokenizer, tiny_texts):
    vocab = token_vocab_from_hf(tiny_tokenizer)
    for text in tiny_texts + ["未知の漢字𠮷と English words 123"]:
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert b"".join(vocab.token_bytes[i] for i in ids) == text.encode()
    assert vocab.token_bytes[tiny_tokenizer.eos_token_id] is None
    assert vocab.eos_ids == [tiny_tokenizer.eos_token_id]


def test_gold_outputs_are_allowed_token_by_token(tiny_tokenizer):
    task = get_task("scnm")
    vocab = token_vocab_from_hf(tiny_tokenizer)
    constrainer = PromptConstrainer(task, vocab, lambda t: tiny_tokenizer(t, add_special_tokens=False)["input_ids"])
    assert constrainer.opening_sequences() == [[tiny_tokenizer.convert_tokens_to_ids(f"<{l}>")] for l in task.text_labels]
    ann = Annotation(text=TEXT, task="scnm", label="社会",
                     entities=[Mention("人名", "松友美佐紀"), Mention("地名", "日本")])
    ta = constrainer(build_input(TEXT, task))
    assert constrainer(build_input(TEXT, task)) is ta  # cached
    state = ta.start()
    for t in tiny_tokenizer(render_output(ann, task), add_special_tokens=False)["input_ids"]:
        state = ta.advance(state, t)
        assert state is not None
    assert tiny_tokenizer.eos_token_id in ta.allowed(state)[0]


def test_hf_processor_masks_each_row(tiny_tokenizer):
    torch = pytest.importorskip("torch")
    task = get_task("scnm")
    vocab = token_vocab_from_hf(tiny_tokenizer)
    constrainer = PromptConstrainer(task, vocab, lambda t: tiny_tokenizer(t, add_special_tokens=False)["input_ids"])
    autos = [constrainer(build_input(t, task)) for t in (TEXT, "東京")]
    proc = HFConstraintProcessor(autos)
    rng = random.Random(0)
    ids = torch.zeros((2, 5), dtype=torch.long)
    produced = [[], []]
    for _ in range(12):
        scores = torch.tensor([[rng.random() for _ in range(len(tiny_tokenizer))] for _ in range(2)])
        masked = proc(ids, scores)
        nxt = masked.argmax(-1)
        for row in range(2):
            if produced[row] and produced[row][-1] == tiny_tokenizer.eos_token_id:
                nxt[row] = tiny_tokenizer.pad_token_id
            produced[row].append(int(nxt[row]))
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    for row, text in enumerate((TEXT, "東京")):
        toks = produced[row]
        if tiny_tokenizer.eos_token_id in toks:
            toks = toks[: toks.index(tiny_tokenizer.eos_token_id)]
            out = tiny_tokenizer.decode(toks, skip_special_tokens=True)
            assert FormatAutomaton(task, text).matches(out), out
        else:  # cut by the step budget: still a live prefix
            out = tiny_tokenizer.decode(toks, skip_special_tokens=True)
            auto = FormatAutomaton(task, text)
            assert auto.feed(auto.start, out.encode()) >= 0, out


def test_label_stage_follows_the_trained_tokenization_across_the_closing_bracket():
    """A tokenizer that merges `>` with the IW: the label stage keeps `<b`,
    and the merged `>NER` token stays allowed after it."""
    task = get_task({"name": "t", "text_labels": ["a", "b"],
                     "word_levels": [{"kind": "entities", "instruction": "NER", "labels": ["X"]}]})
    vocab = TokenVocab([None, None, b"<a>", b"NER", b"<b", b">NER", b"<", b"b", b">"], eos_ids=[1])
    pieces = {"<a>NER": [2, 3], "<b>NER": [4, 5]}
    constrainer = PromptConstrainer(task, vocab, lambda text: pieces[text])
    assert constrainer.opening_sequences() == [[2], [4]]
    ta = constrainer(build_input("東京", task))
    start = ta.start()
    assert ta.allowed(start)[0] == [2, 4]  # not "<" then "b"
    after_b = ta.advance(start, 4)
    assert 5 in ta.allowed(after_b)[0] and 8 in ta.allowed(after_b)[0]
    assert 1 in ta.allowed(ta.advance(after_b, 5))[0]
    assert ta.pick(start, [6, 7, 4, 2]) == 4  # the best allowed of a ranking
