"""Published numbers (``reported.csv``): transcribed from papers, listed apart and never ranked with the
reproduced rows."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from benchmark.paths import REPO_ROOT
from benchmark.paths import results_dir as default_results_dir
from benchmark.results.tables import align

REPORTED = "reported.csv"
REPORTED_COLUMNS = (
    "method", "dataset", "resolution", "layout", "protocol", "n_real", "n_generated", "metric", "value", "std",
    "direction", "metric_mode", "source", "provenance", "unverified", "notes",
)  # fmt: skip


def reported_path(results_dir: str | Path | None = None) -> Path:
    """``reported.csv`` of the results folder, else the one committed in the checkout's ``results/``."""
    p = Path(results_dir or default_results_dir()) / REPORTED
    return p if p.is_file() else REPO_ROOT / "results" / REPORTED


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def load_reported(path: str | Path | None = None) -> list[dict[str, str]]:
    """Rows of ``reported.csv``, checked: every column present, ``value`` (and ``std``) numbers, ``direction``
    higher/lower, ``unverified`` yes/no. A bad cell stops with the file, the row number and the field."""
    path = Path(path) if path is not None else reported_path()
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REPORTED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"published-numbers file {path}: field {missing[0]!r}: missing column")
        rows = list(reader)

    def bad(i: int, col: str, reason: str) -> ValueError:
        return ValueError(f"published-numbers file {path}: row {i}, field {col!r}: {reason}")

    for i, row in enumerate(rows, start=2):
        for col in ("value", "std", "n_real", "n_generated"):
            cell = row[col].strip()
            if (col == "value" or cell) and not (_is_number(cell) and math.isfinite(float(cell))):
                raise bad(i, col, f"expected a number, got {cell!r}")
        if row["direction"] not in ("higher", "lower"):
            raise bad(i, "direction", f"expected higher or lower, got {row['direction']!r}")
        if row["unverified"] not in ("yes", "no"):
            raise bad(i, "unverified", f"expected yes or no, got {row['unverified']!r}")
        for col in ("method", "dataset", "metric", "source", "provenance"):
            if not row[col].strip():
                raise bad(i, col, "must not be empty")
    return rows


def format_reported(rows: Sequence[Mapping[str, str]], width: int = 120) -> str:
    """Published numbers as an aligned text table no wider than ``width`` (the source column is cut to fit;
    unverified numbers flagged with ``?``)."""
    if not rows:
        return "(no reported numbers)"
    header = ["dataset", "px", "layout", "method", "metric", "value", "source"]
    body = []
    for r in rows:
        value = r["value"] + (f" ± {r['std']}" if r["std"] else "") + (" ?" if r["unverified"] == "yes" else "")
        body.append([r["dataset"], r["resolution"], r["layout"], r["method"][:28], r["metric"], value,
                     f"{r['source']} {r['provenance']}"])  # fmt: skip
    fixed = sum(max([len(h)] + [len(b[j]) for b in body]) for j, h in enumerate(header[:-1])) + 2 * (len(header) - 1)
    room = max(len(header[-1]), width - fixed)
    for b in body:
        b[-1] = b[-1] if len(b[-1]) <= room else b[-1][: room - 3] + "..."
    return align(header, body, [False, True, False, False, False, True, False])
