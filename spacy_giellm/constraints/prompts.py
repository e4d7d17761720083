"""Prompts of one task -> token automata for one vocabulary."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple, Union

from ..format import label_marker, parse_input
from ..tasks import Task, get_task
from .automaton import FormatAutomaton
from .tokens import TokenAutomaton, TokenVocab


def split_prompt(task: Task, prompt: str) -> Tuple[str, Optional[str]]:
    """(text, instruction) of a prompt `build_input` made for `task`
    (`format.parse_input`), the instruction being the word level's own.
    A prompt that does not end like one gives (prompt, None)."""
    try:
        text, instruction = parse_input(prompt, task)
    except ValueError:
        return prompt, None
    wl = task.word_level(instruction)
    return text, (wl.instruction if wl is not None else None)


class PromptConstrainer:
    """Prompts of one task -> token automata for one vocabulary (cached per prompt).

    `tokenize(text)` (no special tokens, as training tokenizes outputs) gives
    the opening's own tokens: the tokens of `<label>` + separator + IW (or
    of the IW alone, for a task without text labels), all but the last one
    (which may merge with what follows), so the opening is generated the way
    training wrote it even where a token crosses the label's closing `>`."""

    def __init__(self, task: Union[Task, str], vocab: TokenVocab,
                 tokenize: Optional[Any] = None, cache_size: int = 1024) -> None:
        self.task = get_task(task)
        self.vocab = vocab
        self.tokenize = tokenize
        self.cache_size = cache_size
        self._cache: "OrderedDict[str, TokenAutomaton]" = OrderedDict()
        self._openings: Dict[Optional[str], List[List[int]]] = {}

    def opening_sequences(self, instruction: Optional[str] = None) -> List[List[int]]:
        found = self._openings.get(instruction)
        if found is None:
            found = []
            if self.tokenize is not None:
                iw = self.task.instruction_for(instruction)
                if self.task.text_labels:
                    for label in self.task.text_labels:
                        ids = list(self.tokenize(label_marker(label) + (self.task.separator + iw if iw else "")))
                        found.append(ids[:-1] if iw else ids)
                elif iw:
                    found.append(list(self.tokenize(iw))[:-1])
                if not all(found):  # the opening's only token merges with what follows: no opening stage
                    found = []
            self._openings[instruction] = found
        return found

    def __call__(self, prompt: str) -> TokenAutomaton:
        found = self._cache.get(prompt)
        if found is not None:
            self._cache.move_to_end(prompt)
            return found
        text, instruction = split_prompt(self.task, prompt)
        automaton = TokenAutomaton(FormatAutomaton(self.task, text, instruction), self.vocab,
                                   self.opening_sequences(instruction))
        self._cache[prompt] = automaton
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return automaton
