"""Backends turn a batch of prompts into a batch of generations.

Each backend lives in its own module and is registered in `giellm_backends`.
Modules here must import torch / transformers / llama_cpp only inside the
functions that build or run a model, so importing spaCy stays cheap.
"""
from .base import Backend

__all__ = ["Backend"]
