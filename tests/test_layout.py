"""The package's import graph: the core stays light and below the
component, and no module imports one that (indirectly) imports it. And the
documentation's layout: a short README, and no relative link in README.md,
docs/ or benchmarks/ that points nowhere."""
import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).parent.parent / "spacy_giellm"

CORE = [
    "spacy_giellm.tasks",
    "spacy_giellm.format",
    "spacy_giellm.annotation",
    "spacy_giellm.align",
    "spacy_giellm.scoring",
    "spacy_giellm.docs",
    "spacy_giellm.corpora",
    "spacy_giellm.visualize",
]
HEAVY_OR_ABOVE = ["torch", "transformers", "llama_cpp", "typer", "spacy_giellm.component"]


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_nothing_heavy_nor_above_it(module):
    # spaCy itself brings typer (its CLI) and, through thinc, torch where it
    # is installed: what counts is what the module adds to that.
    code = (
        "import sys, importlib, spacy; before = set(sys.modules);"
        f"importlib.import_module({module!r});"
        f"print([m for m in {HEAVY_OR_ABOVE!r} if m in sys.modules and m not in before])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"importing {module} imports {out.stdout.strip()}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph() -> Dict[str, Set[str]]:
    """module -> the package modules it imports (at any depth of its code,
    lazy imports inside functions included)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        deps: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf8"))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")
                    base = base[: len(base) - node.level + (1 if is_package else 0)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # `from . import x` may name a module
                targets = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
            for target in targets:
                # the module itself, else the nearest package of the package holding it
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("spacy_giellm"):
                    deps.add(target)
        graph[name] = deps
    return graph


def _cycle(graph: Dict[str, Set[str]]) -> List[str]:
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def _ancestors(module: str) -> Set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_import_cycle_among_package_modules():
    graph = _import_graph()
    assert "spacy_giellm.component" in graph and "spacy_giellm.corpora.jsonl" in graph
    # a module's own packages run first when it is imported: that arrow is not a cycle
    graph = {name: {d for d in deps if d not in _ancestors(name)} for name, deps in graph.items()}
    assert _cycle(graph) == []


ABOVE_CORE = ("spacy_giellm.component", "spacy_giellm.cli", "spacy_giellm.commands_", "spacy_giellm.training",
              "spacy_giellm.backends", "spacy_giellm.bench")


def test_no_arrow_from_core_up():
    """Not even a lazy import inside a function: the core's (transitive)
    imports stay in the core."""
    graph = _import_graph()
    for module in CORE + [m for m in graph if m.startswith("spacy_giellm.corpora.")]:
        seen, todo = set(), [module]
        while todo:
            for dep in graph[todo.pop()] - seen:
                seen.add(dep)
                todo.append(dep)
        assert not [m for m in seen if m.startswith(ABOVE_CORE)], f"{module} imports {sorted(seen)}"


def test_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


# The documentation: a short README for users, the rest in docs/ and benchmarks/.

ROOT = PACKAGE.parent
README_MAX_LINES = 300
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _markdown_files() -> List[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "benchmarks").glob("*.md"))


def _outside_code(text: str) -> str:
    """The text less fenced blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(path: Path) -> Set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens;
    a repeated heading gets -1, -2, ..."""
    seen: Dict[str, int] = {}
    anchors = set()
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf8"), flags=re.S | re.M)
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _relative_links(path: Path) -> List[str]:
    return [t for t in _LINK.findall(_outside_code(path.read_text(encoding="utf8")))
            if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_readme_is_short():
    n = len((ROOT / "README.md").read_text(encoding="utf8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move detail into docs/ or benchmarks/"


def test_every_relative_link_in_the_docs_resolves():
    files = _markdown_files()
    assert len(files) > 10 and (ROOT / "docs" / "architecture.md") in files
    broken = []
    n_links = 0
    for path in files:
        for target in _relative_links(path):
            n_links += 1
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert n_links > 50  # the check reads the links it should
    assert broken == []


def test_link_checker_sees_a_broken_link_and_an_anchor(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A `b` (c)\n\n[x](missing.md) ![pic](p.md#a-b-c) `[no](code.md)`\n```\n[no](fence.md)\n```\n",
                    encoding="utf8")
    assert _relative_links(page) == ["missing.md", "p.md#a-b-c"]
    assert _anchors(page) == {"a-b-c"}
