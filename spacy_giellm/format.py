"""The GIELLM Format Converter: the only place the format is defined.

    input  = text <label1><label2>... InstructionWord
    output = <label> InstructionWord word-level-part

A task with `label_schema` (the schema form, not the paper's) also lists
the labels of the word level the Instruction Word chooses, before it:

    input  = text <label1><label2>... [wordlabel1][wordlabel2]... InstructionWord

with the parts joined by the task's separator (default: nothing), and the
word-level part made of pieces:

    pairs (entities, sentiment words)   :Label;span:Label;span
    relations (head, label, tail)       :head;Label;tail::head;Label;tail:
    events (label at the task's place)  :a;Label;b;c:

An empty word-level part means nothing was found; the task's null marker
(the SLG code used `:無い;`) means the same.

The parser anchors on the task's known labels, not on the delimiters, because
spans may themselves hold `:` or `;` (`Re:ゼロ`, `10:30`). It never raises:
whatever it cannot read is dropped and reported in `ParseResult.problems`.
When the source text is given, a span that occurs in it is preferred over a
shorter reading.
"""
import re
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations, islice
from typing import Iterable, List, Optional, Sequence, Tuple

from .annotation import Annotation, Mention, Relation
from .tasks import Task, WordLevel

_TEXT_LABEL = re.compile(r"<([^<>]*)>")

# Bounds that keep parsing linear in the output's length on adversarial
# output; normal output stays far below them. A tuple part with more `;`
# than this beyond its fields is not guessed at; a region between two
# pieces is cut at its first and last this many `::`; a piece holds at most
# this many label-like anchors inside its arguments.
MAX_FIELD_CUTS = 12
MAX_PIECE_CUTS = 8
MAX_INNER_ANCHORS = 8


def label_marker(label: str) -> str:
    """A text label as the input lists it and the output starts with: `<label>`."""
    return f"<{label}>"


def candidate_markers(task: Task) -> str:
    """The task's candidate text labels as the input lists them: `<a><b>...`
    (joined by the task's separator)."""
    return task.separator.join(label_marker(label) for label in task.text_labels)


def pair_marker(label: str) -> str:
    """The start of a pair piece (entity, sentiment word): `:label;`."""
    return f":{label};"


def schema_markers(wl: WordLevel, separator: str = "") -> str:
    """A word level's labels as the schema form lists them: `[a][b]...`."""
    return separator.join(f"[{label}]" for label in wl.labels)


def build_input(text: str, task: Task, instruction: Optional[str] = None) -> str:
    """The model input for `text` (paper eq. 1-2; with `task.label_schema`,
    the word labels listed before the Instruction Word)."""
    pieces = [text]
    if task.text_labels:
        pieces.append(candidate_markers(task))
    if task.label_schema:
        wl = task.word_level(instruction)
        if wl is not None and wl.labels:
            pieces.append(schema_markers(wl, task.separator))
    iw = task.instruction_for(instruction)
    if iw:
        pieces.append(iw)
    return task.separator.join(pieces)


def parse_input(prompt: str, task: Task) -> Tuple[str, Optional[str]]:
    """(text, instruction) of an input that `build_input` made for `task`:
    the longest of the task's input suffixes it ends with is cut off (an
    instruction word may end another one). The instruction is given only
    where the task has a choice (as in `Annotation`). Raises ValueError on
    an input that does not end like one."""
    best: Optional[Tuple[str, Optional[str]]] = None
    for iw in task.instructions or (None,):
        suffix = build_input("", task, iw)
        if prompt.endswith(suffix) and (best is None or len(suffix) > len(best[0])):
            best = (suffix, iw)
    if best is None:
        endings = [build_input("", task, iw) for iw in task.instructions or (None,)]
        raise ValueError(
            f"input does not end with the task's labels and instruction word "
            f"({' or '.join(repr(e) for e in endings)}): ...{prompt[-60:]!r}"
        )
    suffix, iw = best
    return prompt[: len(prompt) - len(suffix)], (iw if len(task.instructions) > 1 else None)


def render_output(annotation: Annotation, task: Task) -> str:
    """The training target for `annotation`. Raises ValueError on an
    annotation the format cannot carry (missing text label, empty span,
    a label holding a delimiter)."""
    parts: List[str] = []
    if task.text_labels:
        if annotation.label is None:
            raise ValueError(f"task {task.name!r} needs a text label, the annotation has none")
        if "<" in annotation.label or ">" in annotation.label:
            raise ValueError(f"text label {annotation.label!r} holds < or >")
        parts.append(label_marker(annotation.label))
    wl = task.word_level(annotation.instruction)
    iw = task.instruction_for(wl)
    if iw:
        parts.append(iw)
    if wl is not None:
        parts.append("".join(_render_piece(fields, wl) for fields in _fields_of(annotation, wl)))
    return task.separator.join(parts)


def _fields_of(annotation: Annotation, wl: WordLevel) -> Iterable[Tuple[str, ...]]:
    if wl.is_pair:
        for m in getattr(annotation, wl.kind):
            yield (m.label, m.text)
    else:
        for rel in getattr(annotation, wl.kind):
            if len(rel.args) != wl.arity - 1:
                raise ValueError(
                    f"{wl.kind} need {wl.arity - 1} arguments, got {len(rel.args)}: {rel.args!r}"
                )
            args = list(rel.args)
            args.insert(wl.label_position, rel.label)
            yield tuple(args)


def _render_piece(fields: Tuple[str, ...], wl: WordLevel) -> str:
    for i, value in enumerate(fields):
        if not value:
            raise ValueError(f"empty field in {wl.kind} piece {fields!r}")
    label = fields[0] if wl.is_pair else fields[wl.label_position]
    if any(c in label for c in ":;：；<>"):
        raise ValueError(f"{wl.kind} label {label!r} holds a delimiter")
    if wl.is_pair:
        return pair_marker(fields[0]) + fields[1]
    return ":" + ";".join(fields) + ":"


@dataclass
class ParseResult:
    annotation: Annotation
    problems: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def parse_output(output: str, task: Task, text: Optional[str] = None) -> ParseResult:
    """Read a generated (or gold) output string. Never raises."""
    problems: List[str] = []
    ann = Annotation(text=text, task=task.name)
    if not isinstance(output, str):
        problems.append(f"output is not a string: {type(output).__name__}")
    wl, rest = _word_level_part(output if isinstance(output, str) else "", task, ann, problems)
    if wl is None:
        if rest:
            problems.append(f"dropped text after the output: {rest[:40]!r}")
        return ParseResult(ann, problems)
    if not rest or (task.null_marker and rest == task.null_marker):
        return ParseResult(ann, problems)
    if wl.is_pair:
        items = _parse_pairs(rest, wl, task, text, problems)
        setattr(ann, wl.kind, [Mention(label, span) for label, span in items])
    else:
        tuples = _parse_tuples(rest, wl, task, text, problems)
        setattr(ann, wl.kind, [Relation(label, args) for label, args in tuples])
    return ParseResult(ann, problems)


def _word_level_part(
    output: str, task: Task, ann: Annotation, problems: List[str]
) -> Tuple[Optional[WordLevel], str]:
    """(the word level, the pieces' part of `output`, stripped), with the
    text label and the instruction read into `ann`. The part is a suffix of
    `output.rstrip()`."""
    rest = _parse_text_label(output.strip(), task, ann, problems)
    wl, rest = _parse_instruction(rest, task, ann, problems)
    return wl, rest.strip()


def _parse_text_label(rest: str, task: Task, ann: Annotation, problems: List[str]) -> str:
    if not task.text_labels:
        return rest
    for label in sorted(task.text_labels, key=len, reverse=True):
        marker = label_marker(label)
        if rest.startswith(marker):
            ann.label = label
            return rest[len(marker) :]
    match = _TEXT_LABEL.match(rest)
    if match:
        problems.append(f"unknown text label {match.group(1)!r}")
        return rest[match.end() :]
    problems.append("missing text label")
    return rest


def _parse_instruction(
    rest: str, task: Task, ann: Annotation, problems: List[str]
) -> Tuple[Optional[WordLevel], str]:
    rest = rest.lstrip()
    if task.separator and rest.startswith(task.separator):
        rest = rest[len(task.separator) :].lstrip()
    instructions = sorted(task.instructions, key=len, reverse=True)
    found = next((iw for iw in instructions if rest.startswith(iw)), None)
    if found is None:
        # Junk before the instruction word: skip it, but say so.
        hits = [(rest.find(iw), iw) for iw in instructions if iw in rest]
        if hits:
            pos, found = min(hits)
            problems.append(f"dropped text before the instruction word: {rest[:pos][:40]!r}")
            rest = rest[pos:]
    if found is not None:
        # Annotations name their instruction only where the task has a choice.
        ann.instruction = found if len(task.instructions) > 1 else None
        return (task.word_level(found) if task.word_levels else None), rest[len(found) :]
    if task.instructions:
        problems.append("missing instruction word")
    # Without an instruction word, read the rest as the default word level.
    return (task.word_level() if task.word_levels else None), rest


@lru_cache(maxsize=256)
def _delims(fullwidth: bool) -> Tuple[str, str]:
    return ("[:：]", "[;；]") if fullwidth else (":", ";")


@lru_cache(maxsize=256)
def _label_alternation(labels: Tuple[str, ...]) -> str:
    return "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))


@lru_cache(maxsize=256)
def _pair_anchor(labels: Tuple[str, ...], fullwidth: bool) -> "re.Pattern[str]":
    colon, semi = _delims(fullwidth)
    if labels:
        return re.compile(f"{colon}({_label_alternation(labels)}){semi}")
    return re.compile(f"{colon}([^:;：；<>]+?){semi}")


@lru_cache(maxsize=256)
def _stray_piece(fullwidth: bool) -> "re.Pattern[str]":
    colon, semi = _delims(fullwidth)
    return re.compile(f"{colon}([^:;：；<>\\s]{{1,30}}){semi}")


def _in_text(span: str, text: Optional[str]) -> bool:
    return text is not None and span in text


def _parse_pairs(
    rest: str, wl: WordLevel, task: Task, text: Optional[str], problems: List[str]
) -> List[Tuple[str, str]]:
    return [(label, span) for _, label, span in _pair_pieces(rest, wl, task, text, problems, last=True)]


def _pair_pieces(
    rest: str, wl: WordLevel, task: Task, text: Optional[str], problems: List[str], last: bool
) -> List[Tuple[int, str, str]]:
    """(where in `rest` the piece starts, label, span) of each pair piece;
    without `last`, the last piece is left out (its span may still grow)."""
    anchors = list(_pair_anchor(wl.labels, task.fullwidth_delimiters).finditer(rest))
    if not anchors:
        problems.append(f"no {wl.kind} piece found in {rest[:40]!r}")
        return []
    if anchors[0].start() > 0:
        problems.append(f"dropped text before the first piece: {rest[: anchors[0].start()][:40]!r}")
    items: List[Tuple[int, str, str]] = []
    for i, anchor in enumerate(anchors if last else anchors[:-1]):
        end = anchors[i + 1].start() if i + 1 < len(anchors) else len(rest)
        span = rest[anchor.end() : end]
        if wl.labels and not _in_text(span, text):
            # A piece with an unknown label looks like `:Foo;bar` inside the span.
            stray = _stray_piece(task.fullwidth_delimiters).search(span)
            if stray and stray.start() > 0:
                problems.append(f"dropped piece with unknown label: {span[stray.start():][:40]!r}")
                span = span[: stray.start()]
        if not span:
            problems.append(f"empty span for label {anchor.group(1)!r}")
            continue
        items.append((anchor.start(), anchor.group(1), span))
    return items


def complete_pair_pieces(output: str, task: Task, text: Optional[str] = None) -> List[Tuple[int, str, str]]:
    """The pair pieces (entities, sentiment words) of an output still being
    generated, each as (where it starts in `output`, label, span), the span
    as `parse_output` reads it: every piece but the last, whose span may
    still grow. Empty for outputs without pair pieces (relations, events,
    no instruction word yet)."""
    if not isinstance(output, str):
        return []
    problems: List[str] = []
    wl, rest = _word_level_part(output, task, Annotation(task=task.name), problems)
    if wl is None or not wl.is_pair or not rest:
        return []
    # `rest` ends where the stripped output does (it is a suffix of it)
    offset = len(output.rstrip()) - len(rest)
    return [(offset + start, label, span) for start, label, span in _pair_pieces(rest, wl, task, text, problems, last=False)]


def _split_fields(part: str, count: int, semi: str, text: Optional[str]) -> Optional[List[str]]:
    """`part` split into exactly `count` non-empty fields, or None.

    Fields may hold the delimiter themselves; when there are more delimiters
    than cuts, the reading whose fields all occur in `text` wins, and without
    such a reading the part is not guessed at."""
    if count == 0:
        return [] if part == "" else None
    # Past MAX_FIELD_CUTS delimiters the part is not guessed at: stop looking.
    limit = max(count - 1, MAX_FIELD_CUTS) + 1
    positions = [(m.start(), m.end()) for m in islice(re.finditer(semi, part), limit)]
    if len(positions) < count - 1:
        return None
    if len(positions) == count - 1:
        choices: Iterable[Tuple[Tuple[int, int], ...]] = [tuple(positions)]
    elif text is None or len(positions) > MAX_FIELD_CUTS:
        return None
    else:
        choices = combinations(positions, count - 1)
    for cuts in choices:
        fields, start = [], 0
        for cut_start, cut_end in cuts:
            fields.append(part[start:cut_start])
            start = cut_end
        fields.append(part[start:])
        if all(fields) and (len(positions) == count - 1 or all(f in text for f in fields)):  # type: ignore[operator]
            return fields
    return None


def _parse_tuples(
    rest: str, wl: WordLevel, task: Task, text: Optional[str], problems: List[str]
) -> List[Tuple[str, Tuple[str, ...]]]:
    colon, semi = _delims(task.fullwidth_delimiters)
    n_head, n_tail = wl.label_position, wl.arity - wl.label_position - 1
    if not wl.labels:
        return _parse_tuples_unanchored(rest, wl, colon, semi, problems)
    left = semi if n_head else colon
    right = semi if n_tail else colon
    anchor = re.compile(f"(?<={left})({_label_alternation(wl.labels)})(?={right})")
    labels = list(anchor.finditer(rest))
    if not labels:
        problems.append(f"no {wl.kind} piece found in {rest[:40]!r}")
        return []

    def head_of(region: str) -> Optional[List[str]]:
        # region = ":" + head fields + ";"   (or just ":" when the label is first)
        m = re.match(colon, region)
        if not m:
            return None
        body = region[m.end() :]
        if n_head:
            if not re.search(f"{semi}$", body):
                return None
            body = body[:-1]
        return _split_fields(body, n_head, semi, text)

    def tail_of(region: str) -> Optional[List[str]]:
        # region = ";" + tail fields + ":"   (or just ":" when the label is last)
        if not re.search(f"{colon}$", region):
            return None
        body = region[:-1]
        if n_tail:
            m = re.match(semi, body)
            if not m:
                return None
            body = body[m.end() :]
        return _split_fields(body, n_tail, semi, text)

    def score(fields: Sequence[str]) -> int:
        return sum(_in_text(f, text) for f in fields)

    # Between two labels lies `tail_i ":" ":" head_i+1`; try every `::`.
    found = problems
    problems = []
    heads: List[Optional[List[str]]] = [None] * len(labels)
    tails: List[Optional[List[str]]] = [None] * len(labels)
    first = rest[: labels[0].start()]
    heads[0] = _best_head(first, head_of, colon, problems)
    for i in range(len(labels) - 1):
        region = rest[labels[i].end() : labels[i + 1].start()]
        best: Optional[Tuple[int, List[str], List[str]]] = None
        for cut in _colon_cuts(region, colon):
            tail, head = tail_of(region[:cut]), head_of(region[cut:])
            if tail is not None and head is not None:
                s = score(tail) + score(head)
                if best is None or s > best[0]:
                    best = (s, tail, head)
        if best is not None:
            tails[i], heads[i + 1] = best[1], best[2]
        else:
            tails[i] = _best_tail(region, tail_of, colon)
            heads[i + 1] = _best_head(region, head_of, colon, problems=None)
            problems.append(f"unreadable text between {wl.kind} pieces: {region[:40]!r}")
    tails[-1] = tail_of(rest[labels[-1].end() :])
    out: List[Tuple[str, Tuple[str, ...]]] = []
    for label, head, tail in zip(labels, heads, tails):
        if head is None or tail is None:
            problems.append(f"broken {wl.kind} piece with label {label.group(1)!r}")
            continue
        out.append((label.group(1), tuple(head + tail)))
    if problems and len(labels) <= 40:
        # An argument may look like a label (`:発;発売;発売;発:`): a reading
        # that leaves some anchors inside arguments may parse cleanly.
        reading = _consistent_reading(rest, labels, head_of, tail_of, score, colon)
        if reading is not None:
            return reading
    found.extend(problems)
    return out


def _consistent_reading(rest, labels, head_of, tail_of, score, colon) -> Optional[List[Tuple[str, Tuple[str, ...]]]]:
    """The reading of `rest` in which every piece parses, over the choices
    of which label anchors are labels (the others, at most MAX_INNER_ANCHORS
    in a row, lie inside arguments);
    best: most fields found in the text, then most pieces. None if there is
    no such reading."""
    # best[j]: reading whose last label is anchor j -> (key, previous anchor, head_j, tail of previous)
    best: List[Optional[Tuple[Tuple[int, int], Optional[int], List[str], Optional[List[str]]]]] = []
    for j, label in enumerate(labels):
        head = head_of(rest[: label.start()])
        entry = ((score(head), 1), None, head, None) if head is not None else None
        for i in range(max(0, j - MAX_INNER_ANCHORS - 1), j):
            prev = best[i]
            if prev is None:
                continue
            region = rest[labels[i].end() : label.start()]
            for cut in _colon_cuts(region, colon):
                tail, head = tail_of(region[:cut]), head_of(region[cut:])
                if tail is not None and head is not None:
                    key = (prev[0][0] + score(tail) + score(head), prev[0][1] + 1)
                    if entry is None or key > entry[0]:
                        entry = (key, i, head, tail)
        best.append(entry)
    finals = []
    for k, entry in enumerate(best):
        tail = tail_of(rest[labels[k].end() :]) if entry is not None else None
        if entry is not None and tail is not None:
            finals.append(((entry[0][0] + score(tail), entry[0][1]), k, tail))
    if not finals:
        return None
    _, last, tail = max(finals, key=lambda f: f[0])
    pieces: List[Tuple[str, Tuple[str, ...]]] = []
    k: Optional[int] = last
    while k is not None:
        _, prev_k, head, prev_tail = best[k]  # type: ignore[misc]
        pieces.append((labels[k].group(1), tuple(head + tail)))  # type: ignore[operator]
        k, tail = prev_k, prev_tail
    return pieces[::-1]


def _colon_cuts(region: str, colon: str) -> List[int]:
    """Indices where `region` may be cut between two pieces (inside a `::`):
    the first and the last MAX_PIECE_CUTS of them, so that the work per
    region stays linear in its length."""
    cuts = [m.start() + 1 for m in re.finditer(f"(?={colon}{colon})", region)]
    if len(cuts) > 2 * MAX_PIECE_CUTS:
        cuts = cuts[:MAX_PIECE_CUTS] + cuts[-MAX_PIECE_CUTS:]
    return cuts


def _best_head(region, head_of, colon, problems) -> Optional[List[str]]:
    head = head_of(region)
    if head is not None:
        return head
    # Junk before the piece: read from the last piece boundary.
    for cut in reversed(_colon_cuts(region, colon)):
        head = head_of(region[cut:])
        if head is not None:
            if problems is not None:
                problems.append(f"dropped text before a piece: {region[:cut][:40]!r}")
            return head
    return None


def _best_tail(region, tail_of, colon) -> Optional[List[str]]:
    for cut in _colon_cuts(region, colon):
        tail = tail_of(region[:cut])
        if tail is not None:
            return tail
    return None


def _parse_tuples_unanchored(
    rest: str, wl: WordLevel, colon: str, semi: str, problems: List[str]
) -> List[Tuple[str, Tuple[str, ...]]]:
    """Tuples of a task whose labels are not known: split on the delimiters."""
    body = rest
    if not re.match(colon, body) or not re.search(f"{colon}$", body) or len(body) < 2:
        problems.append(f"{wl.kind} part is not wrapped in ':': {rest[:40]!r}")
        return []
    out: List[Tuple[str, Tuple[str, ...]]] = []
    for piece in re.split(f"{colon}{colon}", body[1:-1]):
        fields = re.split(semi, piece)
        if len(fields) != wl.arity or not all(fields):
            problems.append(f"broken {wl.kind} piece {piece[:40]!r}")
            continue
        label = fields.pop(wl.label_position)
        if any(c in label for c in ":：<>"):
            problems.append(f"broken {wl.kind} label {label[:40]!r}")
            continue
        out.append((label, tuple(fields)))
    return out


def to_pair(annotation: Annotation, task: Task) -> Tuple[str, str]:
    """(input, output) for training, both from this module."""
    if annotation.text is None:
        raise ValueError("an annotation without text cannot become a training pair")
    return build_input(annotation.text, task, annotation.instruction), render_output(annotation, task)
