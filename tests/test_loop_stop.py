"""The loop stop: an output ends at its first piece that repeats an earlier
one and cannot be placed in the text (`prediction.LoopStop`), in the
llama.cpp batcher (`stop`) and backend (`stop_loops`), and in the HF
backend's `generate` and constrained decoding."""
from __future__ import annotations

import random

import pytest

from spacy_giellm.format import build_input, complete_pair_pieces, parse_output
from spacy_giellm.prediction import DocPrediction, LoopStop, PartPrediction
from spacy_giellm.tasks import get_task

NER = get_task("ner-ja")
IW = NER.instructions[0]


def _placed(text: str, output: str, task=NER):
    """What the component would write: the mentions placed in the text."""
    prediction = DocPrediction()
    prediction.add(PartPrediction(0, text, output, parse_output(output, task, text)))
    return [(m.label, m.start, m.end) for kind in ("entities", "sentiments") for m in getattr(prediction.found, kind)]


def _first_loop(text: str, output: str, task=NER):
    """LoopStop fed the output as it grows, one character at a time."""
    watcher = LoopStop(task, text)
    for n in range(1, len(output) + 1):
        cut = watcher.check(output[:n])
        if cut is not None:
            return cut
    return None


def test_the_last_piece_is_not_complete_until_the_next_starts():
    output = f"{IW}:人名;田中:人名;田中"
    assert [p[1:] for p in complete_pair_pieces(output, NER)] == [("人名", "田中")]
    assert [p[1:] for p in complete_pair_pieces(output + ":", NER)] == [("人名", "田中")]
    pieces = complete_pair_pieces(output + ":人名;", NER)
    assert [p[1:] for p in pieces] == [("人名", "田中"), ("人名", "田中")]
    assert [output[p[0]:].startswith(":人名;") for p in pieces] == [True, True]
    assert pieces[1][0] == len(f"{IW}:人名;田中")


def test_a_repeat_beyond_the_texts_occurrences_stops_the_output_before_it():
    text = "田中が来た。"
    output = f"{IW}:人名;田中" + ":人名;田中" * 5
    cut = _first_loop(text, output)
    assert cut == len(f"{IW}:人名;田中")
    assert _placed(text, output[:cut]) == _placed(text, output) == [("人名", 0, 2)]


def test_a_string_the_text_holds_twice_is_placed_twice_before_a_stop():
    text = "田中と田中が来た。"
    output = f"{IW}" + ":人名;田中" * 6  # placed twice, then the run starts
    cut = _first_loop(text, output)
    assert cut == len(f"{IW}:人名;田中:人名;田中")
    assert _placed(text, output[:cut]) == _placed(text, output) == [("人名", 0, 2), ("人名", 3, 5)]


def test_a_new_label_for_a_placed_string_is_not_a_repeat():
    text = "日産が来た。"
    # 日産 placed as 法人名; 人名;日産 cannot be placed but repeats nothing
    assert _first_loop(text, f"{IW}:法人名;日産:人名;日産:人名;日産:法人名;トヨタ") is None
    cut = _first_loop(text, f"{IW}:法人名;日産:人名;日産" + ":人名;日産" * 2 + ":法人名;トヨタ")
    assert cut == len(f"{IW}:法人名;日産:人名;日産")


def test_one_repeat_then_new_pieces_is_not_a_loop():
    """A model that repeats a piece once and goes on to new ones keeps
    them: a loop is a run of `LoopStop.RUN` unplaceable repeats."""
    assert LoopStop.RUN == 2
    text = "日産と東京と大阪"
    output = f"{IW}:法人名;日産:法人名;日産:地名;東京:法人名;日産:地名;大阪:地名;大阪"
    assert _first_loop(text, output) is None
    assert len(_placed(text, output)) == 3


def test_a_placeable_repeat_is_not_a_loop_and_nfkc_matches_count():
    # ＡＢＣ (full width) is placed for ABC under NFKC, once
    text = "ＡＢＣ社とABC社"
    output = f"{IW}" + ":法人名;ABC社" * 5
    cut = _first_loop(text, output)
    assert cut == len(f"{IW}" + ":法人名;ABC社" * 2)
    assert _placed(text, output[:cut]) == _placed(text, output)
    assert len(_placed(text, output)) == 2


def test_relations_and_outputs_without_pairs_never_stop():
    tcree = get_task("tcree")
    text = "田中は東京に住む。"
    iw = tcree.instruction_for(None) if tcree.instructions else ""
    looping = f"<{tcree.text_labels[0]}>{iw}" + ":田中;住所;東京:" * 6
    assert _first_loop(text, looping, tcree) is None
    assert _first_loop(text, "田中" * 10) is None  # no instruction word: no pieces


@pytest.mark.parametrize("seed", range(30))
def test_a_looping_tail_leaves_the_placed_mentions_unchanged(seed):
    """Outputs of distinct pieces, then one piece written again and again
    (as an undertrained model does), cut anywhere: what the cut output
    places is what the whole output places."""
    rng = random.Random(seed)
    words = ["田中", "日産", "東京", "ＡＢＣ", "ABC", "田中と", "と田中"]
    text = "".join(rng.choice(words) + rng.choice("がのとはで") for _ in range(rng.randint(1, 6)))
    labels = list(NER.word_levels[0].labels[:3])
    # distinct pieces before the loop (a repeat there would be the loop)
    pairs = rng.sample([(label, word) for label in labels for word in words], rng.randint(0, 5))
    head = "".join(f":{label};{word}" for label, word in pairs)
    looped = f":{rng.choice(labels)};{rng.choice(words)}"
    output = (IW + head + looped * rng.randint(1, 12))[: rng.randint(len(IW), 400)]
    cut = _first_loop(text, output)
    if cut is not None:
        assert _placed(text, output[:cut]) == _placed(text, output)
        assert len(output[:cut]) < len(output)


def test_a_new_piece_after_a_run_of_repeats_is_lost():
    """The rule's limit, pinned: a model that repeats an unplaceable piece
    twice and then writes a new one loses the new one
    (benchmarks/decoding-ceiling.md counts how often the Docs differ)."""
    text = "日産と東京"
    output = f"{IW}:人名;田中" + ":人名;田中" * 2 + ":地名;東京:法人名;日産"
    cut = _first_loop(text, output)
    assert cut == len(f"{IW}:人名;田中")
    assert _placed(text, output[:cut]) == [] != _placed(text, output)


# ---------------------------------------------------------------- llama.cpp


@pytest.mark.slow
def test_the_batcher_ends_a_stopped_sequence_and_keeps_the_others(tiny_gguf):
    import numpy as np

    from spacy_giellm.backends.llamacpp import make_llamacpp_backend

    backend = make_llamacpp_backend(model_path=str(tiny_gguf), n_ctx=512, max_new_tokens=12, n_threads=1).load()
    try:
        prompts = [build_input(t, NER) for t in ("猫が来た", "犬と猫", "田中が日産に", "東京", "大阪の店")]
        tokens = backend._prompt_ids(prompts)
        pick = lambda k, logits: int(np.argmax(logits))  # noqa: E731
        engine = backend._engine(2)
        plain = engine.generate(tokens, 12, lambda t: False, pick, parallel=1)[0]
        asked = []

        def stop(k, generated):
            asked.append((k, len(generated)))
            return 3 if k in (0, 2) and len(generated) == 5 else None

        stopped = engine.generate(tokens, 12, lambda t: False, pick, parallel=2, stop=stop)[0]
        assert stopped == [out[:3] if k in (0, 2) else out for k, out in enumerate(plain)]
        # asked after every picked token, and never again after a stop
        assert max(n for k, n in asked if k == 0) == 5 and max(n for k, n in asked if k == 1) == 12
    finally:
        backend.close()


@pytest.mark.slow
def test_the_backend_cuts_at_a_token_boundary_before_the_looping_piece(tiny_gguf):
    """The backend's stop, fed a looping output token by token through the
    model's own tokenizer, keeps exactly the tokens that decode to the
    output before the first looping piece."""
    from spacy_giellm.backends.llamacpp import make_llamacpp_backend

    backend = make_llamacpp_backend(model_path=str(tiny_gguf), n_ctx=512, max_new_tokens=12, n_threads=1,
                                    task="ner-ja").load()
    try:
        text = "田中が来た。"
        prompt = build_input(text, NER)
        output = f"{IW}:人名;田中" + ":人名;田中" * 4
        ids = backend._candidate_ids(output)
        assert backend.decode(ids) == output
        stop = backend._loop_stopper([prompt])
        answers = [stop(0, ids[:n]) for n in range(1, len(ids) + 1)]
        n_keep = next(a for a in answers if a is not None)
        assert backend.decode(ids[:n_keep]) == f"{IW}:人名;田中"
        assert backend.decoding_stats()["loops_stopped"] >= 1
        with backend.configured(stop_loops=False):
            assert backend._loop_stopper([prompt]) is None
        assert backend._loop_stopper(["not the task's form"]) is not None  # built, but never stops it
        never = backend._loop_stopper(["not the task's form"])
        assert all(never(0, ids[:n]) is None for n in range(1, len(ids) + 1))
    finally:
        backend.close()


# ---------------------------------------------------------------- HF


def _scripted_generate(backend, scripts, calls):
    """The backend's model.generate with each row's logits forced to its
    script, then to EOS: the real decoding loop and stopping criteria on
    outputs chosen by the test. `calls` counts the decoding steps."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    real = backend.model.generate
    eos = backend._eos_ids[0]

    class Script(LogitsProcessor):
        def __call__(self, input_ids, scores):
            calls.append(1)
            step = len(calls) - 1
            forced = torch.full_like(scores, float("-inf"))
            for k, script in enumerate(scripts):
                forced[k, script[step] if step < len(script) else eos] = 0.0
            return forced

    def generate(**kwargs):
        kwargs["logits_processor"] = LogitsProcessorList([Script()])
        return real(**kwargs)

    return generate


def test_hf_generate_ends_a_looping_row_and_keeps_the_others(tiny_model_dir, monkeypatch):
    """A batch of two: a row that loops is cut before its looping piece and
    stops being decoded; the other row ends at its EOS as before. Without
    `stop_loops` the looping row runs to max_new_tokens."""
    from spacy_giellm.backends.hf import make_hf_backend

    backend = make_hf_backend(model=str(tiny_model_dir), device="cpu", batch_size=2, max_new_tokens=60,
                              task="ner-ja").load()
    texts = ["田中が来た", "東京の田中さん"]  # in the order generation_calls keeps (by length)
    outputs = [f"{IW}:人名;田中" + ":人名;田中" * 30, f"{IW}:地名;東京:人名;田中"]
    scripts = [backend.tokenizer(o, add_special_tokens=False)["input_ids"] for o in outputs]
    assert [backend.decode(ids) for ids in scripts] == outputs
    assert len(scripts[0]) > 60 > len(scripts[1])
    prompts = [build_input(t, NER) for t in texts]
    runs = {}
    calls: list = []
    monkeypatch.setattr(backend.model, "generate", _scripted_generate(backend, scripts, calls))
    for stop_loops in (True, False):
        calls.clear()
        with backend.configured(stop_loops=stop_loops):
            backend.decoding_stats(reset=True)
            runs[stop_loops] = (backend.generate(prompts), len(calls), backend.decoding_stats()["loops_stopped"])
    (stopped, stopped_steps, n_stopped), (plain, plain_steps, n_plain) = runs[True], runs[False]
    assert stopped == [f"{IW}:人名;田中", outputs[1]]
    assert plain == [backend.decode(scripts[0][:60]), outputs[1]]
    assert (n_stopped, n_plain) == (1, 0)
    assert plain_steps == 60 and stopped_steps < 30  # the batch ended once the loop was seen


def test_hf_constrained_decoding_ends_a_stopped_row_and_keeps_the_others(tiny_model_dir):
    from spacy_giellm.backends import hf_decode
    from spacy_giellm.backends.hf import make_hf_backend

    backend = make_hf_backend(model=str(tiny_model_dir), device="cpu", batch_size=4, max_new_tokens=12,
                              task="ner-ja", constrained=True).load()
    prompts = [build_input(t, NER) for t in ("猫が来た", "犬と猫", "田中が日産に", "東京")]
    constrainer = backend._prompt_constrainer()

    def run(stop=None):
        return hf_decode.constrained_greedy(backend.model, *backend._encode(prompts),
                                            [constrainer(p) for p in prompts], 12,
                                            backend.tokenizer.pad_token_id, stop=stop)

    plain = run()
    assert all(len(out) >= 5 for out in plain)
    asked = []

    def stop(k, generated):
        asked.append((k, len(generated)))
        return 3 if k in (0, 2) and len(generated) >= 5 else None

    stopped = run(stop)
    assert stopped == [out[:3] if k in (0, 2) else out for k, out in enumerate(plain)]
    # asked after every step until a row ends, never again after a stop
    assert len([1 for k, n in asked if k == 0 and n >= 5]) == 1
    assert max(n for k, n in asked if k == 1) == len(plain[1])
