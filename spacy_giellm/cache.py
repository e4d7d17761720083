"""An on-disk cache of the model's responses (`giellm.cache.v1`), so that
re-running a pipeline or an evaluation skips the model for prompts it has
already answered.

A response (the output string and the text-label scores, or None) is stored
under the SHA-256 of everything that decides it:

* the model's identity, from the backend (`backends.base.ModelIdentity`):
  the SHA-256 of a GGUF file, of a local transformers directory's files, of
  an adapter's, or a hub id with the commit loaded; or, for a backend that
  cannot tell (the server), the `model_identity` the cache config declares;
* the backend's settings that change outputs, even by float rounding
  (`generation_settings`: every field its settings mark OUTPUTS, as
  max_new_tokens, constrained, jump_forward, prompt_lookup, n_parallel,
  batch_size, dtype, device, n_ctx; and the library versions);
* the task definition (`Task.to_dict`) and the Instruction Word;
* whether label scores are asked for;
* the prompt.

A changed model file or setting makes a new key: it misses, never returns a
stale answer. What the key leaves out on purpose: the settings that change
speed only, with the same outputs (thread counts, timeouts...). Rows stored
before the settings' OUTPUTS fields joined the key (n_parallel,
prompt_lookup, jump_forward, batch_size) simply miss.

The store is sqlite3 (standard library) in WAL mode with a busy timeout:
readers never block, and writers from several processes (`nlp.pipe(...,
n_process=N)`) take turns. Each process opens its own connection (a forked
child never uses its parent's; the cache pickles without it). File hashes
are remembered in the same database, keyed by (real path, size, mtime_ns,
ctime_ns, inode), so a 300 MB GGUF is hashed once, not on every run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from spacy.util import registry

from .util import file_sha256

__all__ = ["ResponseCache", "CacheError", "Response", "make_response_cache", "context_digest", "response_key"]

logger = logging.getLogger("spacy_giellm")

# Part of every key: a change to what a key covers or how a response is
# stored gets a new version, and old rows simply miss.
KEY_VERSION = "giellm.cache.v1"

# (output, label scores or None)
Response = Tuple[str, Optional[Dict[str, float]]]
PathLike = Union[str, Path]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS prompt_tokens (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS file_hashes (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
    "mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, sha256 TEXT NOT NULL)",
)
# sqlite's limit on host parameters is 999 in old builds
_CHUNK = 500


class CacheError(ValueError):
    """The cache cannot be used as configured (unidentifiable model, bad file)."""


def _canonical(data: Any) -> str:
    try:
        return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise CacheError(f"giellm cache: a key part is not plain JSON data ({e}): {data!r}") from e


def context_digest(context: Dict[str, Any]) -> str:
    """SHA-256 of everything but the prompt that decides a response."""
    return hashlib.sha256(_canonical({"version": KEY_VERSION, **context}).encode("utf8")).hexdigest()


def response_key(digest: str, prompt: str) -> str:
    """The key of `prompt`'s response under a context digest."""
    return hashlib.sha256(f"{digest}\n{prompt}".encode("utf8")).hexdigest()


class ResponseCache:
    """Model responses in a sqlite database at `path` (created if missing).

    `model_identity`: what the model is, for a backend that cannot say it
    itself (`giellm.Server.v1`): e.g. the served GGUF's SHA-256 or
    "org/model@commit". Change it whenever the served model changes. It is
    part of every key, so it can also tell apart models that local backends
    would identify the same way (it is never needed for them).
    """

    def __init__(self, path: PathLike, model_identity: Optional[str] = None, timeout: float = 60.0) -> None:
        if not str(path):
            raise CacheError("giellm.cache.v1: 'path' must name a database file")
        if timeout <= 0:
            raise CacheError(f"giellm.cache.v1: timeout must be > 0, got {timeout}")
        self.path = Path(path).expanduser()
        if self.path.is_dir():
            raise CacheError(f"giellm.cache.v1: {str(self.path)!r} is a directory; 'path' names the database file")
        self.model_identity = model_identity
        self.timeout = timeout
        self._conn: Optional[sqlite3.Connection] = None
        self._pid = 0
        self._lock = threading.Lock()
        self._hashes: Dict[Tuple[Any, ...], str] = {}
        # connections inherited through fork: never used, never closed here
        self._inherited: List[sqlite3.Connection] = []

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"

    # A pickled cache (spawned processes) reopens the database by path.
    def __getstate__(self) -> Dict[str, Any]:
        return {"path": self.path, "model_identity": self.model_identity, "timeout": self.timeout}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(state["path"], state["model_identity"], state["timeout"])  # type: ignore[misc]

    # ------------------------------------------------------------- connection

    def _connection(self) -> sqlite3.Connection:
        """This process's connection (a forked child opens its own)."""
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._conn is not None:
            self._inherited.append(self._conn)
            self._conn = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # The rows hold text fragments: a new database is the owner's
            # alone (0600); sqlite gives its -wal and -shm files its mode.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as e:
            raise CacheError(f"giellm.cache.v1: cannot create {str(self.path)!r}: {e}") from e
        try:
            # autocommit: each write is its own explicit transaction
            conn = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            for statement in _SCHEMA:
                conn.execute(statement)
        except sqlite3.DatabaseError as e:
            raise CacheError(f"giellm.cache.v1: cannot open {str(self.path)!r} as a cache database: {e}") from e
        self._conn, self._pid = conn, os.getpid()
        return conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    @contextmanager
    def _named(self) -> Iterator[None]:
        """sqlite's own errors (a damaged page, a read-only file, a lock held
        past the timeout) as a CacheError naming the database file."""
        try:
            yield
        except sqlite3.Error as e:
            raise CacheError(f"giellm cache: {str(self.path)!r}: {type(e).__name__}: {e}") from e

    def _write(self, sql: str, rows: Sequence[Tuple[Any, ...]]) -> None:
        with self._lock, self._named():
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no deadlock on upgrade
            try:
                conn.executemany(sql, rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # ---------------------------------------------------------------- hashing

    def hash_path(self, path: PathLike) -> str:
        """SHA-256 of a file; of a directory, over its top-level files (not
        hidden ones, not subdirectories): their names and SHA-256s. Each
        file is hashed once per (real path, size, mtime, ctime, inode)."""
        path = Path(path).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if not files:
                raise CacheError(f"giellm cache: {str(path)!r} has no files to identify the model by")
            listing = {p.name: self._file_sha256(p) for p in files}
            return hashlib.sha256(_canonical(listing).encode("utf8")).hexdigest()
        return self._file_sha256(path)

    def _file_sha256(self, path: Path) -> str:
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError as e:
            raise CacheError(f"giellm cache: cannot identify the model file {str(path)!r}: {e}") from e
        stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        if (real, *stamp) in self._hashes:
            return self._hashes[(real, *stamp)]
        with self._lock, self._named():
            row = self._connection().execute(
                "SELECT size, mtime_ns, ctime_ns, inode, sha256 FROM file_hashes WHERE path = ?", (real,)
            ).fetchone()
        if row is not None and tuple(row[:4]) == stamp:
            sha = row[4]
        else:
            sha = file_sha256(real)
            self._write("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?, ?, ?)", [(real, *stamp, sha)])
        self._hashes[(real, *stamp)] = sha
        return sha

    # ------------------------------------------------------- stored values

    def _get(self, table: str, keys: Sequence[str], check: Callable[[Any], Any]) -> Dict[str, Any]:
        """The stored values among `keys`, as `check` reads them (a row it
        cannot read is logged and left out: it misses, and is written again)."""
        unique = list(dict.fromkeys(keys))
        with self._lock, self._named():
            conn = self._connection()
            rows = []
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows += conn.execute(f"SELECT key, value FROM {table} WHERE key IN ({marks})", chunk).fetchall()
        found: Dict[str, Any] = {}
        for key, value in rows:
            try:
                found[key] = check(json.loads(value))
            except (ValueError, KeyError, TypeError) as e:
                logger.warning("giellm cache: %s: unreadable %s row %s (%s), computed again", self.path, table, key, e)
        return found

    def _put(self, table: str, values: Dict[str, Any]) -> None:
        rows = [(key, json.dumps(value, ensure_ascii=False)) for key, value in values.items()]
        if rows:
            self._write(f"INSERT OR REPLACE INTO {table} VALUES (?, ?)", rows)

    def _serve(self, table: str, context: Dict[str, Any], prompts: Sequence[str],
               compute: Callable[[List[str]], List[Any]], check: Callable[[Any], Any]) -> Tuple[List[Any], int]:
        """Each prompt's value: stored, else from `compute` (called once, with
        each missing prompt once), then stored. Also how many it computed."""
        digest = context_digest(context)
        keys = [response_key(digest, p) for p in prompts]
        found = self._get(table, keys, check)
        first = {key: k for k, key in reversed(list(enumerate(keys)))}  # a repeated prompt runs once
        todo = sorted(k for key, k in first.items() if key not in found)
        if todo:
            computed = compute([prompts[k] for k in todo])
            if len(computed) != len(todo):
                raise RuntimeError(f"giellm cache: the model answered {len(computed)} of {len(todo)} prompts")
            new = {keys[k]: value for k, value in zip(todo, computed)}
            self._put(table, new)
            found.update((key, check(value)) for key, value in new.items())
        return [found[key] for key in keys], len(todo)

    # -------------------------------------------------------------- responses

    def get_many(self, keys: Sequence[str]) -> Dict[str, Response]:
        """The stored responses among `keys`."""
        return self._get("responses", keys, _read_response)

    def put_many(self, responses: Dict[str, Response]) -> None:
        self._put("responses", {key: _response_row(*value) for key, value in responses.items()})

    def __len__(self) -> int:
        """How many responses are stored."""
        with self._lock, self._named():
            return int(self._connection().execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def respond(
        self,
        context: Dict[str, Any],
        prompts: Sequence[str],
        run: Callable[[List[str]], Tuple[List[str], Optional[List[Optional[Dict[str, float]]]]]],
    ) -> Tuple[List[str], Optional[List[Optional[Dict[str, float]]]], int]:
        """Each prompt's response: from the store where it has one, else from
        `run` (outputs and scores, or None), then stored. Returns the outputs,
        the scores (None where no response has any) and how many prompts
        `run` answered."""

        def compute(missing: List[str]) -> List[Dict[str, Any]]:
            outputs, scores = run(missing)
            if scores is not None and len(scores) != len(outputs):
                raise RuntimeError(f"giellm cache: {len(scores)} label scores for {len(outputs)} outputs")
            return [_response_row(out, scores[j] if scores is not None else None) for j, out in enumerate(outputs)]

        responses, n_run = self._serve("responses", context, prompts, compute, _read_response)
        all_scores = [scores for _, scores in responses]
        return ([out for out, _ in responses],
                None if all(s is None for s in all_scores) else all_scores,
                n_run)

    def prompt_tokens(self, context: Dict[str, Any], prompts: Sequence[str],
                      count: Callable[[List[str]], List[int]]) -> List[int]:
        """Each prompt's token count: stored, else from `count`. With every
        count and response stored, a re-run never loads the model."""
        counts, _ = self._serve("prompt_tokens", context, prompts, count, _read_count)
        return counts


def _response_row(output: str, scores: Optional[Dict[str, float]]) -> Dict[str, Any]:
    return {"output": output, "scores": scores}


def _read_response(row: Any) -> Response:
    output, scores = row["output"], row["scores"]
    if not isinstance(output, str) or not (scores is None or isinstance(scores, dict)):
        raise TypeError(f"not a response: {row!r}")
    for label, score in (scores or {}).items():
        if not isinstance(label, str) or isinstance(score, bool) or not isinstance(score, (int, float)):
            raise TypeError(f"not a label score: {label!r}: {score!r}")
    return output, scores


def _read_count(row: Any) -> int:
    if not isinstance(row, int) or isinstance(row, bool) or row < 0:
        raise TypeError(f"not a token count: {row!r}")
    return row


@registry.misc("giellm.cache.v1")
def make_response_cache(path: str, model_identity: Optional[str] = None, timeout: float = 60.0) -> ResponseCache:
    """The `giellm` component's response cache, in a config:

        [components.giellm.cache]
        @misc = "giellm.cache.v1"
        path = "cache/giellm.sqlite"
    """
    return ResponseCache(path, model_identity=model_identity, timeout=timeout)
