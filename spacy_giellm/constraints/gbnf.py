"""The output language as a llama.cpp GBNF grammar, for llama.cpp servers.

Spans are a suffix automaton of the text written as rules (one rule per
state, at most 2n states and 3n transitions for n characters), so the
grammar grows linearly with the text, not with the number of substrings.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Optional, Union

from ..tasks import Task, get_task
from .language import MAX_FREE_LABEL_CHARS, Alt, FreeLabel, Lit, Seq, Span, Star, span_automaton, output_language


def _gbnf_literal(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def build_gbnf(task: Union[Task, str], text: str, instruction: Optional[str] = None) -> str:
    """A llama.cpp GBNF grammar (root rule `root`) of the well-formed outputs for `text`."""
    task = get_task(task)
    rules: "OrderedDict[str, str]" = OrderedDict()
    sam: List[Dict[str, int]] = []

    def state_rule(k: int) -> str:
        return f"s{k}"

    def render(node: Any) -> str:
        if isinstance(node, Lit):
            return _gbnf_literal(node.text)
        if isinstance(node, Seq):
            return " ".join(r for r in (render(i) for i in node.items) if r)
        if isinstance(node, Alt):
            items = [i for i in node.items if not (isinstance(i, Lit) and not i.text)]
            body = "(" + " | ".join(render(i) for i in items) + ")"
            return body + "?" if len(items) < len(node.items) else body
        if isinstance(node, Star):
            return "(" + render(node.item) + ")*"
        if isinstance(node, FreeLabel):
            return f"[^:;<>\\x00-\\x20]{{1,{MAX_FREE_LABEL_CHARS}}}"
        if isinstance(node, Span):
            if not sam:
                moves, final = span_automaton(text)
                sam.extend(moves)
                for k in range(1, len(sam)):
                    if sam[k]:
                        alts = " | ".join(f"{_gbnf_literal(c)}{_ref(sam[k][c])}" for c in sam[k])
                        rules[state_rule(k)] = f"({alts})?" if final[k] else f"({alts})"
                alts = " | ".join(f"{_gbnf_literal(c)}{_ref(sam[0][c])}" for c in sam[0])
                rules["span"] = alts or '"\\x00"'  # no span can be written: an impossible byte
            return "span"
        raise TypeError(f"unknown grammar node {node!r}")

    def _ref(k: int) -> str:
        return f" {state_rule(k)}" if sam[k] else ""

    root = render(output_language(task, instruction))
    lines = [f"root ::= {root}"] + [f"{name} ::= {body}" for name, body in rules.items()]
    return "\n".join(lines) + "\n"
