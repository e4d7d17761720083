"""For the view and annotate tests: a real pipeline (blank Japanese +
giellm pipes) whose backend answers each prompt from a table, so that the
component itself makes Docs with entities, sentiment words, relations and
events; and a strict check of an HTML page's markup."""
from html.parser import HTMLParser
from typing import Dict, List, Optional, Tuple

import spacy

from spacy_giellm import Annotation, Mention, Relation, build_input, get_task, render_output
from spacy_giellm.registry import giellm_backends

_TABLES: Dict[str, Tuple[Dict[str, str], str]] = {}


class TableBackend:
    def __init__(self, table: Dict[str, str], default: str):
        self.table = table
        self.default = default

    def generate(self, prompts: List[str]) -> List[str]:
        return [self.table.get(p, self.default) for p in prompts]


@giellm_backends.register("test.Table.v1")
def make_table_backend(table: str) -> TableBackend:
    return TableBackend(*_TABLES[table])


CAR = "トヨタは日産と電池の共同開発で提携した。"
HOTEL = "部屋が広くてスタッフの対応も丁寧でした。"
SCRIPT = "<script>alert(1)</script>と&amp;は文字。"

# pipe name -> (task, instruction, {text: annotation})
PIPES = {
    "giellm_topic": ("scnm", None, {
        CAR: Annotation(label="技術", entities=[Mention("法人名", "トヨタ"), Mention("法人名", "日産")]),
        SCRIPT: Annotation(label="学問", entities=[Mention("製品名", "<script>")]),
    }),
    "giellm_sentiment": ("scpos-rw", None, {
        HOTEL: Annotation(label="positive", sentiments=[Mention("positive", "広く"), Mention("positive", "丁寧")]),
    }),
    "giellm_relations": ("tcree", "Relation Extraction", {
        CAR: Annotation(label="IT", instruction="Relation Extraction", relations=[Relation("提携", ("トヨタ", "日産"))]),
        SCRIPT: Annotation(label="IT", instruction="Relation Extraction",
                           relations=[Relation("含む&\"x\"", ("<script>", "alert(1)"))]),
    }),
    "giellm_events": ("tcree", "Event Extraction", {
        CAR: Annotation(label="IT", instruction="Event Extraction",
                        events=[Relation("提携", ("トヨタ", "電池の共同開発", "ホンダ"))]),
    }),
}


def build_pipeline(extra_outputs: Optional[Dict[str, Dict[str, str]]] = None) -> spacy.language.Language:
    """The pipeline: one giellm pipe per entry of PIPES. A text a pipe has
    no annotation for gets its task's first label and nothing else.
    `extra_outputs`: per pipe, raw outputs by text (e.g. malformed ones)."""
    nlp = spacy.blank("ja")
    for name, (task_name, instruction, annotations) in PIPES.items():
        task = get_task(task_name)
        table = {build_input(text, task, instruction): render_output(ann, task) for text, ann in annotations.items()}
        for text, output in ((extra_outputs or {}).get(name) or {}).items():
            table[build_input(text, task, instruction)] = output
        nothing = render_output(Annotation(label=task.text_labels[0], instruction=instruction), task)
        _TABLES[name] = (table, nothing)
        nlp.add_pipe("giellm", name=name, config={
            "task": task_name, "instruction": instruction, "alignment_mode": "expand",
            "backend": {"@giellm_backends": "test.Table.v1", "table": name},
        })
    return nlp


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class MarkupCheck(HTMLParser):
    """Every start tag closed in order (void elements excepted), the text
    as a reader sees it, and the tags found."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: List[str] = []
        self.errors: List[str] = []
        self.tags: List[str] = []
        self.text: List[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            self.errors.append(f"end tag for void element {tag!r} at {self.getpos()}")
        elif not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> at {self.getpos()} closes {self.stack[-1:]}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def check_markup(markup: str) -> MarkupCheck:
    """The parsed markup; asserts it is well formed."""
    check = MarkupCheck()
    check.feed(markup)
    check.close()
    assert check.errors == [], check.errors[:5]
    assert check.stack == [], f"left open: {check.stack}"
    return check
