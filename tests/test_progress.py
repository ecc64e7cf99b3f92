"""Progress bars (benchmark/progress.py): ``--quiet`` silences all of them; off a terminal they update rarely."""

from __future__ import annotations

import ast
import io
from pathlib import Path

from benchmark import progress

REPO = Path(__file__).resolve().parents[1]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_quiet_disables_every_bar_and_a_file_gets_rare_updates():
    try:
        progress.set_quiet(True)
        assert progress.tqdm(range(3), file=_Tty()).disable
        assert progress.tqdm(range(3), file=_Tty(), disable=False).disable  # a call site cannot turn it back on
        progress.set_quiet(False)
        assert not progress.tqdm(range(3), file=_Tty()).disable
        assert progress.tqdm(range(3), file=io.StringIO()).mininterval == progress.LOG_INTERVAL_S
        assert progress.tqdm(range(3), file=_Tty()).mininterval < 1
    finally:
        progress.set_quiet(False)


def test_no_module_makes_a_bar_of_its_own():
    """Every bar goes through benchmark.progress, so --quiet reaches data generation, classifiers, metrics."""
    offenders = []
    for f in sorted(p for d in ("benchmark", "baselines", "methods") for p in (REPO / d).rglob("*.py")):
        if f.name == "progress.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tqdm":
                offenders.append(f"{f.relative_to(REPO)}:{node.lineno}")
            elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "tqdm" for a in node.names):
                offenders.append(f"{f.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def test_cli_quiet_reaches_the_switch(capsys):
    from benchmark.cli import main

    try:
        assert main(["run", "--method", "nope", "--quiet"]) == 2
        assert progress.is_quiet()
    finally:
        progress.set_quiet(False)
