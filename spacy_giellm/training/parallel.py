"""Data-parallel training on one machine without torchrun.

On a CPU, torch's threads scale poorly at the sizes a LoRA step has: on the
2-core machine of benchmarks/training-speed.md, two threads in one process
gave 1.45x one thread, two one-thread processes averaging gradients
1.65-1.7x.
`run_data_parallel` starts the processes itself: each is `python -m
spacy_giellm <argv>` with RANK / WORLD_SIZE set, and they meet through a
file (`join_process_group`), so no TCP store listens on any interface; gloo
connects them over the loopback interface. If one fails, the others are
stopped, since they would wait for it forever. The processes die with the
one that started them: SIGTERM, SIGHUP or SIGINT to it stops them and
removes the rendezvous directory, and on Linux each asks the kernel for
SIGTERM when its parent dies, however it dies (even SIGKILL).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Callable, Iterator, List

from ..util import signals_end_the_run

RENDEZVOUS_ENV = "SPACY_GIELLM_RENDEZVOUS"


def without_option(argv: List[str], name: str) -> List[str]:
    """`argv` without `name VALUE` / `name=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def run_data_parallel(argv: List[str], processes: int, threads: int) -> int:
    """Run `python -m spacy_giellm <argv>` as one data-parallel run of
    `processes` processes, each with its share of `threads` cores; the
    exit code of the first process that fails, else 0."""
    with signals_end_the_run(), tempfile.TemporaryDirectory(prefix="giellm-rendezvous-") as tmp:
        base_env = dict(os.environ)
        base_env.setdefault("OMP_NUM_THREADS", str(max(1, threads // processes)))
        base_env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        base_env[RENDEZVOUS_ENV] = os.path.join(tmp, "rendezvous")
        procs = []
        for rank in range(processes):
            env = dict(base_env)
            if processes > 1:  # one process: a plain run, nothing to join
                env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(processes),
                           LOCAL_WORLD_SIZE=str(processes))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "spacy_giellm", *argv], env=env, preexec_fn=_die_with(os.getpid())
            ))
        try:
            while True:
                codes = [p.poll() for p in procs]
                failed = [c for c in codes if c not in (None, 0)]
                if failed:
                    return failed[0]
                if all(c == 0 for c in codes):
                    return 0
                time.sleep(0.2)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()


def _die_with(parent: int) -> Callable[[], None]:
    """For Popen's preexec_fn: on Linux, the child gets SIGTERM when `parent`
    dies (prctl PR_SET_PDEATHSIG); if it already has, the child exits."""

    def preexec() -> None:
        if sys.platform.startswith("linux"):
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # died before the line above
            os._exit(1)

    return preexec


def world_size() -> int:
    """Processes of this run (WORLD_SIZE, which run_data_parallel, torchrun
    and accelerate set)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def per_process(batch_size: int, processes: int, name: str) -> int:
    """A batch size means sequences per optimizer step, however many
    processes share it, so that a run on more processes trains the same."""
    if batch_size % processes:
        raise ValueError(f"{name} {batch_size} does not split over {processes} processes")
    return batch_size // processes


def join_process_group() -> None:
    """In a process `run_data_parallel` started: join the others (gloo,
    through the rendezvous file) before transformers sets up the run, which
    then uses this group. Elsewhere (one process, torchrun, accelerate):
    nothing."""
    path = os.environ.get(RENDEZVOUS_ENV)
    world = world_size()
    if not path or world < 2:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{path}", rank=int(os.environ["RANK"]), world_size=world)


def leave_process_group() -> None:
    """In a process `run_data_parallel` started, once its training is done
    (no collective comes after): leave the group. A gloo group still alive
    when the interpreter exits can end the process in std::terminate
    (SIGABRT) after its model is written; seen once in a CI run."""
    if not os.environ.get(RENDEZVOUS_ENV) or world_size() < 2:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def first_process_first(cpu: bool) -> Iterator[None]:
    """The block runs in the first process of this machine, then in the
    others (which then find what it wrote, e.g. a cached base model), under
    any launcher; in one process, just runs. `cpu`: as TrainingArguments'
    use_cpu, which shares this (accelerate) state."""
    from accelerate import PartialState

    with PartialState(cpu=cpu).local_main_process_first():
        yield
