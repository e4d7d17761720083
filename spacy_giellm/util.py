"""Small helpers shared across the package: atomic output files.

    with atomic_path("out.jsonl") as tmp:       # write tmp any way you like
        with open(tmp, "w", encoding="utf8") as f:
            ...
    atomic_write_text("scores.json", text)

The temporary file sits beside the target (same file system, so the rename
is atomic) and is created with mode 0666 minus the umask, as `open()` would
create the target itself (`tempfile.mkstemp` makes 0600 files, which a
shared corpus must not be). The target is replaced only when the block ends
without an error; otherwise the temporary file is removed and the target is
left as it was.
"""
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, Path]


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A new empty file beside `path` to write; it replaces `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            # O_EXCL: never reuse someone else's file; 0o666: the umask applies.
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf8") -> None:
    """Write `text` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
