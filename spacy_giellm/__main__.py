"""`python -m spacy_giellm ...`"""
import os
import sys

from spacy_giellm.util import busy_cores

# libgomp's spin count before a waiting thread sleeps, where the machine is idle
SHORT_SPIN = "10000"


def openmp_waiting(load: float) -> dict:
    """The OpenMP variables `train` runs with, chosen by the cores busy
    with other work when it starts (`busy_cores`; measured on a 2-core
    machine, s per step of the NER recipe, benchmarks/training-throughput.md):

    | waiting          | idle machine | one busy process beside it |
    | ---------------- | -----------: | -------------------------: |
    | spin 300,000 (OpenMP's default) | 1.7-2.1 | 19.8 |
    | spin 10,000      | 1.80         | 4.6                        |
    | PASSIVE (sleep)  | 2.25-2.39    | 3.2-3.4                    |

    Busy (a core's worth of load or more): PASSIVE, as a thread spinning
    for its partner takes the core the partner needs. Idle: a short spin,
    as waking a sleeping thread at every parallel region costs a quarter of
    the step; if load comes later it costs 1.4x PASSIVE's step, not 6x."""
    if load >= 0.5:
        return {"OMP_WAIT_POLICY": "PASSIVE"}
    return {"GOMP_SPINCOUNT": SHORT_SPIN}


def _openmp_waiting_for_training() -> None:
    """`train` restarts itself once with `openmp_waiting`'s variables, unless
    the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT (to anything, even
    empty). OpenMP reads them when it is loaded, and importing this package
    loads torch (spaCy's thinc imports it), hence the restart. Only `train`:
    llama.cpp's decoding, with its many short parallel regions, is left as
    it is."""
    if len(sys.argv) > 1 and sys.argv[1] == "train" and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):
        os.environ.update(openmp_waiting(busy_cores()))
        os.execv(sys.executable, [sys.executable, "-m", "spacy_giellm", *sys.argv[1:]])


if __name__ == "__main__":
    _openmp_waiting_for_training()
    from .cli import main

    main()
