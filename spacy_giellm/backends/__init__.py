"""Backends turn a batch of prompts into a batch of generations.

Each backend lives in its own module and is registered in `giellm_backends`.
Modules here must import torch / transformers / llama_cpp only inside the
functions that build or run a model, so importing spaCy stays cheap.

A backend needs only `generate` (`Backend`); what else it can do is declared
by the protocols in `base` and checked with `isinstance`: `TaskBinding`,
`LabelScoring`, `TokenCounting`, `ModelTasks`.
"""
from .base import Backend, LabelScoring, ModelTasks, TaskBinding, TokenCounting

__all__ = ["Backend", "TaskBinding", "LabelScoring", "TokenCounting", "ModelTasks"]
