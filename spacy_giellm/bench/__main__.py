"""`python -m spacy_giellm.bench PAYLOAD`: one backend's figures, for `run_bench`'s child process."""
import sys

from .run import child_main

if __name__ == "__main__":
    child_main(sys.argv[1:])
