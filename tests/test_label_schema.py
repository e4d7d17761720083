"""The schema form (a task's word labels listed in the input) and the
label-schema augmentation that teaches a model to read it."""
import json
import random
import shutil
from collections import Counter
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from spacy_giellm.annotation import Annotation, Mention
from spacy_giellm.cli import app
from spacy_giellm.corpora.augment import (
    SchemaAugmentation,
    augment_annotation,
    augmented_records,
    load_label_names,
)
from spacy_giellm.format import build_input, parse_input, parse_output, render_output, to_pair
from spacy_giellm.tasks import BUILTIN_TASKS, Task

runner = CliRunner()
LABELS = ("人名", "法人名", "政治的組織名", "その他の組織名", "地名")
SCHEMA_TASK = Task.from_dict({
    "name": "ner-schema",
    "word_levels": [{"kind": "entities", "instruction": "Named Entity Recognition", "labels": list(LABELS)}],
    "label_schema": True,
})
TEXT = "山田太郎はトヨタ自動車と自民党と日本赤十字社を東京で訪ねた。"
MENTIONS = [("人名", "山田太郎"), ("法人名", "トヨタ自動車"), ("政治的組織名", "自民党"), ("その他の組織名", "日本赤十字社"), ("地名", "東京")]


def _annotation(task_name="ner-schema"):
    return Annotation(
        text=TEXT, task=task_name,
        entities=[Mention(lab, s, TEXT.index(s), TEXT.index(s) + len(s)) for lab, s in MENTIONS],
    )


def test_schema_input_lists_the_word_labels_before_the_instruction_word():
    prompt = build_input(TEXT, SCHEMA_TASK)
    assert prompt == TEXT + "[人名][法人名][政治的組織名][その他の組織名][地名]Named Entity Recognition"
    assert parse_input(prompt, SCHEMA_TASK) == (TEXT, None)
    # the output is the paper's: the schema changes the input only
    ann = _annotation()
    output = render_output(ann, SCHEMA_TASK)
    assert output == render_output(ann, replace(SCHEMA_TASK, label_schema=False))
    assert parse_output(output, SCHEMA_TASK, TEXT).annotation.entities == ann.entities


def test_schema_with_text_labels_and_a_separator():
    task = Task.from_dict({
        "name": "t", "text_labels": ["和食", "洋食"], "separator": " ", "label_schema": True,
        "word_levels": [{"kind": "entities", "instruction": "NER", "labels": ["食材", "器具"]}],
    })
    assert build_input("豆腐を煮る", task) == "豆腐を煮る <和食> <洋食> [食材] [器具] NER"
    assert parse_input(build_input("豆腐を煮る", task), task) == ("豆腐を煮る", None)


def test_schema_lists_the_labels_of_the_chosen_word_level_only():
    task = Task.from_dict({
        "name": "re", "label_schema": True,
        "word_levels": [
            {"kind": "relations", "instruction": "Relation Extraction", "labels": ["所属"]},
            {"kind": "events", "instruction": "Event Extraction", "labels": ["発売"]},
        ],
    })
    assert build_input("x", task, "Event Extraction") == "x[発売]Event Extraction"
    assert build_input("x", task, "Relation Extraction") == "x[所属]Relation Extraction"
    assert parse_input("x[発売]Event Extraction", task) == ("x", "Event Extraction")


def test_a_task_stored_without_the_option_reads_and_writes_as_before():
    old = BUILTIN_TASKS["ner-ja"].to_dict()
    assert "label_schema" not in old
    task = Task.from_dict(old)
    assert task.label_schema is False and task == BUILTIN_TASKS["ner-ja"]
    assert build_input(TEXT, task) == TEXT + "Named Entity Recognition"
    assert SCHEMA_TASK.to_dict()["label_schema"] is True
    assert Task.from_dict(SCHEMA_TASK.to_dict()) == SCHEMA_TASK


def test_a_label_the_schema_cannot_list_is_an_error():
    bad = dict(SCHEMA_TASK.to_dict(), word_levels=[{"kind": "entities", "instruction": "NER", "labels": ["A[1]"]}])
    with pytest.raises(ValueError, match=r"'A\[1\]' is empty or has \[ or \]"):
        Task.from_dict(bad)
    Task.from_dict(dict(bad, label_schema=False))  # the paper's form can carry it


def test_the_option_travels_through_sidecar_model_dir_and_gguf(tmp_path, tiny_gguf):
    from spacy_giellm.corpora.sidecar import corpus_tasks, write_corpus_tasks
    from spacy_giellm.training.gguf_export import set_gguf_strings
    from spacy_giellm.model_tasks import GGUF_TASKS_KEY, read_model_tasks, tasks_json_string, write_model_tasks

    tasks = {SCHEMA_TASK.name: SCHEMA_TASK}
    write_corpus_tasks(tmp_path / "train.jsonl", tasks)
    assert corpus_tasks(tmp_path / "train.jsonl") == tasks
    write_model_tasks(tmp_path / "model", tasks)
    assert read_model_tasks(tmp_path / "model") == tasks
    gguf = tmp_path / "m.gguf"
    shutil.copy(tiny_gguf, gguf)
    set_gguf_strings(gguf, {GGUF_TASKS_KEY: tasks_json_string(tasks)})
    stored = read_model_tasks(gguf)
    assert stored == tasks and stored[SCHEMA_TASK.name].label_schema


def test_the_component_prompts_in_the_schema_form(tiny_gemma_gguf, monkeypatch):
    pytest.importorskip("llama_cpp")
    import spacy

    nlp = spacy.blank("ja")
    backend = {"@giellm_backends": "giellm.LlamaCpp.v1", "model_path": str(tiny_gemma_gguf), "max_new_tokens": 4}
    pipe = nlp.add_pipe("giellm", config={"task": SCHEMA_TASK.to_dict(), "backend": backend, "store_output": True})
    seen = []
    generate = type(pipe.backend).generate

    def recording(self, prompts, *args, **kwargs):
        seen.extend(prompts)
        return generate(self, prompts, *args, **kwargs)

    monkeypatch.setattr(type(pipe.backend), "generate", recording)
    nlp(TEXT)
    assert seen == [build_input(TEXT, SCHEMA_TASK)] and "[人名][法人名]" in seen[0]


# --- augmentation -------------------------------------------------------------

NAMES, FOLDS = load_label_names()


def _check_variant(ann, variant, task, info):
    """The variant's spans are the original's whose labels it lists, under
    the listed names; nothing else."""
    mapping = info["map"]
    expected = Counter((mapping[m.label], m.text, m.start, m.end) for m in ann.entities if m.label in mapping)
    assert Counter((m.label, m.text, m.start, m.end) for m in variant.entities) == expected
    assert set(mapping.values()) == set(info["labels"]) == set(task.word_levels[0].labels)
    assert all(TEXT[m.start:m.end] == m.text for m in variant.entities)
    # the pair reads back to the variant with the variant's task
    model_input, output = to_pair(variant, task)
    assert model_input.endswith("".join(f"[{x}]" for x in info["labels"]) + "Named Entity Recognition")
    assert parse_input(model_input, task)[0] == TEXT
    parsed = parse_output(output, task, TEXT)
    assert parsed.ok and parsed.annotation.entities == variant.entities


@pytest.mark.parametrize("seed", range(40))
def test_augmented_variants_keep_the_spans_right(seed):
    cfg = SchemaAugmentation(subset=0.5, fold=0.5, rename=0.5, names=NAMES, folds=FOLDS)
    ann = _annotation()
    variant, task, info = augment_annotation(ann, SCHEMA_TASK, cfg, random.Random(seed))
    assert task.label_schema
    _check_variant(ann, variant, task, info)


def test_subsets_renames_folds_and_empty_results_all_occur():
    cfg = SchemaAugmentation(subset=0.5, fold=0.5, rename=0.5, names=NAMES, folds=FOLDS)
    rng = random.Random(0)
    seen = Counter()
    for _ in range(200):
        ann = _annotation()
        ann.entities = ann.entities[:1]  # only 人名: a subset without it is an empty result
        variant, task, info = augment_annotation(ann, SCHEMA_TASK, cfg, rng)
        _check_variant(ann, variant, task, info)
        listed = info["labels"]
        seen["subset"] += len(set(info["map"])) < len(LABELS)
        seen["renamed"] += any(new != old and new in NAMES.get(old, ()) for old, new in info["map"].items())
        seen["folded"] += len(listed) < len(set(info["map"]))
        seen["empty"] += not variant.entities
        seen["shuffled"] += [x for x in listed if x in LABELS] != [x for x in LABELS if x in listed]
    assert all(seen[k] >= 10 for k in ("subset", "renamed", "folded", "empty", "shuffled")), seen


def test_a_fold_takes_all_its_labels_spans():
    cfg = SchemaAugmentation(subset=0.0, fold=1.0, rename=0.0, shuffle=False,
                             folds=[(["組織"], ["法人名", "政治的組織名", "その他の組織名"])])
    variant, task, info = augment_annotation(_annotation(), SCHEMA_TASK, cfg, random.Random(0))
    assert info["labels"] == ["組織", "人名", "地名"]
    assert [(m.label, m.text) for m in variant.entities] == [
        ("人名", "山田太郎"), ("組織", "トヨタ自動車"), ("組織", "自民党"), ("組織", "日本赤十字社"), ("地名", "東京")]


def test_text_labels_are_renamed_with_the_gold_label_and_never_dropped():
    task = BUILTIN_TASKS["sentiment-ja"]
    cfg = SchemaAugmentation(rename=1.0, names=NAMES)
    rng = random.Random(0)
    for gold in ("positive", "negative", "neutral"):
        ann = Annotation(text="いい宿でした。", task=task.name, label=gold)
        variant, vtask, info = augment_annotation(ann, task, cfg, rng)
        assert sorted(info["text_labels"]) == sorted(vtask.text_labels) and len(vtask.text_labels) == 3
        assert variant.label in NAMES[gold] and variant.label in vtask.text_labels
        model_input, output = to_pair(variant, vtask)
        assert output.startswith(f"<{variant.label}>")
        assert parse_output(output, vtask, ann.text).annotation.label == variant.label


def test_augmented_records_keep_the_original_and_name_the_task():
    cfg = SchemaAugmentation(variants=2, names=NAMES, folds=FOLDS)
    records = list(augmented_records([(_annotation(), replace(SCHEMA_TASK, label_schema=False))], cfg, seed=1))
    assert len(records) == 3 and all(r["task"] == "ner-schema" for r in records)
    assert records[0]["input"] == build_input(TEXT, SCHEMA_TASK) and "augmented" not in records[0]
    assert all("augmented" in r for r in records[1:])


def test_augment_command_writes_pairs_and_a_schema_sidecar(tmp_path):
    data = tmp_path / "train.jsonl"
    rec = {"text": TEXT, "entities": [m.to_dict() for m in _annotation().entities]}
    data.write_text(json.dumps(rec, ensure_ascii=False) + "\n", encoding="utf8")
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(replace(SCHEMA_TASK, label_schema=False).to_dict(), ensure_ascii=False), encoding="utf8")
    out = tmp_path / "aug.jsonl"
    result = runner.invoke(app, ["augment", str(data), str(out), "--task", str(task_file), "--variants", "3"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["written"] == 4
    lines = [json.loads(x) for x in out.read_text(encoding="utf8").splitlines()]
    assert len(lines) == 4 and all(r["task"] == "ner-schema" for r in lines)
    sidecar = json.loads((tmp_path / "aug.tasks.json").read_text(encoding="utf8"))
    assert sidecar["tasks"][0]["label_schema"] is True
    # the input is never the output
    result = runner.invoke(app, ["augment", str(out), str(out)])
    assert result.exit_code == 1 and "is the input" in result.output


def test_bad_augmentation_settings_are_errors(tmp_path):
    with pytest.raises(ValueError, match="subset is a probability"):
        SchemaAugmentation(subset=1.5)
    bad = tmp_path / "names.json"
    bad.write_text('{"names": {"人名": "人物"}}', encoding="utf8")
    with pytest.raises(ValueError, match="names.json: 'names' maps each label to a list"):
        load_label_names(bad)


def test_train_warns_when_a_schema_base_gets_a_task_without_the_schema(tmp_path, caplog):
    import logging

    from spacy_giellm.model_tasks import write_model_tasks
    from spacy_giellm.training.train import _warn_if_the_base_reads_a_schema

    plain = replace(SCHEMA_TASK, name="mine", label_schema=False)
    base = tmp_path / "giellm-ja"
    write_model_tasks(base, {SCHEMA_TASK.name: SCHEMA_TASK})
    with caplog.at_level(logging.WARNING, logger="spacy_giellm"):
        _warn_if_the_base_reads_a_schema(str(base), {"mine": plain})
    assert "task(s) ['mine'] are not" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spacy_giellm"):
        _warn_if_the_base_reads_a_schema(str(base), {"mine": replace(plain, label_schema=True)})
        write_model_tasks(tmp_path / "plain-base", {"mine": plain})
        _warn_if_the_base_reads_a_schema(str(tmp_path / "plain-base"), {"mine": plain})
    assert caplog.text == ""
