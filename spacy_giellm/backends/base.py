from typing import List, Protocol, runtime_checkable


@runtime_checkable
class Backend(Protocol):
    """What the `giellm` component needs from a model.

    `generate` returns one output string per prompt, in order: only the newly
    generated text, without the prompt and without special tokens. Greedy
    unless the backend was configured otherwise; generation stops at EOS or
    after the backend's max-new-tokens bound.
    """

    def generate(self, prompts: List[str]) -> List[str]:
        ...
