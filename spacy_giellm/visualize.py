"""displaCy views of what the `giellm` component writes on a Doc, and one
HTML page for many Docs.

- entities: `displacy.render(entity_data(doc), style="ent", manual=True)`
- sentiment words (`doc.spans["giellm_sentiment"]`, label = polarity):
  `sentiment_data(doc)`, displaCy's `span` style
- relations and events (`doc._.relations`, `doc._.events`):
  `tuple_data(doc, "relations")`, displaCy's `dep` style: the arguments are
  the words (in text order; an argument the model wrote but that is not in
  the text comes last, tagged "not in text"), a relation is an arc from its
  head to its tail labelled with the relation; an event is its label as a
  trigger word with an arc to each argument, labelled with the task's role
  names (else `arg1`, `arg2`, ...).

The data are safe to render: displaCy escapes some fields itself and
writes others into the markup as they are (dep tags and arc labels, entity
and span labels); those are escaped here, so a text holding `<script>`
stays text. `page_head`, `doc_section`, `page_tail` make the page that
`annotate --html` writes. Pure spaCy: no backend, torch or CLI.
"""
import html
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from spacy.tokens import Doc, Span

from .docs import ENTITY_GROUP, SENTIMENT_GROUP, TUPLE_KINDS, get_tuples

NOT_IN_TEXT = "not in text"
TRIGGER_TAG = "event"
POLARITY_COLORS = {"positive": "#9be8a6", "negative": "#f7a6a6", "neutral": "#d6d6d6"}


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def entity_data(doc: Doc, ents: Optional[Iterable[Span]] = None) -> Dict[str, Any]:
    """displaCy's manual `ent` data for `ents` (default `doc.ents`).
    displaCy escapes the text but not the labels: they are escaped here."""
    spans = list(doc.ents if ents is None else ents)
    return {
        "text": doc.text,
        "ents": [{"start": s.start_char, "end": s.end_char, "label": _esc(s.label_)} for s in spans],
        "title": None,
    }


def sentiment_data(doc: Doc, group: str = SENTIMENT_GROUP) -> Dict[str, Any]:
    """displaCy's manual `span` data for the sentiment words (label =
    polarity). Its "tokens" are the pieces of the text between span
    boundaries, not the Doc's tokens: displaCy writes a space after each
    token, which would split a Japanese text at every word. displaCy
    escapes the tokens but not the labels: they are escaped here."""
    spans = list(doc.spans[group]) if group in doc.spans else []
    cuts = sorted({0, len(doc.text), *(s.start_char for s in spans), *(s.end_char for s in spans)})
    piece = {at: i for i, at in enumerate(cuts)}
    return {
        "text": doc.text,
        "tokens": [doc.text[a:b] for a, b in zip(cuts, cuts[1:])],
        "spans": [
            {"start_token": piece[s.start_char], "end_token": piece[s.end_char], "label": _esc(s.label_)}
            for s in spans
        ],
    }


# A word of the dep view: where it sorts, its text and its tag.
_Word = Tuple[Tuple[int, int, int], str, str]


def tuple_data(doc: Doc, kind: str = "relations", roles: Sequence[str] = ()) -> Dict[str, Any]:
    """displaCy's manual `dep` data for the relations or events (`kind`) of
    `doc` (see the module docstring). `roles`: the names of an event's
    arguments (the task's `roles`), else `arg1`, `arg2`, ...

    An argument found in the text is one word however many relations name
    it; its tag is its entity label where an entity has the same offsets.
    An arc from a word to itself (a relation whose head is its tail) cannot
    be drawn and is left out; `tuple_lines` lists every record."""
    if kind not in TUPLE_KINDS:
        raise ValueError(f"kind must be one of {TUPLE_KINDS}, got {kind!r}")
    records = get_tuples(doc, kind)
    entity_labels = _entity_labels(doc)
    words: Dict[Any, _Word] = {}

    def arg_word(text: str, offsets: Optional[Tuple[int, int]]) -> Any:
        key: Any = ("span", *offsets) if offsets is not None else ("string", text)
        if key not in words:
            if offsets is not None:
                tag = entity_labels.get(offsets, "")
                words[key] = ((0, offsets[0], offsets[1]), doc.text[offsets[0] : offsets[1]], tag)
            else:
                words[key] = ((1, len(words), 0), text, NOT_IN_TEXT)
        return key

    arcs: List[Tuple[Any, Any, str]] = []
    for n, rel in enumerate(records):
        keys = [arg_word(a, rel.offsets[i] if i < len(rel.offsets) else None) for i, a in enumerate(rel.args)]
        if kind == "relations":
            arcs.extend((keys[0], key, rel.label) for key in keys[1:])
        else:
            trigger = ("trigger", n)
            words[trigger] = (_trigger_place(doc.text, rel), rel.label, TRIGGER_TAG)
            names = list(roles) + [f"arg{i + 1}" for i in range(len(roles), len(keys))]
            arcs.extend((trigger, key, names[i]) for i, key in enumerate(keys))
    order = sorted(words, key=lambda k: words[k][0])
    index = {key: i for i, key in enumerate(order)}
    return {
        # displaCy escapes a word's text itself, not its tag
        "words": [{"text": words[k][1], "tag": _esc(words[k][2])} for k in order],
        "arcs": [
            {"start": min(index[a], index[b]), "end": max(index[a], index[b]), "label": _esc(label),
             "dir": "right" if index[a] < index[b] else "left"}
            for a, b, label in arcs
            if index[a] != index[b]
        ],
    }


def _trigger_place(text: str, rel: Any) -> Tuple[int, int, int]:
    """Where an event's trigger sorts: where its label occurs in the text
    after its first argument, else right after that argument (the order
    of the format, `:a;Label;b;c:`), else among the strings at the end."""
    first = rel.offsets[0] if rel.offsets else None
    if first is None:
        return (1, -1, 0)
    at = text.find(rel.label, first[1])
    return (0, at, at + len(rel.label)) if at >= 0 else (0, first[1], first[1])


def _entity_labels(doc: Doc) -> Dict[Tuple[int, int], str]:
    spans = list(doc.spans[ENTITY_GROUP]) if ENTITY_GROUP in doc.spans else []
    return {(s.start_char, s.end_char): s.label_ for s in [*doc.ents, *spans]}


def tuple_lines(doc: Doc, kind: str) -> List[str]:
    """Every relation or event as a line of text (not escaped):
    `label: arg1 | arg2 (not in text)`."""
    out = []
    for rel in get_tuples(doc, kind):
        args = [
            a + ("" if i < len(rel.offsets) and rel.offsets[i] is not None else f" ({NOT_IN_TEXT})")
            for i, a in enumerate(rel.args)
        ]
        out.append(f"{rel.label}: {' | '.join(args)}")
    return out


def render(data: Union[Mapping[str, Any], Sequence[Mapping[str, Any]]], style: str, **options: Any) -> str:
    """displaCy's markup for manual data (`entity_data`, `sentiment_data`,
    `tuple_data`), without a page around it."""
    from spacy import displacy

    if style == "dep":
        options = {"compact": True, "distance": 110, "word_spacing": 30, **options}
    if style == "span":
        colors = {_esc(k): v for k, v in POLARITY_COLORS.items()}
        options = {"colors": colors, **options}
    return displacy.render(data, style=style, manual=True, page=False, jupyter=False, options=options)


PAGE_STYLE = """
body { font-family: "Noto Sans CJK JP", "Hiragino Sans", "Yu Gothic", sans-serif; margin: 2em; color: #222; }
section.doc { border-top: 1px solid #ccc; padding: 1em 0; }
h2 { font-size: 1em; color: #555; margin: 0 0 .5em; }
h3 { font-size: .85em; color: #777; margin: .8em 0 .2em; text-transform: uppercase; letter-spacing: .05em; }
.text { font-size: 1.1em; margin: 0 0 .5em; }
ul.cats { list-style: none; padding: 0; margin: 0; }
ul.cats li { display: flex; align-items: center; font-size: .9em; margin: 2px 0; }
ul.cats .label { width: 8em; }
ul.cats .bar { background: #7aa6e8; height: .8em; margin-right: .5em; }
ul.cats .score, ul.cats .rest { color: #777; }
ul.lines { margin: .3em 0; font-size: .9em; }
.problems { color: #a33; font-size: .9em; }
.figure { overflow-x: auto; }
"""


def page_head(title: str = "giellm annotations") -> str:
    """The start of the page `doc_section`s go into."""
    return (
        "<!DOCTYPE html>\n<html lang=\"ja\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{_esc(title)}</title>\n<style>{PAGE_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{_esc(title)}</h1>\n"
    )


def page_tail() -> str:
    return "</body>\n</html>\n"


def cats_html(cats: Mapping[str, float], most: int = 8, least: float = 0.01) -> str:
    """`doc.cats` as a small bar list, highest first: the labels scoring
    `least` or more (at most `most`), then how many are left out."""
    rows = sorted(cats.items(), key=lambda kv: -kv[1])
    shown = [(label, score) for label, score in rows if score >= least][:most]
    items = "".join(
        f'<li><span class="label">{_esc(label)}</span>'
        f'<span class="bar" style="width: {max(0.0, min(1.0, float(score))) * 12:.2f}em"></span>'
        f'<span class="score">{float(score):.3f}</span></li>'
        for label, score in shown
    )
    if len(rows) > len(shown):
        items += f'<li class="rest">{len(rows) - len(shown)} more, {float(rows[len(shown)][1]):.3f} or less</li>'
    return f'<ul class="cats">{items}</ul>'


def doc_section(
    doc: Doc, title: str = "", roles: Optional[Mapping[str, Sequence[str]]] = None,
    problems: Sequence[str] = (),
) -> str:
    """One Doc on the page: its text, cats as bars, entities, sentiment
    words, relations and events (drawn, and listed as lines), and any parse
    problems. `roles`: per kind, the argument names (`tuple_data`)."""
    parts = [f'<section class="doc">\n<h2>{_esc(title)}</h2>\n<p class="text">{_esc(doc.text)}</p>\n']
    if doc.cats:
        parts.append(f"<h3>cats</h3>\n{cats_html(doc.cats)}\n")
    if doc.ents:
        parts.append(f'<h3>entities</h3>\n<div class="figure">{render(entity_data(doc), "ent")}</div>\n')
    if SENTIMENT_GROUP in doc.spans and len(doc.spans[SENTIMENT_GROUP]):
        parts.append(f'<h3>sentiment</h3>\n<div class="figure">{render(sentiment_data(doc), "span")}</div>\n')
    for kind in TUPLE_KINDS:
        lines = tuple_lines(doc, kind)
        if not lines:
            continue
        data = tuple_data(doc, kind, (roles or {}).get(kind, ()))
        parts.append(f"<h3>{kind}</h3>\n")
        if data["arcs"]:
            parts.append(f'<div class="figure">{render(data, "dep")}</div>\n')
        parts.append('<ul class="lines">' + "".join(f"<li>{_esc(line)}</li>" for line in lines) + "</ul>\n")
    if problems:
        parts.append(
            '<h3>problems</h3>\n<ul class="lines problems">'
            + "".join(f"<li>{_esc(p)}</li>" for p in problems) + "</ul>\n"
        )
    parts.append("</section>\n")
    return "".join(parts)


def render_page(docs: Iterable[Doc], title: str = "giellm annotations", **section: Any) -> str:
    """One HTML page for `docs` (see `doc_section`)."""
    body = "".join(doc_section(doc, f"#{i + 1}", **section) for i, doc in enumerate(docs))
    return page_head(title) + body + page_tail()


__all__ = [
    "entity_data", "sentiment_data", "tuple_data", "tuple_lines", "render", "cats_html",
    "doc_section", "page_head", "page_tail", "render_page", "NOT_IN_TEXT", "TRIGGER_TAG",
]
