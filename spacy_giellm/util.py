"""Small helpers shared across the package: atomic output files and dirs,
a file's SHA-256 (`file_sha256`), and what the machine has and is doing
(`cpuinfo`, `busy_cores`).

    with atomic_path("out.jsonl") as tmp:       # write tmp any way you like
        with open(tmp, "w", encoding="utf8") as f:
            ...
    atomic_write_text("scores.md", text)
    atomic_write_json("scores.json", data)      # indented, UTF-8, final newline
    with atomic_dir("model") as tmp:            # a new empty directory to fill
        model.save_pretrained(tmp)

The temporary file sits beside the target (same file system, so the rename
is atomic) and is created with mode 0666 minus the umask, as `open()` would
create the target itself (`tempfile.mkstemp` makes 0600 files, which a
shared corpus must not be); a target that exists keeps its mode, as it would
when `open()` rewrites it. The target is replaced only when the block ends
without an error; otherwise the temporary file is removed and the target is
left as it was. Under `signals_end_the_run` (every command has it) SIGTERM
and SIGHUP are such errors too.
"""
import hashlib
import json
import os
import secrets
import shutil
import signal
import stat
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

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
        try:
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))  # a 0600 file stays 0600
        except FileNotFoundError:
            pass
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf8") -> None:
    """Write `text` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def atomic_write_json(path: PathLike, data: Any) -> None:
    """`data` as indented JSON (non-ASCII kept, final newline), atomically."""
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


@contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """A new empty directory beside `path` to fill; it replaces `path` (and
    all it held) when the block ends without an error, otherwise it is
    removed and `path` is left as it was. Between the two renames that swap
    them `path` is briefly missing, never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            tmp.mkdir()
            break
        except FileExistsError:
            continue
    old = tmp.with_name(tmp.name[: -len(".tmp")] + ".old")
    try:
        yield tmp
        if path.exists():
            path.rename(old)
        try:
            tmp.rename(path)
        except BaseException:
            if old.exists() and not path.exists():
                old.rename(path)  # put the previous one back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def file_sha256(path: PathLike) -> str:
    """SHA-256 hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def signals_end_the_run() -> Iterator[None]:
    """SIGTERM and SIGHUP end the block as Ctrl-C does, by an exception
    (SystemExit, code 128 + the signal), so that `finally` blocks run:
    temporary files are removed, child processes stopped. By default they
    end the process at once, leaving both behind. Only in the main thread
    (where Python handles signals); elsewhere the block just runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


CPUINFO = "/proc/cpuinfo"


def cpuinfo(path: str = CPUINFO) -> Optional[List[Dict[str, str]]]:
    """/proc/cpuinfo (Linux) as one {field: value} dict per block (x86: a
    block per logical CPU; ARM: per CPU, plus a block of shared fields), or
    None where it cannot be read (macOS, Windows)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    blocks = []
    for chunk in text.split("\n\n"):
        fields: Dict[str, str] = {}
        for line in chunk.splitlines():
            key, colon, value = line.partition(":")
            if colon:
                fields[key.strip()] = value.strip()
        if fields:
            blocks.append(fields)
    return blocks


def busy_cores(interval: float = 0.3) -> float:
    """How many cores' worth of work other processes are doing now: the
    busy share of all CPUs over `interval` seconds (/proc/stat) times their
    number; where /proc/stat cannot be read, the 1-minute load average. Not
    the load average first: it lags a minute, so a run started just after
    another job would read the finished job as load."""
    def sample():
        with open("/proc/stat", encoding="ascii") as f:
            lines = f.read().splitlines()
        fields = [int(x) for x in lines[0].split()[1:9]]  # all CPUs: user ... steal
        cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
        return sum(fields), fields[3] + fields[4], cpus  # idle + iowait

    try:
        total0, idle0, cpus = sample()
        time.sleep(interval)
        total1, idle1, _ = sample()
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average (Windows)
            return 0.0
    ticks = total1 - total0
    return cpus * (ticks - (idle1 - idle0)) / ticks if ticks > 0 else 0.0
