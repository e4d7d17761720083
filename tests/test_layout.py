"""The package's import graph: the core stays light and below the
component, and no module imports one that (indirectly) imports it. No
code outside a backend assigns a backend's settings (they change through
`reconfigure` / `configured`, validated). And the documentation's layout: a
short README, and no relative link in README.md, docs/ or benchmarks/ that
points nowhere."""
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


# Each room holds its own work: packaging a GGUF and annotating with a
# pipeline need no training code (nor torch / transformers / peft, which
# only the training code and the backends import).
NO_TRAINING = ["spacy_giellm.packaging", "spacy_giellm.annotate", "spacy_giellm.cli.package",
               "spacy_giellm.cli.annotate"]


def _reachable(graph: Dict[str, Set[str]], module: str) -> Set[str]:
    """What `module` imports, directly or through other package modules
    (lazy imports included)."""
    seen, todo = set(), [module]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


@pytest.mark.parametrize("module", NO_TRAINING)
def test_packaging_and_annotate_import_no_training_code(module):
    graph = _import_graph()
    training = sorted(m for m in _reachable(graph, module) if m.startswith("spacy_giellm.training"))
    assert training == [], f"{module} imports {training}"


def test_reachable_sees_an_indirect_import():
    assert "spacy_giellm.training.train" in _reachable(_import_graph(), "spacy_giellm.cli.train")


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


# --------------------------------------------------------------------------
# Backend settings are never assigned from outside the backend.

ROOT = PACKAGE.parent
# Assignments to an attribute of a settings name that is no backend's:
# (file, target as written) and why.
NOT_A_BACKEND = {
    # llama.cpp's own context parameters (a ctypes struct)
    ("spacy_giellm/backends/llamacpp_batch.py", "params.n_ctx"),
    ("spacy_giellm/backends/llamacpp_batch.py", "params.n_threads"),
}


def _setting_names() -> Set[str]:
    """Every name a backend's setting is read by: the settings fields, the
    attributes that show them (`SettingAttribute`), and `settings` itself."""
    from dataclasses import fields

    from spacy_giellm.backends import hf, llamacpp, server
    from spacy_giellm.backends.settings import SettingAttribute

    names = {"settings", "_settings"}
    for backend in (hf.HFBackend, llamacpp.LlamaCppBackend, server.ServerBackend):
        names |= {f.name for f in fields(backend.settings_class)}
        names |= {attr for attr, value in vars(backend).items() if isinstance(value, SettingAttribute)}
    return names


def _targets(node: ast.AST):
    if isinstance(node, (ast.Tuple, ast.List)):
        for element in node.elts:
            yield from _targets(element)
    elif isinstance(node, ast.Starred):
        yield from _targets(node.value)
    else:
        yield node


def _is_self(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def _expects_attribute_error(node: ast.AST) -> bool:
    """`with pytest.raises(AttributeError...)` (or dataclasses'
    FrozenInstanceError): an assignment that must fail."""
    return isinstance(node, ast.With) and any(
        isinstance(item.context_expr, ast.Call) and ast.unparse(item.context_expr.func).endswith("raises")
        and item.context_expr.args
        and ast.unparse(item.context_expr.args[0]).split(".")[-1] in ("AttributeError", "FrozenInstanceError")
        for item in node.items)


def setting_assignments(source: str, names: Set[str]) -> List[str]:
    """The statements in `source` that assign a setting of an object other
    than `self` (an object's own attributes are its own business: a backend
    keeps its settings in `self._settings`): `x.name = ...` (in tuples,
    chains and augmented assignments too), `setattr(x, "name", ...)`
    (`monkeypatch.setattr`, `object.__setattr__` too), and `setattr(x,
    variable, ...)` where x is written with "backend"."""
    found: List[str] = []

    def visit(node: ast.AST) -> None:
        if _expects_attribute_error(node):
            return
        targets: List[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in (t for top in targets for t in _targets(top)):
            if isinstance(target, ast.Attribute) and target.attr in names and not _is_self(target.value):
                found.append(f"{node.lineno}: {ast.unparse(target)}")
        if isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in ("setattr", "__setattr__"):
            if len(node.args) >= 2 and not _is_self(node.args[0]):
                name = node.args[1]
                if (ast.unparse(name).strip("'\"") in names if isinstance(name, ast.Constant)
                        else "backend" in ast.unparse(node.args[0])):
                    found.append(f"{node.lineno}: {ast.unparse(node)}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def test_no_backend_setting_is_assigned_from_outside():
    """spacy_giellm/, scripts/ and tests/: settings change through
    `backend.reconfigure(dataclasses.replace(backend.settings, ...))`,
    `with backend.configured(...)` or a new backend, which validate them;
    an assignment would skip that (and raises AttributeError at run time)."""
    names = _setting_names()
    assert {"n_parallel", "jump_forward", "prompt_lookup", "constrained", "max_new_tokens", "batch_size",
            "model_path", "model_name", "settings"} <= names
    found = []
    for folder in ("spacy_giellm", "scripts", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            where = path.relative_to(ROOT).as_posix()
            for hit in setting_assignments(path.read_text(encoding="utf8"), names):
                if (where, hit.split(": ", 1)[1]) not in NOT_A_BACKEND:
                    found.append(f"{where}:{hit}")
    assert found == []


def test_setting_assignment_finder_finds_them():
    names = {"n_parallel", "prompt_lookup", "constrained", "max_new_tokens", "settings"}
    source = """
backend.n_parallel = 1
backend.n_parallel, backend.prompt_lookup = saved
hf.constrained = gguf.constrained = True
self.backend.max_new_tokens += 1
backend.settings = other
setattr(backend, "constrained", True)
monkeypatch.setattr(backend, "n_parallel", 2)
setattr(self.backend, attr, n)
self.n_parallel = 1
setattr(self, "n_parallel", 1)
setattr(ann, kind, items)
with pytest.raises(AttributeError):
    backend.n_parallel = 1
"""
    assert [hit.split(":")[0] for hit in setting_assignments(source, names)] == \
        ["2", "3", "3", "4", "4", "5", "6", "7", "8", "9"]
