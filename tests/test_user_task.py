"""A user's own task travels with the data and the model (issue 14): a task
file given once to `convert`; after that `mix`, `train`, `merge`,
`export-gguf`, `evaluate-model`, `evaluate`, `package` and `annotate` find
its definition in the corpus's sidecar (`x.tasks.json`), the model dir's
`giellm_tasks.json` or the GGUF's `giellm.tasks` metadata."""
import json
import logging
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spacy_giellm.cli import app
from spacy_giellm.corpora import CorpusError, read_corpus, tasks_path
from spacy_giellm.tasks import BUILTIN_TASKS, Task, TaskResolver

runner = CliRunner()
ASSETS = Path(__file__).parent.parent / "assets"

# Eight entity labels and two text labels unlike any built-in task's.
LABELS = ["食材", "調味料", "調理器具", "料理名", "分量", "時間", "温度", "手順"]
TASK = {
    "name": "recipe-ner",
    "text_labels": ["和食", "洋食"],
    "word_levels": [{"kind": "entities", "instruction": "Named Entity Recognition", "labels": LABELS}],
}
FOODS = ["豆腐", "鶏肉", "人参", "玉ねぎ", "卵", "鮭"]
TOOLS = ["鍋", "フライパン", "包丁"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _records(n: int = 24):
    """Recipe sentences as a user writes them: text, label, entities; no task."""
    out = []
    for i in range(n):
        food, tool, minutes = FOODS[i % len(FOODS)], TOOLS[i % len(TOOLS)], f"{i % 9 + 1}分"
        text = f"{food}を{tool}で{minutes}煮る。{i}"
        ents = [("食材", food), ("調理器具", tool), ("時間", minutes)]
        out.append({
            "text": text,
            "label": "和食" if i % 2 else "洋食",
            "entities": [{"label": lab, "text": s, "start": text.index(s), "end": text.index(s) + len(s)} for lab, s in ents],
        })
    return out


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf8")
    return path


@pytest.fixture()
def user_files(tmp_path):
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(TASK, ensure_ascii=False), encoding="utf8")
    return task_file, _write_jsonl(tmp_path / "user.jsonl", _records())


@pytest.fixture()
def converted(user_files, tmp_path):
    task_file, user = user_files
    result = run("convert", "jsonl", user, tmp_path / "corpus.jsonl", "--task", task_file)
    assert result.exit_code == 0, result.output
    return tmp_path / "corpus.jsonl"


# --- the corpus carries its tasks --------------------------------------------


def test_convert_writes_the_task_definitions_beside_its_output(converted):
    sidecar = tasks_path(converted)
    assert sidecar.name == "corpus.tasks.json"
    data = json.loads(sidecar.read_text(encoding="utf8"))
    assert data["giellm_tasks"] == 1 and [t["name"] for t in data["tasks"]] == ["recipe-ner"]
    assert data["tasks"][0]["word_levels"][0]["labels"] == LABELS
    record = json.loads(converted.read_text(encoding="utf8").splitlines()[0])
    assert record["task"] == "recipe-ner" and record["input"].endswith("<和食><洋食>Named Entity Recognition")


def test_every_reader_of_the_corpus_finds_the_task_without_a_task_file(converted, tmp_path):
    anns, report = read_corpus("jsonl", converted)
    assert len(anns) == 24 and report.task.text_labels == ("和食", "洋食")
    # convert again (jsonl -> DocBin -> jsonl): each output carries the task on
    for out in ("again.spacy", "again.jsonl"):
        source = converted if out.endswith(".spacy") else tmp_path / "again.spacy"
        result = run("convert", "jsonl" if out.endswith(".spacy") else "docbin", source, tmp_path / out)
        assert result.exit_code == 0, result.output
        assert "recipe-ner" in tasks_path(tmp_path / out).read_text(encoding="utf8")
    assert (tmp_path / "again.jsonl").read_text(encoding="utf8") == converted.read_text(encoding="utf8")
    result = run("evaluate", converted, converted, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["all_acc"] == 1.0


def test_a_label_outside_the_users_task_is_an_error_naming_file_and_line(converted, tmp_path):
    lines = converted.read_text(encoding="utf8").splitlines()
    bad = json.loads(lines[1])
    bad["entities"][0]["label"] = "人名"  # scnm's, not the user's
    lines[1] = json.dumps(bad, ensure_ascii=False)
    converted.write_text("\n".join(lines) + "\n", encoding="utf8")
    with pytest.raises(CorpusError, match=rf"^{converted}:2: entities\[0\]: label '人名' is not one of task 'recipe-ner'"):
        read_corpus("jsonl", converted)
    bad["label"] = "中華"
    lines[1] = json.dumps(bad, ensure_ascii=False)
    converted.write_text("\n".join(lines) + "\n", encoding="utf8")
    with pytest.raises(CorpusError, match=rf"^{converted}:2: label '中華' is not one of task 'recipe-ner'"):
        read_corpus("jsonl", converted)


def test_an_open_label_task_keeps_accepting_new_labels(tmp_path):
    tcree = tmp_path / "tcree.jsonl"
    result = run("convert", "pairs", ASSETS / "tcree-sample.jsonl", tcree, "--task", "tcree")
    assert result.exit_code == 0, result.output
    carried = json.loads(tasks_path(tcree).read_text(encoding="utf8"))["tasks"]
    assert carried == [BUILTIN_TASKS["tcree"].to_dict()]  # as declared: open labels, not the ones seen
    record = {"text": "AとBが合併した。", "task": "tcree", "label": "IT", "instruction": "Relation Extraction",
              "relations": [{"label": "合併", "args": ["A", "B"]}]}
    new = _write_jsonl(tmp_path / "new.jsonl", [record])
    shutil.copy(tasks_path(tcree), tasks_path(new))
    assert read_corpus("jsonl", new)[0][0].relations[0].label == "合併"


def test_task_given_by_the_user_wins_and_the_disagreement_is_said(converted, tmp_path, caplog):
    other = tmp_path / "task2.json"
    changed = dict(TASK, word_levels=[dict(TASK["word_levels"][0], labels=LABELS + ["器"])])
    other.write_text(json.dumps(changed, ensure_ascii=False), encoding="utf8")
    result = run("evaluate", converted, converted, "--task", other)
    assert result.exit_code == 0, result.output
    said = [line for line in result.output.splitlines() if "using the definition from" in line]
    assert said == [
        f"task 'recipe-ner': using the definition from --task {other}; the corpus's {tasks_path(converted)} "
        f"defines it differently (entities labels {LABELS + ['器']} vs {LABELS})"
    ]
    # the same definition from two places: nothing to say
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spacy_giellm"):
        read_corpus("jsonl", converted, task=str(tmp_path / "task.json"))
    assert "differently" not in caplog.text


def test_a_name_in_data_is_looked_up_never_opened(converted, tmp_path):
    record = json.loads(converted.read_text(encoding="utf8").splitlines()[0])
    record["task"] = str(tmp_path / "task.json")  # a real task file, named by the data
    data = _write_jsonl(tmp_path / "d.jsonl", [record])
    with pytest.raises(CorpusError, match=rf"^{data}:1: unknown task '{tmp_path}/task\.json'; built-in tasks: "):
        read_corpus("jsonl", data)
    resolver = TaskResolver([("a model", {"recipe-ner": Task.from_dict(TASK)})])
    with pytest.raises(KeyError, match=r"given or carried by the data or model: \['recipe-ner'\]"):
        resolver.resolve("task.json")


def test_a_malformed_sidecar_is_an_error_naming_it(converted):
    sidecar = tasks_path(converted)
    sidecar.write_text(json.dumps({"giellm_tasks": 1, "tasks": [{"name": "x", "word_levels": [{"kind": "nope"}]}]}))
    with pytest.raises(ValueError, match=rf"{sidecar}: tasks\[0\]: invalid task definition"):
        read_corpus("jsonl", converted)
    sidecar.write_text("[1, 2]")
    with pytest.raises(ValueError, match=rf"{sidecar}: not a task definitions file"):
        read_corpus("jsonl", converted)


def test_mix_carries_the_task_definitions_into_each_split(converted, tmp_path):
    ner = tmp_path / "ner.jsonl"
    assert run("convert", "stockmark-ner", ASSETS / "stockmark-ner-sample.json", ner).exit_code == 0
    result = run("mix", f"recipe={converted}", f"ner={ner}:40", "--output", tmp_path / "mix", "--dev", "3", "--test", "3")
    assert result.exit_code == 0, result.output
    for split in ("train", "dev", "test"):
        carried = json.loads((tmp_path / "mix" / f"{split}.tasks.json").read_text(encoding="utf8"))
        assert sorted(t["name"] for t in carried["tasks"]) == ["ner-ja", "recipe-ner"], split
    assert json.loads(result.output)["tasks"] == {
        "ner-ja": f"the corpus's {tasks_path(ner)}", "recipe-ner": f"the corpus's {tasks_path(converted)}"
    }
    anns, _ = read_corpus("jsonl", tmp_path / "mix" / "test.jsonl")
    assert {a.task for a in anns} == {"ner-ja", "recipe-ner"}


def test_mix_oversamples_the_training_part_only(converted, tmp_path):
    ner = tmp_path / "ner.jsonl"
    assert run("convert", "stockmark-ner", ASSETS / "stockmark-ner-sample.json", ner).exit_code == 0
    once = run("mix", f"recipe={converted}", f"ner={ner}:40", "--output", tmp_path / "once", "--dev", "3", "--test", "3")
    twice = run("mix", f"recipe={converted}", f"ner={ner}:40:x2", "--output", tmp_path / "twice", "--dev", "3",
                "--test", "3")
    assert once.exit_code == 0 and twice.exit_code == 0, twice.output
    once_counts, twice_counts = json.loads(once.output), json.loads(twice.output)
    assert twice_counts["train"]["ner-ja"] == 2 * once_counts["train"]["ner-ja"] == 80
    assert twice_counts["train"]["recipe-ner"] == once_counts["train"]["recipe-ner"]
    assert twice_counts["dev"] == once_counts["dev"] and twice_counts["test"] == once_counts["test"]
    bad = run("mix", f"ner={ner}:x0", "--output", tmp_path / "bad")
    assert bad.exit_code == 1 and "at least 1" in bad.output


# --- the model carries its tasks -----------------------------------------------


class _Answer:
    """A backend answering every prompt with one fixed output."""

    def generate(self, prompts):
        return ["<和食>Named Entity Recognition:食材;豆腐"] * len(prompts)


def test_evaluate_model_takes_the_tasks_from_the_model(converted, tmp_path, monkeypatch):
    from spacy_giellm.registry import giellm_backends
    from spacy_giellm.training import evaluate as evaluate_module
    from spacy_giellm.model_tasks import MODEL_TASKS_FILE, write_model_tasks

    giellm_backends.register("test.FixedAnswer.v1", func=lambda: _Answer())
    monkeypatch.setattr(evaluate_module, "backend_config", lambda model, **_: {"@giellm_backends": "test.FixedAnswer.v1"})
    model = tmp_path / "model"
    write_model_tasks(model, {"recipe-ner": Task.from_dict(TASK)})
    assert (model / MODEL_TASKS_FILE).is_file()
    held_out = tmp_path / "held-out.jsonl"
    shutil.copy(converted, held_out)  # without its sidecar: only the model knows the task
    result = run("evaluate-model", model, held_out, "--output", tmp_path / "metrics", "--limit", "4")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics" / "metrics.json").read_text(encoding="utf8"))
    assert metrics["tasks"] == {"recipe-ner": f"the model {model}"}
    assert metrics["results"]["recipe-ner"]["sequences"] == 4
    # without the model's tasks the records name a task nobody defines
    (model / MODEL_TASKS_FILE).unlink()
    result = run("evaluate-model", model, held_out, "--output", tmp_path / "metrics")
    assert result.exit_code == 1 and "unknown task 'recipe-ner'" in result.output


def test_gguf_metadata_holds_the_tasks_through_quantization(tiny_gguf, tmp_path):
    pytest.importorskip("llama_cpp")
    from spacy_giellm.backends.gguf_check import validate_gguf
    from spacy_giellm.training.gguf_export import quantize_gguf, set_gguf_strings
    from spacy_giellm.model_tasks import GGUF_TASKS_KEY, read_model_tasks, tasks_json_string

    tasks = {"recipe-ner": Task.from_dict(TASK)}
    gguf = tmp_path / "m.gguf"
    shutil.copy(tiny_gguf, gguf)
    assert read_model_tasks(gguf) == {}
    before = validate_gguf(gguf)
    set_gguf_strings(gguf, {GGUF_TASKS_KEY: "old"})
    set_gguf_strings(gguf, {GGUF_TASKS_KEY: tasks_json_string(tasks)})  # replaces the key
    assert read_model_tasks(gguf) == tasks
    assert {k: v for k, v in validate_gguf(gguf).items() if k != "path"} == {
        k: v for k, v in before.items() if k != "path"
    }
    quantize_gguf(gguf, tmp_path / "q.gguf", "Q8_0")
    assert read_model_tasks(tmp_path / "q.gguf") == tasks
    # llama.cpp loads it and generates as from the original file
    from spacy_giellm.backends.build import backend_config, make_backend

    outs = [make_backend(backend_config(p, max_new_tokens=6)).generate(["豆腐を鍋で煮る。"]) for p in (tiny_gguf, gguf)]
    assert outs[0] == outs[1]


@pytest.mark.slow
def test_user_task_from_task_file_to_annotation_without_repeating_it(user_files, tmp_path, tiny_model_dir, tiny_gguf):
    """task file -> convert -> mix -> train -> merge -> export-gguf ->
    evaluate-model -> package -> spacy.load -> annotate; `--task` given to
    `convert` only. (`tiny_gguf`: skipped where llama.cpp's converter is not
    to be had.)"""
    pytest.importorskip("peft")
    pytest.importorskip("llama_cpp")
    import spacy

    from spacy_giellm.model_tasks import read_model_tasks

    task_file, user = user_files
    expected = {"recipe-ner": Task.from_dict(TASK)}
    corpus = tmp_path / "corpus.jsonl"
    assert run("convert", "jsonl", user, corpus, "--task", task_file).exit_code == 0
    task_file.unlink()  # from here on nothing can read it
    result = run("mix", f"recipe={corpus}", "--output", tmp_path / "mix", "--dev", "4", "--test", "4")
    assert result.exit_code == 0, result.output
    mix = tmp_path / "mix"

    result = run(
        "train", mix / "train.jsonl", mix / "dev.jsonl", "--output", tmp_path / "training",
        "--base-model", tiny_model_dir, "--max-steps", "2", "--eval-steps", "2", "--batch-size", "4",
        "--lora-r", "2", "--lora-alpha", "4", "--max-length", "256",
    )
    assert result.exit_code == 0, result.output
    adapter = tmp_path / "training" / "model"
    assert read_model_tasks(adapter) == expected
    manifest = json.loads((tmp_path / "training" / "manifest.json").read_text(encoding="utf8"))
    assert manifest["tasks"] == [expected["recipe-ner"].to_dict()]
    assert manifest["task_sources"] == {"recipe-ner": f"the corpus's {mix / 'train.tasks.json'}"}

    merged = tmp_path / "merged"
    result = run("merge", adapter, merged)
    assert result.exit_code == 0, result.output
    assert read_model_tasks(merged) == expected
    # held-out records without their sidecar: the model alone knows the task
    held_out = tmp_path / "held-out.jsonl"
    shutil.copy(mix / "test.jsonl", held_out)
    gguf = tmp_path / "recipe.gguf"
    result = run("export-gguf", merged, gguf, "--type", "f32", "--verify", held_out, "--verify-n", "1", "--verify-tokens", "4")
    assert result.exit_code == 0, result.output
    assert read_model_tasks(gguf) == expected
    assert "verify: 1/1 greedy outputs identical" in result.output
    for model in (gguf, adapter):
        out = tmp_path / f"metrics-{model.name}"
        result = run("evaluate-model", model, held_out, "--output", out, "--max-new-tokens", "8", "--limit", "2")
        assert result.exit_code == 0, result.output
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf8"))
        assert metrics["tasks"] == {"recipe-ner": f"the model {model}"}
        assert metrics["results"]["recipe-ner"]["sequences"] == 2

    base = tmp_path / "base"
    spacy.blank("xx").to_disk(base)
    # `package` as it is today takes --data: the test split's sidecar names the task
    result = run("package", gguf, tmp_path / "pipeline", "--data", mix / "test.jsonl", "--base", base, "--max-new-tokens", "8")
    assert result.exit_code == 0, result.output
    # from the model alone: no --data, no --task
    result = run("package", gguf, tmp_path / "pipeline-from-model", "--base", base, "--max-new-tokens", "8")
    assert result.exit_code == 0, result.output
    for pipeline in ("pipeline", "pipeline-from-model"):
        nlp = spacy.load(tmp_path / pipeline)
        (pipe_name,) = [name for name in nlp.pipe_names if name.startswith("giellm")]
        assert pipe_name == "giellm_recipe_ner"
        assert nlp.get_pipe(pipe_name).task == expected["recipe-ner"]
    result = run("annotate", tmp_path / "pipeline-from-model", "豆腐を鍋で3分煮る。")
    assert result.exit_code == 0, result.output
    assert "豆腐を鍋で3分煮る。" in result.output and "cats:" in result.output


# --- the component's `task` names a task the model was trained on --------------


def _gguf_with_tasks(gguf, tmp_path, tasks):
    from spacy_giellm.training.gguf_export import set_gguf_strings
    from spacy_giellm.model_tasks import GGUF_TASKS_KEY, tasks_json_string

    out = tmp_path / "recipe.gguf"
    shutil.copy(gguf, out)
    set_gguf_strings(out, {GGUF_TASKS_KEY: tasks_json_string(tasks)})
    return out


def test_component_task_names_a_task_stored_in_the_gguf(tiny_gemma_gguf, tmp_path):
    pytest.importorskip("llama_cpp")
    import spacy

    user_task = Task.from_dict(TASK)
    gguf = _gguf_with_tasks(tiny_gemma_gguf, tmp_path, {"recipe-ner": user_task})
    backend = {"@giellm_backends": "giellm.LlamaCpp.v1", "model_path": str(gguf), "max_new_tokens": 4}
    nlp = spacy.blank("ja")
    pipe = nlp.add_pipe("giellm", config={"task": "recipe-ner", "backend": dict(backend, constrained=True)})
    assert pipe.task == user_task and pipe.backend.task == user_task  # constrained decoding keeps to it
    assert set(pipe.labels) == {"和食", "洋食", *LABELS}
    doc = nlp("豆腐を鍋で3分煮る。")
    assert set(doc.cats) == {"和食", "洋食"}
    assert all(ent.label_ in LABELS for ent in doc.ents)
    # a built-in name still means the built-in task
    assert spacy.blank("ja").add_pipe("giellm", config={"task": "scnm", "backend": backend}).task == BUILTIN_TASKS["scnm"]
    # the backend alone, constrained to a task named by the model
    from spacy_giellm.backends.llamacpp import LlamaCppBackend

    assert LlamaCppBackend(str(gguf), constrained=True, task="recipe-ner").task == user_task
    # an unknown name: the built-in names and the model's
    with pytest.raises(KeyError, match=rf"unknown task 'recipe'; built-in tasks: \[.*'scnm'.*\]; the model {gguf}: \['recipe-ner'\]"):
        spacy.blank("ja").add_pipe("giellm", config={"task": "recipe", "backend": backend})
    # a model that stores no tasks does not know the name
    with pytest.raises(KeyError, match=r"unknown task 'recipe-ner'; built-in tasks: \[[^]]*\]; or a \.json/\.toml task file"):
        spacy.blank("ja").add_pipe("giellm", config={"task": "recipe-ner", "backend": dict(backend, model_path=str(tiny_gemma_gguf))})


def test_component_task_names_a_task_stored_in_the_hf_model_or_adapter(tiny_model_dir, tmp_path, caplog):
    pytest.importorskip("transformers")
    import spacy

    from spacy_giellm.model_tasks import write_model_tasks

    user_task = Task.from_dict(TASK)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    write_model_tasks(model, {"recipe-ner": user_task})
    backend = {"@giellm_backends": "giellm.HF.v1", "model": str(model), "max_new_tokens": 4, "device": "cpu"}
    nlp = spacy.blank("ja")
    pipe = nlp.add_pipe("giellm", config={"task": "recipe-ner", "backend": backend})
    assert pipe.task == user_task
    assert set(nlp("豆腐を鍋で3分煮る。").cats) == {"和食", "洋食"}
    # an adapter's tasks come before its base model's (it is what was trained);
    # the disagreement is said. (The adapter is not loaded to resolve a name.)
    adapter = tmp_path / "adapter"
    changed = Task.from_dict(dict(TASK, text_labels=["和食", "洋食", "中華"]))
    write_model_tasks(adapter, {"recipe-ner": changed})
    with caplog.at_level(logging.WARNING, logger="spacy_giellm"):
        pipe = spacy.blank("ja").add_pipe("giellm", config={"task": "recipe-ner", "backend": dict(backend, adapter=str(adapter))})
    assert pipe.task == changed
    assert f"using the definition from the adapter {adapter}; the model {model} defines it differently" in caplog.text
    with pytest.raises(KeyError, match=rf"; the adapter {adapter}: \['recipe-ner'\]; the model {model}: \['recipe-ner'\]"):
        spacy.blank("ja").add_pipe("giellm", config={"task": "nope", "backend": dict(backend, adapter=str(adapter))})
