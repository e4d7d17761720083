"""`python -m spacy_giellm ...`"""
import os
import sys


def _passive_openmp_for_training() -> None:
    """`train` runs with OMP_WAIT_POLICY=PASSIVE unless the variable is set
    (to anything, even empty). torch's OpenMP threads otherwise spin while
    they wait for each other; on a machine that other jobs load, a spinning
    thread keeps the core from the thread it waits for, and a training step
    took 8-10x longer with 2 threads than with 1 (benchmarks/
    training-throughput.md). OpenMP reads the variable when it is loaded,
    and importing this package loads torch (spaCy's thinc imports it), so
    the process restarts itself once with the variable set. Only `train`:
    llama.cpp's decoding, with its many short parallel regions, is left
    as it is."""
    if len(sys.argv) > 1 and sys.argv[1] == "train" and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, "-m", "spacy_giellm", *sys.argv[1:]])


if __name__ == "__main__":
    _passive_openmp_for_training()
    from .cli import main

    main()
