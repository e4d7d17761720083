"""Data-parallel training on the CPU (two processes, gloo over the loopback
interface): the output-token loss must go through the DistributedDataParallel
wrapper so that gradients are averaged across processes, and a time budget's
clock must read the same in every process so that all stop at one step."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

WORKER = r'''
import json, sys
import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoModelForCausalLM, AutoTokenizer

from spacy_giellm.training.callbacks import run_clock
from spacy_giellm.training.data import PadCollator, encode_pair
from spacy_giellm.training.loss import output_token_loss

rank, model_dir, rendezvous, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(model_dir)
pairs = [
    ("東京は日本の首都。Named Entity Recognition", "Named Entity Recognition:地名;東京"),
    ("山田さんが大阪に来た。Named Entity Recognition", "Named Entity Recognition:人名;山田:地名;大阪"),
]


def lora_model():
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(base, cfg)


def batch(i):
    return PadCollator(tok.pad_token_id)([encode_pair(tok, *pairs[i])])


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# each process its own batch, through the DDP wrapper
ddp = DistributedDataParallel(lora_model())
output_token_loss(ddp, batch(rank)).backward()
synced = grads(ddp.module)
# what averaging should give: both batches in this process, no wrapper
reference = []
for i in range(2):
    alone = lora_model()
    output_token_loss(alone, batch(i)).backward()
    reference.append(grads(alone))
mean_diff = max(float((synced[n] - (reference[0][n] + reference[1][n]) / 2).abs().max()) for n in synced)
batches_differ = max(float((reference[0][n] - reference[1][n]).abs().max()) for n in synced)
wall, cpu = run_clock("wall")(), run_clock("cpu")()
import time
local_cpu = time.process_time()
json.dump({"mean_diff": mean_diff, "batches_differ": batches_differ, "wall": wall, "cpu": cpu, "local_cpu": local_cpu},
          open(out, "w"))
dist.barrier()
dist.destroy_process_group()
'''


def test_gradients_are_averaged_across_processes_and_clocks_agree(tmp_path, tiny_model_dir):
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf8")
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).parent.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rendezvous = tmp_path / "rendezvous"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), str(tiny_model_dir), str(rendezvous), str(tmp_path / f"{rank}.json")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    for r in results:
        assert r["batches_differ"] > 1e-4  # two different batches, so the average is not either one's
        assert r["mean_diff"] < 1e-6
    # every process reads the same budget clocks: the slowest wall clock, the CPU time of both
    assert results[0]["wall"] == results[1]["wall"]
    assert results[0]["cpu"] == results[1]["cpu"]
    assert results[0]["cpu"] >= max(r["local_cpu"] for r in results) * 0.99


def _run(argv, processes):
    from spacy_giellm.training.parallel import run_data_parallel

    env_before = dict(os.environ)
    os.environ["PYTHONPATH"] = str(Path(__file__).parent.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")
    try:
        return run_data_parallel(argv, processes, threads=2)
    finally:
        os.environ.clear()
        os.environ.update(env_before)


TINY_ARGS = ["--from-scratch", "--eval-steps", "10000", "--patience", "0", "--vocab-size", "300", "--hidden-size", "32",
             "--num-layers", "1", "--num-heads", "2", "--intermediate-size", "64", "--batch-size", "4"]


def test_processes_option_runs_one_data_parallel_run(tmp_path):
    """`train --processes 2`: two processes that meet through a file, train
    as one process would (same loss on the same batches), profile the steps
    of both, stop together on a CPU-time budget, and write one manifest."""
    from spacy_giellm.training.parallel import without_option

    assert without_option(["train", "a", "--processes", "2", "--processes=2", "-o", "x"], "--processes") == [
        "train", "a", "-o", "x"
    ]
    sample = Path(__file__).parent.parent / "assets" / "tcree-sample.jsonl"
    records = [dict(json.loads(line), task="tcree") for line in sample.read_text(encoding="utf8").splitlines() if line.strip()]
    # one record, repeated: every batch is the same however it is split
    same = tmp_path / "same.jsonl"
    same.write_text((json.dumps(records[0], ensure_ascii=False) + "\n") * 16, encoding="utf8")
    losses, profiles = {}, {}
    for processes in (1, 2):
        out = tmp_path / f"same{processes}"
        argv = ["train", str(same), "--output", str(out), "--max-steps", "3", "--profile", *TINY_ARGS]
        assert _run(argv, processes) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["world_size"] == processes
        losses[processes] = manifest["train_loss"]
        profiles[processes] = manifest["profile"]
    assert losses[2] == pytest.approx(losses[1], abs=1e-4)
    # the profile counts the tokens of every process: a step is still 4 sequences
    for processes, profile in profiles.items():
        assert profile["processes"] == processes and profile["steps"] == 2
        assert profile["sequences_per_step"] == 4
        assert profile["peak_rss_mb_all_processes"] >= profile["peak_rss_mb"] * processes * 0.5
    assert profiles[2]["real_tokens_per_step"] == profiles[1]["real_tokens_per_step"]
    assert profiles[2]["gflop_per_step"] == profiles[1]["gflop_per_step"]
    # the budget is the CPU time of both processes together
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf8")
    out = tmp_path / "budget"
    argv = ["train", str(data), "--output", str(out), "--max-steps", "1000", "--max-time", "4", "--time-clock", "cpu"]
    assert _run(argv + TINY_ARGS, 2) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert 1 <= manifest["steps"] < 1000 and manifest["train_cpu_seconds_this_run"] >= 4
    # a process that fails stops the run with its exit code
    assert _run(["train", str(tmp_path / "missing.jsonl")], 2) == 1


def test_batch_size_that_does_not_split_over_the_processes_fails_early(tmp_path, monkeypatch):
    from spacy_giellm.training.train import TrainConfig, train

    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"task": "ner-ja", "input": "a", "output": "b"}) + "\n", encoding="utf8")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="batch_size 3 does not split over 2 processes"):
        train(data, None, tmp_path / "out", TrainConfig(from_scratch=True, batch_size=3))
