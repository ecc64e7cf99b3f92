"""Small, safe file helpers: atomic writes, file locks (the ``filelock`` package), hashing, UTC timestamps."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import filelock

_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """:func:`sha256_file`, memoised per process by ``(path, size, mtime)`` so big weight files are hashed once."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = sha256_file(p)
    return _SHA_MEMO[key]


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def umask_mode() -> int:
    """The mode ``open()`` gives a new file (0o666 less the process umask); ``mkstemp`` uses 0o600 instead."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), umask_mode())  # as a plain open() would: group/others may read (umask)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def file_lock(path: str | Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive lock on ``path`` (``filelock.FileLock``) held for the block; yields True when held.

    With ``blocking=False`` the block runs at once and yields False when another process holds the lock.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(path)
    try:
        lock.acquire(blocking=blocking)
    except filelock.Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def utc_now() -> str:
    """The current time as ISO-8601 UTC with milliseconds, e.g. ``2025-01-31T12:00:00.123Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_utc(text: str) -> datetime:
    """An ISO-8601 timestamp (``Z`` or ``+00:00``) as an aware datetime; ValueError if malformed or not UTC."""
    t = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    offset = t.utcoffset()
    if offset is None or offset.total_seconds() != 0:
        raise ValueError(f"expected a UTC timestamp (ending in Z or +00:00), got {text!r}")
    return t


def new_run_id(created: str | None = None) -> str:
    """A unique run id: the UTC timestamp plus 8 random hex digits, e.g. ``20250131T120000Z-1a2b3c4d``."""
    return f"{parse_utc(created or utc_now()).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Read JSON, failing with a message that names the file and the position of the error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed {what} {path}: line {e.lineno} column {e.colno}: {e.msg}") from None
