"""Docs/s of the llama.cpp backend under several decoding settings, against
the kernels' ceiling, in alternating rounds (every setting once per round,
so that a change in the machine's load hits them all), through the
component's batches.

    python scripts/bench_decoding_settings.py TEST.jsonl MODEL.gguf --task TASK \\
        --setting "before: n_parallel=8 stop_loops=false batch=16" \\
        --setting "after:" [--setting ...] [--n 100] [--rounds 3] [--threads 2] [--json out.json]

A setting is `name: key=value ...`: backend settings (`n_parallel`,
`flash_attn`, `stop_loops`, `constrained`, ...), `batch` (the
component's batch size, default 16) and `calls` (`component`: the
component's calls, `batch` prompts of like length at a time;
`one-ascending`: one call, shortest first); an empty one is the defaults. The
reference is sequential greedy decoding (`n_parallel=1`, no
loop stop, one prompt per call). For each setting: docs/s per round, the
share of the kernels' ceiling (`bench --step limits`: every token of a doc
at the rate of one long pass, from the reference's tokens per doc), and
how many outputs equal the reference's, and how many differ only after
the point where the loop stop ended them (a prefix of the reference).
"""
import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from spacy_giellm.backends.llamacpp import make_llamacpp_backend
from spacy_giellm.bench.inputs import load_texts
from spacy_giellm.bench.limits import kernel_limit
from spacy_giellm.bench.measure import generate_like_component
from spacy_giellm.format import build_input
from spacy_giellm.tasks import get_task, load_task_file

REFERENCE = {"n_parallel": 1, "stop_loops": False, "batch": 1}


def parse_setting(text: str):
    name, _, rest = text.partition(":")
    values = {}
    for item in rest.split():
        key, _, value = item.partition("=")
        values[key] = {"true": True, "false": False}.get(value.lower(), value)
        if isinstance(values[key], str) and values[key].isdigit():
            values[key] = int(values[key])
    return name.strip(), values


def generate_in_one_call(backend, prompts):
    """Outputs with all prompts in one `generate` call, shortest first
    (`calls=one-ascending`)."""
    order = sorted(range(len(prompts)), key=lambda k: len(prompts[k]))
    outputs = [""] * len(prompts)
    for k, out in zip(order, backend.generate([prompts[k] for k in order])):
        outputs[k] = out
    return outputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("test")
    ap.add_argument("model")
    ap.add_argument("--task", required=True, help="built-in task name or task file")
    ap.add_argument("--setting", action="append", default=[])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    task = load_task_file(args.task) if Path(args.task).is_file() else get_task(args.task)
    prompts = [build_input(r["text"], task) for r in load_texts(args.test, args.n)]
    settings = dict(parse_setting(s) for s in args.setting) or {"defaults": {}}
    backend = make_llamacpp_backend(model_path=args.model, n_ctx=2048, max_new_tokens=args.max_new_tokens,
                                    n_threads=args.threads, task=task).load()
    defaults = backend.settings

    def run(values):
        values = dict(values)
        batch = values.pop("batch", 16)
        calls = values.pop("calls", "component")
        backend.reconfigure(replace(defaults, **values))
        backend.decoding_stats(reset=True)
        start = time.perf_counter()
        if calls == "component":
            outputs = generate_like_component(backend, prompts, batch)
        elif calls == "one-ascending":
            outputs = generate_in_one_call(backend, prompts)
        else:
            raise ValueError(f"calls must be component or one-ascending, got {calls!r}")
        return outputs, time.perf_counter() - start, backend.decoding_stats()

    reference, reference_seconds, _ = run(REFERENCE)
    prompt_tokens = statistics.mean(len(backend.encode_prompt(p)) for p in prompts)
    new_tokens = statistics.mean(len(backend._candidate_ids(o)) if o else 0 for o in reference)
    passes = backend.token_pass_seconds()
    ceiling = kernel_limit(passes, prompt_tokens, new_tokens)["kernel_limit_docs_per_s"]
    rates = {name: [] for name in settings}
    outputs, stats = {}, {}
    for r in range(args.rounds):
        order = list(settings) if r % 2 == 0 else list(settings)[::-1]
        for name in order:
            outputs[name], seconds, stats[name] = run(settings[name])
            rates[name].append(len(prompts) / seconds)
    report = {"model": args.model, "docs": len(prompts), "threads": args.threads,
              "prompt_tokens_per_doc": round(prompt_tokens, 1), "new_tokens_per_doc": round(new_tokens, 1),
              "reference_docs_per_s": round(len(prompts) / reference_seconds, 2),
              "kernel_ms_per_prompt_token": round(passes["prompt"] * 1e3, 3),
              "kernel_ms_per_generated_token": round(passes["generated"] * 1e3, 3),
              "kernel_limit_docs_per_s": round(ceiling, 2), "settings": {}}
    print(f"kernel ceiling {ceiling:.2f} docs/s; a doc: {prompt_tokens:.1f} prompt + {new_tokens:.1f} generated tokens")
    print("| setting | docs/s per round | mean | share of the ceiling | = sequential greedy | a prefix of it | loops stopped |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, values in settings.items():
        same = sum(a == b for a, b in zip(outputs[name], reference))
        prefix = sum(a != b and b.startswith(a) for a, b in zip(outputs[name], reference))
        mean = statistics.mean(rates[name])
        report["settings"][name] = {"values": values, "docs_per_s": [round(x, 2) for x in rates[name]],
                                    "share_of_kernel_limit": round(mean / ceiling, 3), "equal": same,
                                    "prefix": prefix, "loops_stopped": stats[name].get("loops_stopped")}
        print(f"| {name} | {', '.join(f'{x:.2f}' for x in rates[name])} | {mean:.2f} | {mean / ceiling:.0%} | "
              f"{same}/{len(prompts)} | {prefix} | {stats[name].get('loops_stopped')} |")
    if args.json:
        args.json.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    backend.close()


if __name__ == "__main__":
    main()
