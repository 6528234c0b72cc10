"""The JSON-lines record store: one file, one writer at a time, nothing lost or counted twice.

Every line is one JSON object: a record (``egg.runs.records.Record`` fields plus, from the
command line, "benchmark" and "item_id"), or a failure ({"key", "failed": true, "error",
...}: an item whose method raised). A line is appended, flushed and fsync'd before the next
item starts, so a process killed at any moment (even SIGKILL) loses at most the item in
flight; a torn last line is cut off when the file is opened again. An exclusive lock
(``<file>.lock``, via ``filelock``) keeps a second writer out. Reading skips blank, torn,
corrupt and non-UTF-8 lines and says how many it skipped; when a key has both a failure
and a record, the record wins.
"""
from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class StoreLocked(RuntimeError):
    """Another process is writing the same records file."""



def read_lines(path, *, warn: bool = True) -> tuple[list[dict], int]:
    """(the JSON objects of a JSON-lines file, the number of lines skipped). Blank lines are
    not counted; torn, corrupt and non-UTF-8 lines are, and a warning names the count."""
    path = Path(path)
    if not path.is_file():
        return [], 0
    out, bad = [], 0
    for raw in path.read_bytes().split(b"\n"):
        if not raw.strip():
            continue
        try:
            d = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            bad += 1
            continue
        if isinstance(d, dict):
            out.append(d)
        else:
            bad += 1
    if bad and warn:
        warnings.warn(f"{path}: skipped {bad} unreadable line(s) (torn, corrupt or not UTF-8)", stacklevel=2)
    return out, bad


def split_outcomes(lines: list[dict]) -> tuple[dict[str, dict], dict[str, dict]]:
    """({key: record}, {key: failure}) of a file's lines: the first record per key; a
    failure only where no record has that key. Lines without a key are kept, each on its own."""
    done: dict[str, dict] = {}
    failed: dict[str, dict] = {}
    for i, d in enumerate(lines):
        key = d.get("key")
        if not isinstance(key, str) or not key:
            key = f"<no key: line {i}>"
        if d.get("failed"):
            failed.setdefault(key, d)
        else:
            done.setdefault(key, d)
    return done, {k: v for k, v in failed.items() if k not in done}


def repair(path: Path) -> None:
    """Cut a torn (unterminated) last line left by a killed writer."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        f.truncate(data.rfind(b"\n") + 1)
        f.flush()
        os.fsync(f.fileno())


class RecordStore:
    """Appends to one records file under an exclusive lock (use as a context manager)."""

    def __init__(self, path, must_be_new: bool = False):
        self.path = Path(path)
        self.must_be_new = must_be_new
        self._fh = None
        self._lock = None

    def __enter__(self) -> "RecordStore":
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path) + ".lock")
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise StoreLocked(f"{self.path} is being written by another process (lock {self.path}.lock held); "
                              "wait for it to finish or write to another file") from None
        try:
            if self.must_be_new and self.path.is_file() and self.path.stat().st_size > 0:
                raise FileExistsError(f"{str(self.path)!r} exists; pass resume=True (--resume) to continue it, "
                                      "or choose another output file")
            repair(self.path)
            self._fh = open(self.path, "a", encoding="utf-8")
        except BaseException:
            self._lock.release()
            raise
        return self

    def append(self, d: dict) -> None:
        self._fh.write(json.dumps(d, allow_nan=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


@contextmanager
def maybe_store(path, must_be_new: bool = False) -> Iterator[RecordStore | None]:
    """A locked store for ``path`` (``must_be_new``: refuse a non-empty file), or None when
    there is no file to write."""
    if path is None:
        yield None
        return
    with RecordStore(path, must_be_new=must_be_new) as store:
        yield store


__all__ = ["RecordStore", "StoreLocked", "read_lines", "split_outcomes", "repair", "maybe_store"]
