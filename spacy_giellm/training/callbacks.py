"""Training on a time budget: a callback that stops the run after so many
seconds, and a Trainer whose learning rate follows a cosine over the time
instead of over a step count nobody knows in advance. And a callback that
gives the C allocator's freed memory back to the system now and then.

transformers and torch are imported when a callback or trainer is made.
"""
import ctypes
import math
import time
from typing import Any, Callable, Dict, List

Clock = Callable[[], float]

# --time-clock: wall-clock seconds, or this process's CPU seconds (all
# threads), a budget other jobs on the machine do not eat into.
CLOCKS: Dict[str, Clock] = {"wall": time.monotonic, "cpu": time.process_time}


def clock_named(name: str) -> Clock:
    if name not in CLOCKS:
        raise ValueError(f"time_clock must be one of {sorted(CLOCKS)}, got {name!r}")
    return CLOCKS[name]


def run_clock(name: str) -> Clock:
    """The clock `name` as the whole run reads it. In a data-parallel run
    (train --processes, torchrun) every process must stop at the same step
    and set the same learning rate, so each reading is agreed on: the
    slowest process's wall clock, the sum of all processes' CPU time (the run's CPU budget). Each
    reading is then a collective: every process reads at the same points
    (once per step, in the callback and the scheduler)."""
    local = clock_named(name)

    def clock() -> float:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return local()
        reading = torch.tensor([local()], dtype=torch.float64)
        dist.all_reduce(reading, op=dist.ReduceOp.SUM if name == "cpu" else dist.ReduceOp.MAX)
        return float(reading)

    return clock


def time_limit_callback(seconds: float, clock: Clock = time.monotonic) -> Any:
    """A TrainerCallback that stops training (with a final eval + save) after `seconds`."""
    from transformers import TrainerCallback

    class TimeLimit(TrainerCallback):
        """Stop (with a final eval + save) after `seconds` of training."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = clock()

        def on_step_end(self, args, state, control, **kwargs):
            if clock() - self.start >= seconds:
                control.should_training_stop = True
                control.should_evaluate = args.eval_strategy != "no"
                control.should_save = True
            return control

    return TimeLimit()


def release_freed_memory() -> bool:
    """Give the pages the C allocator holds free back to the system (glibc's
    `malloc_trim`). False where there is no such call (another C library,
    macOS, Windows)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    trim(0)
    return True


def memory_release_callback(every: int) -> Any:
    """A TrainerCallback that calls `release_freed_memory` every `every`
    steps, before each evaluation and after it. A CPU step frees its
    activations, but glibc keeps the pages for later allocations of other
    sizes (every packed batch has its own length): a process's RSS grew from
    2.3 to 5.3 GB over an hour of training; with a trim every 20 steps it
    peaked at 3.9 GB, climbing from about 2.0 GB between trims
    (benchmarks/training-throughput.md). The next step faults the pages in
    again (0.26 s on a 2-core CPU): every 20 steps costs under 1% of the
    time, every step 14%."""
    from transformers import TrainerCallback

    class ReleaseFreedMemory(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            # Trainer's flow callback, first in the list, has set should_evaluate
            if state.global_step % every == 0 or control.should_evaluate:
                release_freed_memory()

        def on_evaluate(self, args, state, control, **kwargs):
            release_freed_memory()

    return ReleaseFreedMemory()


def time_budget_trainer(
    trainer_cls: Any, seconds: float, warmup: float, max_steps: int, clock: Clock = time.monotonic
) -> Any:
    """A Trainer whose learning rate follows a cosine over the time budget
    (not over a step count nobody knows in advance), or over `max_steps`
    where those run out first, after a warmup of `warmup` steps (>= 1) or
    of that fraction of the budget (< 1)."""
    from torch.optim.lr_scheduler import LambdaLR

    class TimeBudgetTrainer(trainer_cls):
        def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
            if self.lr_scheduler is None:
                start: List[float] = []

                def factor(step: int) -> float:
                    if not start:
                        start.append(clock())
                    frac = min(1.0, (clock() - start[0]) / seconds)
                    if max_steps > 0:
                        frac = max(frac, min(1.0, step / max_steps))
                    warm = min(1.0, (step + 1) / warmup) if warmup >= 1 else min(1.0, frac / warmup) if warmup > 0 else 1.0
                    return max(warm, 1e-3) * 0.5 * (1.0 + math.cos(math.pi * frac))

                self.lr_scheduler = LambdaLR(optimizer or self.optimizer, factor)
            return self.lr_scheduler

    return TimeBudgetTrainer
