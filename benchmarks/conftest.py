"""Prints every side-by-side pair measured in this session (``benchmarks/side_by_side.py``)."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from benchmarks.side_by_side import RESULTS, format_table

    if RESULTS:
        terminalreporter.section("side by side: peer vs ours, same run, same inputs")
        for line in format_table(RESULTS):
            terminalreporter.write_line(line)
