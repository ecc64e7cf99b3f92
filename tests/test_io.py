"""File helpers (benchmark/io.py): the one file lock, the one sha256 memo, the one timestamp and run-id format."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmark.io import file_lock, file_sha256, new_run_id, parse_utc, sha256_file, utc_now


def test_file_lock_excludes_and_non_blocking_reports_it(tmp_path: Path) -> None:
    lock = tmp_path / "sub" / "x.lock"
    with file_lock(lock) as held:
        assert held and lock.parent.is_dir()
        with file_lock(lock, blocking=False) as again:
            assert again is False  # another holder (here: another file descriptor) has it
    with file_lock(lock, blocking=False) as free:
        assert free is True


def test_file_sha256_is_memoised_by_path_size_and_mtime(tmp_path: Path) -> None:
    p = tmp_path / "w.bin"
    p.write_bytes(b"abc")
    assert file_sha256(p) == sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    p.write_bytes(b"abcd")  # size changes: hashed again
    assert file_sha256(p) == sha256_file(p)


def test_timestamps_and_run_ids_have_one_format() -> None:
    now = utc_now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", now) and parse_utc(now).utcoffset().total_seconds() == 0
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", new_run_id(now)) and new_run_id(now) != new_run_id(now)
    assert new_run_id("2025-01-31T12:00:00Z").startswith("20250131T120000Z-")
    with pytest.raises(ValueError, match="UTC"):
        parse_utc("2025-01-31T12:00:00+01:00")
