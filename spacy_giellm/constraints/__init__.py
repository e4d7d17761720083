"""Constrained decoding for the GIELLM output format.

The language of well-formed outputs for one input text is written once
(`language.output_language`) and compiled two ways:

* `gbnf.build_gbnf`: a llama.cpp GBNF grammar, for llama.cpp servers.
* `automaton.FormatAutomaton`: a byte-level DFA, built lazily by subset
  construction, walked at token level by `tokens.TokenAutomaton` against a
  byte trie of the vocabulary (`tokens.TokenVocab`). `prompts.PromptConstrainer`
  gives each prompt its token automaton. The llama.cpp backend uses
  `TokenAutomaton` directly; the transformers backend decodes with it
  applying the LM head to the allowed tokens only (`backends.hf_decode`),
  and its `LogitsProcessor` for `generate` lives in `backends.hf_constraints`.

Nothing here imports torch, transformers or llama_cpp.
"""
from .automaton import FormatAutomaton
from .gbnf import build_gbnf
from .language import output_language
from .prompts import PromptConstrainer, split_prompt
from .tokens import TOP_K, TokenAutomaton, TokenState, TokenVocab

__all__ = [
    "output_language",
    "build_gbnf",
    "FormatAutomaton",
    "TokenVocab",
    "TokenAutomaton",
    "TokenState",
    "TOP_K",
    "PromptConstrainer",
    "split_prompt",
]
