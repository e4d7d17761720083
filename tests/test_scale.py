"""Label scores, constrained decoding in both in-process backends, and
llama.cpp multi-sequence batching, on the tiny model."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from spacy_giellm.constraints import FormatAutomaton
from spacy_giellm.format import build_input, parse_output
from spacy_giellm.tasks import get_task

pytestmark = pytest.mark.slow

TASK = get_task("scnm")
CANDIDATES = [f"<{label}>" for label in TASK.text_labels]
_LINES = (Path(__file__).parent / "data" / "tiny_texts.txt").read_text(encoding="utf-8").splitlines()
TEXTS = [line for line in _LINES if line.strip() and "<" not in line][:7] + ["猫"]
PROMPTS = [build_input(t, TASK) for t in TEXTS]


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    from spacy_giellm.backends.hf import make_hf_backend

    return make_hf_backend(model=str(tiny_model_dir), device="cpu", batch_size=3, max_new_tokens=20, task="scnm").load()


@pytest.fixture(scope="module")
def gguf(tiny_gguf):
    from spacy_giellm.backends.llamacpp import make_llamacpp_backend

    # flash attention off: these tests compare numbers with transformers' and
    # across batch layouts to 1e-5; the F16 flash-attention kernels round
    # differently in each layout (test_flash_attention_...)
    backend = make_llamacpp_backend(model_path=str(tiny_gguf), n_ctx=512, max_new_tokens=20, n_threads=1,
                                    n_parallel=4, task="scnm", flash_attn=False).load()
    yield backend
    backend.close()


@pytest.fixture()
def constrained(hf, gguf):
    with hf.configured(constrained=True), gguf.configured(constrained=True):
        yield


@pytest.fixture(scope="module")
def nlp():
    import spacy

    return spacy.blank("ja")


def _brute_force(backend, prompt, candidates):
    """Softmax of summed log-probs, one full forward per candidate."""
    import torch

    tok, model = backend.tokenizer, backend.model
    pid = tok(prompt)["input_ids"]
    sums = []
    for cand in candidates:
        cid = tok(cand, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([pid + cid])).logits[0].float(), -1)
        sums.append(sum(float(logp[len(pid) - 1 + k, t]) for k, t in enumerate(cid)))
    top = max(sums)
    exps = [math.exp(s - top) for s in sums]
    return [e / sum(exps) for e in exps]


def test_hf_label_scores_match_one_forward_per_candidate(hf):
    # single- and multi-token candidates, of different lengths
    candidates = CANDIDATES[:2] + ["<positive>", "<自然科学>", "人名"]
    assert len(hf.tokenizer("<自然科学>", add_special_tokens=False)["input_ids"]) > 2
    scores = hf.label_scores(PROMPTS[:5], candidates)
    assert len(scores) == 5
    for prompt, row in zip(PROMPTS[:5], scores, strict=True):
        assert list(row) == candidates
        assert sum(row.values()) == pytest.approx(1.0, abs=1e-5)
        assert list(row.values()) == pytest.approx(_brute_force(hf, prompt, candidates), abs=1e-4)
    assert hf.label_scores([], candidates) == [] and hf.label_scores(PROMPTS[:1], []) == [{}]


def test_gguf_label_scores_match_hf(hf, gguf):
    candidates = CANDIDATES + ["<positive>", "人名"]
    hf_scores, gguf_scores = hf.label_scores(PROMPTS, candidates), gguf.label_scores(PROMPTS, candidates)
    assert len(gguf_scores) == len(PROMPTS)
    for a, b in zip(hf_scores, gguf_scores, strict=True):
        assert sum(b.values()) == pytest.approx(1.0, abs=1e-6)
        assert list(b.values()) == pytest.approx(list(a.values()), abs=2e-3)


def test_unconstrained_label_is_the_argmax_when_one_is_generated(hf, gguf):
    checked = 0
    for backend in (hf, gguf):
        outputs = backend.generate(PROMPTS)
        scores = backend.label_scores(PROMPTS, CANDIDATES)
        assert len(outputs) == len(PROMPTS)
        for out, row in zip(outputs, scores, strict=True):
            started = [c for c in CANDIDATES if out.startswith(c)]
            if started:  # single-token labels: greedy picked the best of them
                assert started[0] == max(row, key=row.get)
                checked += 1
    if not checked:
        pytest.skip("no unconstrained output began with a text label: nothing to compare")


@pytest.mark.usefixtures("constrained")
def test_constrained_outputs_keep_to_the_format(hf, gguf):
    complete = 0
    for backend in (hf, gguf):
        for text, out in zip(TEXTS, backend.generate(PROMPTS), strict=True):
            auto = FormatAutomaton(TASK, text)
            # well-formed, or a prefix cut by max_new_tokens (maybe inside a character)
            state = auto.feed(auto.start, out.rstrip("\ufffd").encode())
            assert state >= 0, out
            if not out.endswith("\ufffd") and auto.accepting(state):
                parsed = parse_output(out, TASK, text=text)
                assert parsed.ok and all(m.text in text for m in parsed.annotation.entities), out
                complete += 1
    assert complete, "no constrained output was complete: nothing was parsed"


@pytest.mark.usefixtures("constrained")
def test_constrained_label_is_the_argmax_and_backends_agree(hf, gguf):
    hf_ids, gg_ids = hf.generate_ids(PROMPTS), gguf.generate_ids(PROMPTS)
    assert len(hf_ids) == len(gg_ids) == len(PROMPTS)
    assert sum(a == b for a, b in zip(hf_ids, gg_ids)) >= len(PROMPTS) - 1
    for backend in (hf, gguf):
        outputs = backend.generate(PROMPTS)
        assert len(outputs) == len(PROMPTS)
        for out, row in zip(outputs, backend.label_scores(PROMPTS, CANDIDATES), strict=True):
            assert out.startswith(max(row, key=row.get)), (out, row)


def test_component_cats_are_label_probabilities(tiny_model_dir, nlp):
    pipe = nlp
    pipe.add_pipe("giellm", config={
        "task": "scnm",
        "batch_size": 3,
        "store_output": True,
        "backend": {"@giellm_backends": "giellm.HF.v1", "model": str(tiny_model_dir), "device": "cpu",
                    "max_new_tokens": 12, "constrained": True},
    })
    backend = pipe.get_pipe("giellm").backend
    assert backend.task is not None and backend.task.name == "scnm"  # bound by the component
    for doc in pipe.pipe(TEXTS):
        assert set(doc.cats) == set(TASK.text_labels)
        assert sum(doc.cats.values()) == pytest.approx(1.0, abs=1e-5)
        output = doc._.giellm_output["outputs"][0]
        assert output.startswith(f"<{max(doc.cats, key=doc.cats.get)}>")


def test_parallel_sequences_give_the_one_at_a_time_outputs(tiny_gguf):
    from spacy_giellm.backends.llamacpp import make_llamacpp_backend

    # n_ctx 96: the KV cache grows to hold n_parallel prompts' worst case
    backend = make_llamacpp_backend(model_path=str(tiny_gguf), n_ctx=96, max_new_tokens=16, n_threads=1,
                                    task="scnm").load()
    try:
        prompts = PROMPTS * 2
        for constrained_ in (False, True):
            with backend.configured(constrained=constrained_, n_parallel=1):
                single = backend.generate_ids(prompts)
                singles_alone = [backend.generate_ids([p])[0] for p in prompts[:4]]
            assert singles_alone == single[:4]
            for n in (3, 8):
                with backend.configured(constrained=constrained_, n_parallel=n):
                    assert backend.generate_ids(prompts) == single
    finally:
        backend.close()


def test_a_new_prompt_joins_the_other_sequences_step(tiny_gguf):
    """Continuous batching: the prompt of a sequence that takes a finished
    one's place is decoded in the same llama_decode call as the others'
    next tokens (one pass of the weights for both), and every output is
    still the one-at-a-time one."""
    import numpy as np

    from spacy_giellm.backends.llamacpp import make_llamacpp_backend

    backend = make_llamacpp_backend(model_path=str(tiny_gguf), n_ctx=512, max_new_tokens=16, n_threads=1).load()
    try:
        tokens = backend._prompt_ids(PROMPTS * 2)
        engine = backend._engine(3)
        pick = lambda k, logits: int(np.argmax(logits))  # noqa: E731
        plain = engine.generate(tokens, 16, lambda t: False, pick, parallel=1)[0]
        # the tiny model never ends by itself: an ending token that cuts the
        # outputs at different lengths, so that sequences finish apart
        ends = {t: {out.index(t) if t in out else 16 for out in plain} for out in plain for t in out}
        end = max(ends, key=lambda t: len(ends[t]))
        assert len(ends[end]) >= 3
        expected = [out[: out.index(end)] if end in out else out for out in plain]
        calls = []
        real_decode = type(engine)._decode

        def spy(self, items):
            calls.append([(pos, seqs[0]) for _, pos, seqs, _ in items])
            return real_decode(self, items)

        type(engine)._decode = spy
        try:
            assert engine.generate(tokens, 16, lambda t: t == end, pick, parallel=3)[0] == expected
        finally:
            type(engine)._decode = real_decode
        mixed = 0
        for call in calls:
            starting = {seq for pos, seq in call if pos == 0}  # sequences whose prompt begins here
            if starting and any(seq not in starting for _, seq in call):
                mixed += 1
        assert mixed >= 3
    finally:
        backend.close()


def test_prompt_too_long_for_the_context(tiny_gguf):
    from spacy_giellm.backends.llamacpp import make_llamacpp_backend

    backend = make_llamacpp_backend(model_path=str(tiny_gguf), n_ctx=16, max_new_tokens=4, n_threads=1, n_parallel=2)
    try:
        with pytest.raises(ValueError, match="does not fit"):
            backend.generate([PROMPTS[1] * 5])
        assert len(backend.generate(["猫", "犬"])) == 2  # short prompts still run
    finally:
        backend.close()


def test_more_sequences_than_n_batch(tiny_gguf):
    """A step holds a token of every sequence: with fewer n_batch slots than
    sequences llama.cpp aborted the process (GGML_ASSERT); the batcher now
    raises n_batch to the sequences, and more sequences than n_ctx cells is
    a clear error."""
    import numpy as np

    from spacy_giellm.backends.llamacpp import make_llamacpp_backend
    from spacy_giellm.backends.llamacpp_batch import SequenceBatcher

    backend = make_llamacpp_backend(model_path=str(tiny_gguf), n_ctx=512, max_new_tokens=8, n_threads=1).load()
    try:
        tokens = backend._prompt_ids(PROMPTS * 4)
        pick = lambda k, logits: int(np.argmax(logits))  # noqa: E731
        expected = backend._engine(1).generate(tokens, 8, lambda t: False, pick, parallel=1)[0]
        engine = SequenceBatcher(backend.llama, n_ctx=512, n_seq=len(tokens), n_threads=1, n_batch=4)
        try:
            assert engine.n_batch >= len(tokens)
            assert engine.generate(tokens, 8, lambda t: False, pick)[0] == expected
        finally:
            engine.close()
        with pytest.raises(ValueError, match="20 sequences do not fit n_ctx=16"):
            SequenceBatcher(backend.llama, n_ctx=16, n_seq=20, n_threads=1)
        # the backend keeps its sequences within n_ctx: n_parallel 100 in 64 cells runs
        small = make_llamacpp_backend(model_path=str(tiny_gguf), n_ctx=64, max_new_tokens=4, n_threads=1,
                                      n_parallel=100)
        try:
            assert small.generate_ids(["猫", "犬"]) == [small.generate_ids([p])[0] for p in ("猫", "犬")]
        finally:
            small.close()
    finally:
        backend.close()


def test_bad_decoding_settings_are_errors_not_hangs(tiny_gguf):
    """n_parallel below 1 left nothing to admit and looped forever;
    max_new_tokens 0 gave a token. The settings refuse them (at construction
    and on reconfiguring; a setting cannot be assigned), and so does the
    batcher, which the backend's decoding runs on."""
    import signal

    from spacy_giellm.backends.llamacpp import make_llamacpp_backend

    def hung(*_):
        raise TimeoutError("generate hung")

    backend = make_llamacpp_backend(model_path=str(tiny_gguf), n_ctx=256, max_new_tokens=4, n_threads=1).load()
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        tokens = backend._prompt_ids(PROMPTS[:2])
        for name, value, message in (("n_parallel", -1, "parallel"), ("n_parallel", 0, "parallel"),
                                     ("max_new_tokens", 0, "max_new_tokens")):
            refused = rf"{message}\b.* must be >= 1, got {value}"
            with pytest.raises(ValueError, match=refused):
                make_llamacpp_backend(model_path=str(tiny_gguf), **{name: value})
            with pytest.raises(ValueError, match=refused):
                backend.reconfigure(replace(backend.settings, **{name: value}))
            with pytest.raises(AttributeError, match="is a setting"):
                setattr(backend, name, value)
            args = {"parallel": value} if name == "n_parallel" else {"max_new_tokens": value}
            with pytest.raises(ValueError, match=refused):
                backend._engine(1).generate(tokens, **{"max_new_tokens": 4, **args}, is_end=lambda t: False,
                                            pick=lambda k, logits: 0)
        assert len(backend.generate(PROMPTS[:2])) == 2
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        backend.close()


def test_label_scoring_fits_every_prompt_the_component_lets_through(tiny_gguf):
    """Scoring a text label of several tokens puts its later tokens in
    scratch cells beside the prompt. Where they outnumber max_new_tokens,
    max_prompt_tokens (what the component cuts docs to) leaves room for
    them: a prompt at that limit is scored, not refused mid-batch."""
    from spacy_giellm.backends.llamacpp import make_llamacpp_backend

    task = get_task({"name": "long-labels", "text_labels": ["良い知らせ", "悪い知らせ"],
                     "word_levels": [{"kind": "entities", "instruction": "Named Entity Recognition",
                                      "labels": ["人名"]}]})
    backend = make_llamacpp_backend(model_path=str(tiny_gguf), n_ctx=128, max_new_tokens=2, n_threads=1,
                                    task=task).load()
    try:
        markers = [f"<{label}>" for label in task.text_labels]
        scratch = sum(len(backend._candidate_ids(m)) - 1 for m in markers)
        assert scratch > backend.max_new_tokens  # else this test shows nothing
        limit = backend.max_prompt_tokens()
        assert limit <= backend.n_ctx - scratch
        text = "".join(TEXTS) * 4
        n = len(text)
        while len(backend.encode_prompt(build_input(text[:n], task))) > limit:
            n -= 1
        prompt = build_input(text[:n], task)
        assert len(backend.encode_prompt(prompt)) > limit - 3  # at (or next to) the limit
        outputs, rows = backend.generate_scored([PROMPTS[0], prompt], markers)
        assert len(outputs) == 2 and all(sum(row.values()) == pytest.approx(1.0) for row in rows)
    finally:
        backend.close()


def test_an_empty_prompt_without_bos_is_named_when_scoring(tiny_gguf):
    from spacy_giellm.backends.llamacpp import make_llamacpp_backend

    backend = make_llamacpp_backend(model_path=str(tiny_gguf), n_ctx=256, max_new_tokens=4, n_threads=1,
                                    task=TASK).load()
    try:
        backend._meta["add_bos_token"] = False  # a GGUF whose tokenizer adds none: "" has no tokens
        for call in (backend.generate, lambda ps: backend.label_scores(ps, CANDIDATES),
                     lambda ps: backend.generate_scored(ps, CANDIDATES)):
            with pytest.raises(ValueError, match="empty prompt and no BOS token"):
                call(["", PROMPTS[0]])
    finally:
        backend.close()


def test_constrained_needs_a_task(tiny_model_dir):
    from spacy_giellm.backends.hf import make_hf_backend

    backend = make_hf_backend(model=str(tiny_model_dir), device="cpu", max_new_tokens=2, constrained=True)
    with pytest.raises(ValueError, match="needs a task"):
        backend.generate(PROMPTS[:1])


def test_streams_per_sequence_give_the_unified_outputs_and_scores(gguf):
    """kv_unified = false (scripts/bench_kv_streams.py): each sequence
    attends to its own KV stream, and a multi-token label candidate is
    scored in a copy of its prompt's whole stream; outputs and label scores
    are the unified cache's."""
    import numpy as np

    from spacy_giellm.backends.llamacpp_batch import SequenceBatcher

    tokens = gguf._prompt_ids(PROMPTS * 2)
    cand = [gguf._candidate_ids(c) for c in CANDIDATES + ["<良い知らせ>", "<悪い知らせ>"]]
    assert any(len(ids) > 1 for ids in cand)  # scratch copies are used
    per = 1 + sum(len(ids) > 1 for ids in cand)
    pick = lambda k, logits: int(np.argmax(logits))  # noqa: E731
    results = {}
    for unified in (True, False):
        engine = SequenceBatcher(gguf.llama, n_ctx=256, n_seq=3 * per, n_threads=1, kv_unified=unified)
        try:
            results[unified] = engine.generate(tokens, 12, lambda t: False, pick, candidates=cand)
        finally:
            engine.close()
    assert results[False][0] == results[True][0]
    for row, expected in zip(results[False][1], results[True][1]):
        assert row == pytest.approx(expected, rel=1e-5, abs=1e-4)  # summed log-probabilities, float rounding


def test_the_kv_cache_grows_to_hold_n_parallel_worst_cases(tiny_gguf):
    """n_ctx is each prompt's limit; the cache holds n_parallel prompts and
    their max_new_tokens, so that they can decode together."""
    from spacy_giellm.backends.llamacpp import make_llamacpp_backend

    backend = make_llamacpp_backend(model_path=str(tiny_gguf), n_ctx=64, max_new_tokens=16, n_threads=1,
                                    n_parallel=8).load()
    try:
        prompts = PROMPTS[:8]
        longest = max(len(backend.encode_prompt(p)) for p in prompts)
        backend.generate(prompts)
        engine = backend._engine_
        assert engine.n_ctx >= 8 * min(64, longest + 16) > 64 and engine.n_seq >= 8
        assert engine.flash_attn  # the default
        backend.generate(prompts[:1])  # a smaller call keeps the context
        assert backend._engine_ is engine
    finally:
        backend.close()


def test_generate_scored_gives_both_from_one_prompt_pass(gguf, hf):
    """generate_scored = generate + label_scores (same outputs, same numbers),
    but each prompt is decoded once (llama.cpp) instead of twice."""
    from spacy_giellm.backends import llamacpp_batch

    fed = []
    real_add = llamacpp_batch._Step.add_prompt

    def counting_add(self, seq, tokens):
        fed.append(len(tokens))
        return real_add(self, seq, tokens)

    expected_outputs = gguf.generate(PROMPTS)
    expected_scores = gguf.label_scores(PROMPTS, CANDIDATES)
    llamacpp_batch._Step.add_prompt = counting_add
    try:
        outputs, scores = gguf.generate_scored(PROMPTS, CANDIDATES)
    finally:
        llamacpp_batch._Step.add_prompt = real_add
    assert outputs == expected_outputs and len(outputs) == len(PROMPTS)
    for row, want in zip(scores, expected_scores, strict=True):
        assert list(row) == CANDIDATES
        for c in CANDIDATES:
            assert row[c] == pytest.approx(want[c], abs=1e-5)
    assert sum(fed) == sum(len(gguf.encode_prompt(p)) for p in PROMPTS)  # one pass, not two

    hf_outputs, hf_scores = hf.generate_scored(PROMPTS, CANDIDATES)
    assert hf_outputs == hf.generate(PROMPTS)
    assert len(hf_outputs) == len(PROMPTS)
    for row, want in zip(hf_scores, hf.label_scores(PROMPTS, CANDIDATES), strict=True):
        for c in CANDIDATES:
            assert row[c] == pytest.approx(want[c], abs=1e-5)


def test_component_takes_outputs_and_scores_from_one_call(gguf, nlp):
    from spacy_giellm.component import GiellmComponent

    calls = []
    real = type(gguf).label_scores

    def spy(self, prompts, candidates):
        calls.append(len(prompts))
        return real(self, prompts, candidates)

    pipe = GiellmComponent(nlp.vocab, task="scnm", backend=gguf, batch_size=3)
    type(gguf).label_scores = spy
    try:
        docs = list(pipe.pipe(nlp(t) for t in TEXTS))
    finally:
        type(gguf).label_scores = real
    assert calls == []  # no separate scoring pass
    want = gguf.label_scores([build_input(t, TASK) for t in TEXTS], CANDIDATES)
    assert len(docs) == len(TEXTS)
    for doc, row in zip(docs, want, strict=True):
        for label in TASK.text_labels:
            assert doc.cats[label] == pytest.approx(row[f"<{label}>"], abs=1e-5)


@pytest.mark.parametrize("constrained_", [False, True])
def test_drafts_never_change_the_greedy_output(tiny_gguf, constrained_):
    """Right drafts are kept (fewer decoding steps), wrong ones dropped: the
    output is the plain greedy one either way, at any parallelism."""
    from spacy_giellm.backends.llamacpp import PromptLookup, make_llamacpp_backend

    backend = make_llamacpp_backend(model_path=str(tiny_gguf), n_ctx=128, max_new_tokens=16, n_threads=1,
                                    task="scnm", constrained=constrained_).load()
    try:
        prompts = PROMPTS * 2
        tokens = backend._prompt_ids(prompts)
        eog = backend._eog.__contains__
        engine = backend._engine(4)
        decodes = []
        real_decode = type(engine)._decode

        def run(draft, parallel):
            decodes.clear()
            type(engine)._decode = lambda self, items: (decodes.append(len(items)), real_decode(self, items))[1]
            pick, jump = backend._picker(prompts)  # drafts after jumped-over tokens too
            try:
                return engine.generate(tokens, 16, eog, pick, parallel=parallel, draft=draft, jump=jump)[0]
            finally:
                type(engine)._decode = real_decode

        plain = run(None, 1)
        plain_steps = len(decodes)
        oracle = run(lambda k, gen: plain[k][len(gen) : len(gen) + 5], 1)
        assert oracle == plain
        assert len(decodes) < plain_steps  # right drafts saved decoding steps
        for parallel in (1, 4):
            assert run(lambda k, gen: [(t + 1) % 50 for t in plain[k][len(gen) : len(gen) + 3]], parallel) == plain
            half = lambda k, gen: plain[k][len(gen) : len(gen) + 2] + [0, 0]  # noqa: E731
            assert run(half, parallel) == plain
            assert run(PromptLookup(tokens, 6), parallel) == plain
        with backend.configured(prompt_lookup=6):
            assert backend.generate_ids(prompts) == plain
    finally:
        backend.close()


# Openings of several tokens in the tiny tokenizer (its scnm labels and IW
# are single tokens): labels that share "<", an IW of Japanese characters;
# and a task without text labels, whose output opens with the IW alone.
_WORDS = [{"kind": "entities", "instruction": "固有表現の抽出", "labels": ["人名", "地名"]}]
TL_TASK = {"name": "tl", "text_labels": ["良い", "悪い"], "word_levels": _WORDS}
IW_TASK = {"name": "iw-only", "word_levels": _WORDS}


@pytest.mark.parametrize("task", [TL_TASK, IW_TASK], ids=["text-labels", "iw-only"])
def test_jump_forward_gives_the_constrained_greedy_output(tiny_gguf, task):
    """Forced tokens (the opening's, once only one sequence is left) are
    appended without logits, with the prompt or in the next step's batch:
    the outputs are those of constrained greedy decoding token by token,
    at every length limit, context size and parallelism, in fewer rows of
    logits."""
    from spacy_giellm.backends.llamacpp import make_llamacpp_backend

    prompts = [build_input(t, get_task(task)) for t in TEXTS]
    for n_ctx, max_new in ((256, 24), (256, 1), (256, 2), (256, 3), (72, 24)):
        backend = make_llamacpp_backend(model_path=str(tiny_gguf), n_ctx=n_ctx, max_new_tokens=max_new, n_threads=1,
                                        task=task, constrained=True).load()
        try:
            engine = backend._engine(4)
            rows = []
            real_decode = type(engine)._decode

            def counting(self, items):
                rows.append(sum(1 for item in items if item[3]))
                return real_decode(self, items)

            type(engine)._decode = counting
            try:
                for parallel in (1, 4):
                    with backend.configured(n_parallel=parallel, jump_forward=False):
                        rows.clear()
                        plain = backend.generate_ids(prompts)
                        plain_rows = sum(rows)
                    with backend.configured(n_parallel=parallel, jump_forward=True):
                        rows.clear()
                        backend.decoding_stats(reset=True)
                        jumped = backend.generate_ids(prompts)
                    assert jumped == plain, (n_ctx, max_new, parallel)
                    forced = backend.decoding_stats()["jumped"]
                    assert forced > 0
                    assert sum(rows) == plain_rows - forced  # no logits for a forced token
            finally:
                type(engine)._decode = real_decode
        finally:
            backend.close()
    assert any(len(out) > 3 for out in plain)  # the outputs went past the opening


def test_forced_tokens_follow_the_only_opening_left():
    task = get_task({"name": "t", "text_labels": ["a", "b"],
                     "word_levels": [{"kind": "entities", "instruction": "NER", "labels": ["X"]}]})
    from spacy_giellm.constraints import TokenAutomaton, TokenVocab

    vocab = TokenVocab([None, None, b"<a", b"<b", b">", b"N", b"E", b"R", b":"], eos_ids=[1])
    ta = TokenAutomaton(FormatAutomaton(task, "東京"), vocab, opening_sequences=[[2, 4, 5, 6], [3, 4, 5, 6]])
    start = ta.start()
    assert ta.forced(start, 10) == ([], start)  # two labels: a choice, not forced
    after_b = ta.advance(start, 3)
    tokens, state = ta.forced(after_b, 10)
    assert tokens == [4, 5, 6]  # ">", "N", "E": the rest of the opening; "R" is free (it may merge)
    assert state == ta.advance(ta.advance(ta.advance(after_b, 4), 5), 6)
    assert ta.forced(state, 10) == ([], state)
    assert ta.forced(after_b, 2)[0] == [4, 5]  # at most


def test_prompt_lookup_drafts_what_followed_the_match():
    from spacy_giellm.backends.llamacpp import PromptLookup

    lookup = PromptLookup([[5, 6, 7, 8, 9, 6, 7, 3, 4]], num_tokens=3)
    assert lookup(0, [1, 6, 7]) == [3, 4]  # the latest occurrence of (6, 7)
    assert lookup(0, [5, 6]) == [7, 8, 9]  # the longest match wins: (5, 6), not (6,)
    assert lookup(0, [42]) == []
    assert lookup(0, []) == []


# Two instructions in one batch: the tiny tokenizer's single-token IW has
# no forced opening, the other one several forced tokens.
TWO_IW_TASK = {"name": "two-iw", "word_levels": [
    {"kind": "entities", "instruction": "Named Entity Recognition", "labels": ["人名", "地名"]}, _WORDS[0]]}


@pytest.mark.parametrize("task", ["scnm", TL_TASK, IW_TASK, TWO_IW_TASK],
                         ids=["scnm", "text-labels", "iw-only", "two-instructions"])
def test_hf_head_for_allowed_tokens_gives_the_masked_generate_output(tiny_model_dir, task, monkeypatch):
    """transformers, constrained: the head applied to the allowed tokens only
    (and forced tokens fed without a pick, with or after the prompt) picks
    what `generate` with the masking processor over the full head picks, at
    every length limit, in left-padded batches, and after a label-scoring
    prefix pass; each step computes fewer head rows than the vocabulary."""
    from spacy_giellm.backends import hf_decode
    from spacy_giellm.backends.hf import make_hf_backend

    instructions = get_task(task).instructions or (None,)
    prompts = [build_input(t, get_task(task), instructions[k % len(instructions)]) for k, t in enumerate(TEXTS)]
    backend = make_hf_backend(model=str(tiny_model_dir), device="cpu", batch_size=3, max_new_tokens=24,
                              task=task, constrained=True).load()
    if task is TWO_IW_TASK:  # forced tokens for some rows of a batch, none for others
        openings = [len(backend._prompt_constrainer().opening_sequences(iw)) for iw in instructions]
        assert openings[0] == 0 < openings[1]
    vocab_size = backend.model.get_output_embeddings().weight.shape[0]
    head_rows = []
    real_head = hf_decode._head_logits

    def counting(hidden, weight, bias, rows, softcap):
        head_rows.append(vocab_size if rows is None else len(rows))
        return real_head(hidden, weight, bias, rows, softcap)

    monkeypatch.setattr(hf_decode, "_head_logits", counting)
    for max_new in (1, 2, 3, 24):
        backend.reconfigure(replace(backend.settings, max_new_tokens=max_new))
        with monkeypatch.context() as m:
            m.setattr(hf_decode, "body_and_head", lambda model: None)  # generate + HFConstraintProcessor
            masked = backend.generate_ids(prompts)
        assert not head_rows
        for jump in (False, True):
            backend.reconfigure(replace(backend.settings, jump_forward=jump))
            backend.decoding_stats(reset=True)
            assert backend.generate_ids(prompts) == masked, (max_new, jump)
            jumped = backend.decoding_stats()["jumped"]
            if not jump:
                assert jumped == 0
            elif task != "scnm" and max_new >= 3:  # scnm's tiny-tokenizer opening forces nothing
                assert jumped > 0
        assert head_rows and max(head_rows) < vocab_size / 4
        if get_task(task).text_labels:
            candidates = [f"<{label}>" for label in get_task(task).text_labels]
            outputs, _ = backend.generate_scored(prompts, candidates)
            assert outputs == [backend.decode(ids) for ids in masked]
        head_rows.clear()
    assert any(len(out) > 3 for out in masked)  # the outputs went past the opening


def test_hf_labels_of_any_characters_mask_the_full_head(tiny_model_dir, monkeypatch):
    """A word level without listed labels lets nearly every token follow:
    there the backend masks the full head under `generate` instead, and
    the outputs still keep to the format."""
    from spacy_giellm.backends import hf_decode
    from spacy_giellm.backends.hf import make_hf_backend

    task = get_task({"name": "free", "word_levels": [{"kind": "entities", "instruction": "固有表現の抽出"}]})
    called = []
    monkeypatch.setattr(hf_decode, "constrained_greedy", lambda *a, **k: called.append(1))
    backend = make_hf_backend(model=str(tiny_model_dir), device="cpu", batch_size=3, max_new_tokens=16,
                              task=task, constrained=True)
    for text, out in zip(TEXTS, backend.generate([build_input(t, task) for t in TEXTS]), strict=True):
        auto = FormatAutomaton(task, text)
        assert auto.feed(auto.start, out.rstrip("\ufffd").encode()) >= 0, out
    assert not called


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["q_proj", "v_proj", "lm_head"]], ids=["body", "body+head"])
def test_hf_allowed_head_with_an_unmerged_adapter(tiny_model_dir, tmp_path, targets, monkeypatch):
    """LoRA layers in the body run in place; a LoRA on the head itself is
    not in its weight rows, so that model masks the full head instead.
    Either way the outputs are the masked full head's."""
    peft = pytest.importorskip("peft")
    import torch
    from transformers import AutoModelForCausalLM

    from spacy_giellm.backends import hf_decode
    from spacy_giellm.backends.hf import make_hf_backend

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    with torch.no_grad():  # make the adapter matter
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    lora.save_pretrained(str(tmp_path / "adapter"))
    backend = make_hf_backend(model=str(tiny_model_dir), adapter=str(tmp_path / "adapter"), device="cpu",
                              batch_size=3, max_new_tokens=16, task="scnm", constrained=True)
    with monkeypatch.context() as m:
        m.setattr(hf_decode, "body_and_head", lambda model: None)
        masked = backend.generate_ids(PROMPTS)
    assert (hf_decode.body_and_head(backend.model) is None) == ("lm_head" in targets)
    assert backend.generate_ids(PROMPTS) == masked


@pytest.mark.parametrize("task", ["scnm", IW_TASK], ids=["scnm", "iw-only"])
def test_hf_allowed_head_on_gemma3(tiny_gemma_dir, task, monkeypatch):
    """The same equality on Gemma 3's architecture (sliding-window layers,
    scaled embeddings), with a final-logit soft-cap switched on."""
    from spacy_giellm.backends import hf_decode
    from spacy_giellm.backends.hf import make_hf_backend

    prompts = [build_input(t, get_task(task)) for t in TEXTS]
    backend = make_hf_backend(model=str(tiny_gemma_dir), device="cpu", batch_size=3, max_new_tokens=20,
                              task=task, constrained=True).load()
    backend.model.config.final_logit_softcapping = 5.0
    with monkeypatch.context() as m:
        m.setattr(hf_decode, "body_and_head", lambda model: None)
        masked = backend.generate_ids(prompts)
    assert hf_decode.body_and_head(backend.model) is not None
    assert backend.generate_ids(prompts) == masked
    assert any(len(out) > 3 for out in masked)


def test_flash_attention_scores_stay_close_to_the_plain_kernels(tiny_gguf, gguf):
    """The default (flash_attn) rounds attention in F16 differently from
    the plain kernels: label probabilities stay within 1e-3 of theirs, and
    greedy outputs on the tiny model are the same."""
    from spacy_giellm.backends.llamacpp import make_llamacpp_backend

    flash = make_llamacpp_backend(model_path=str(tiny_gguf), n_ctx=512, max_new_tokens=20, n_threads=1,
                                  n_parallel=4, task="scnm").load()
    try:
        assert flash.flash_attn and not gguf.flash_attn
        outputs, rows = flash.generate_scored(PROMPTS, CANDIDATES)
        plain_outputs, plain_rows = gguf.generate_scored(PROMPTS, CANDIDATES)
        assert outputs == plain_outputs
        for row, plain in zip(rows, plain_rows, strict=True):
            assert [row[c] for c in CANDIDATES] == pytest.approx([plain[c] for c in CANDIDATES], abs=1e-3)
    finally:
        flash.close()
