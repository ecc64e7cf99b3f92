"""The leaderboard CSVs, rebuilt from every run file under one lock.

Layout under :func:`benchmark.paths.results_dir`::

    runs/{method}__{dataset}__{tier}__s{seed}__{run_id}.json   # one per run, never overwritten
    leaderboard.csv                                            # derived: one row per run and evaluation
    leaderboard_mean_std.csv                                   # derived: runs grouped over seeds, mean and std
    reported.csv                                               # committed: published numbers, never ranked

Runs that use randomly initialised weights (``random_init``) or a partial dataset (``partial_data``) are kept in
``runs/`` but never listed or ranked.
"""

from __future__ import annotations

import csv
import io
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.io import atomic_write_text, file_lock, parse_utc
from benchmark.paths import results_dir as default_results_dir
from benchmark.results.groups import (
    TIER_ORDER,
    SeedGroup,
    group_runs,
    metric_columns,
    metric_order,
    rank_groups,
    table_key,
    variant_of,
)
from benchmark.results.records import RunResult, SplitEvaluation, Weight, load_result, weights_summary

LEADERBOARD = "leaderboard.csv"
LEADERBOARD_MEAN_STD = "leaderboard_mean_std.csv"
BASE_COLUMNS = (
    "method", "variant", "dataset", "tier", "split", "layout", "image_size", "protocol_version", "split_version", "seed",
    "num_graphs", "samples_per_graph", "n_real", "n_generated",
)  # fmt: skip
TAIL_COLUMNS = ("weights", "git_commit", "created", "run_id")
GROUP_COLUMNS = (
    "method", "variant", "flags", "rank", "dataset", "tier", "split", "layout", "image_size", "protocol_version",
    "split_version", "n_seeds", "seeds", "num_graphs", "samples_per_graph", "n_real", "n_generated", "metric_mode",
)  # fmt: skip
GROUP_TAIL = ("sample_s_per_image", "weights", "git_commit", "config_id", "run_ids", "notes")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Leaderboard:
    """What one rebuild read and wrote: the ranked runs, the seed groups, the exclusions and the files."""

    root: Path
    runs: tuple[RunResult, ...]
    excluded: tuple[RunResult, ...]
    bad: tuple[tuple[Path, str], ...]
    groups: tuple[SeedGroup, ...]
    rows: int

    @property
    def path(self) -> Path:
        return self.root / LEADERBOARD


_LAST: dict[Path, Leaderboard] = {}  # the latest rebuild in this process, by results folder


def scan_runs(results_dir: str | Path | None = None) -> tuple[list[RunResult], list[tuple[Path, str]]]:
    """All valid run records under ``runs/``, and (file, error) for each malformed one (warned, skipped)."""
    runs_dir = Path(results_dir or default_results_dir()) / "runs"
    good, bad = [], []
    for path in sorted(runs_dir.glob("*.json")) if runs_dir.is_dir() else []:
        if path.name.startswith("."):
            continue
        try:
            good.append(load_result(path))
        except Exception as e:  # never let one bad file abort the rebuild
            warnings.warn(f"skipping malformed result file {path.name}: {e}", stacklevel=2)
            bad.append((path, str(e)))
    return good, bad


def _cell(v: float | None) -> str:
    return "" if v is None else repr(v)


def _sort_key(r: RunResult, ev: SplitEvaluation) -> tuple[Any, ...]:
    tier = TIER_ORDER.index(r.tier) if r.tier in TIER_ORDER else len(TIER_ORDER)
    return (r.dataset, ev.split, tier, r.tier, r.method, r.seed, parse_utc(r.created), r.run_id, ev.layout)


def runs_csv(ranked: Sequence[RunResult]) -> tuple[str, int]:
    """``leaderboard.csv``: one row per run and evaluation; metric columns ``<name> (higher|lower)`` by name.
    ``variant`` (the settings that differ from the tier's defaults, as in the tables) tells apart two evaluations
    of one checkpoint, e.g. with and without sampling-time guidance; ``layout`` says gt or pred boxes."""
    metric_cols = sorted(
        {(name, m.higher_is_better) for r in ranked for ev in r.evaluations for name, m in ev.metrics.items()}
    )
    header = [*BASE_COLUMNS, *(f"{n} ({'higher' if hib else 'lower'})" for n, hib in metric_cols), *TAIL_COLUMNS]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    rows = sorted(((run, ev) for run in ranked for ev in run.evaluations), key=lambda x: _sort_key(*x))
    for r, ev in rows:
        metrics = [
            _cell(m.value) if (m := ev.metrics.get(n)) is not None and m.higher_is_better == hib else ""
            for n, hib in metric_cols
        ]
        writer.writerow([
            r.method, variant_of(r)[0], r.dataset, r.tier, ev.split, ev.layout, r.image_size, r.protocol["version"],
            r.splits[ev.split]["version"], r.seed, ev.num_graphs, ev.samples_per_graph, ev.n_real, ev.n_generated,
            *metrics, weights_summary(r.weights), str(r.environment.get("git_commit", "unknown"))[:12], r.created,
            r.run_id,
        ])  # fmt: skip
    return buf.getvalue(), len(rows)


def _ranks(groups: Sequence[SeedGroup]) -> dict[int, int]:
    """id(group) -> its rank in its table (:func:`~benchmark.results.groups.table_key`)."""
    tables: dict[tuple, list[SeedGroup]] = {}
    for g in groups:
        tables.setdefault(table_key(g), []).append(g)
    out = {}
    for rows in tables.values():
        for rank, g in rank_groups(rows, next(iter(metric_order(rows)), None)):
            if rank is not None:
                out[id(g)] = rank
    return out


def mean_std_csv(groups: Sequence[SeedGroup]) -> str:
    """The seed-grouped leaderboard as CSV text: per metric ``<name> mean (higher|lower)`` and ``<name> std``,
    metrics by name; ``rank`` within the group's table, ``flags`` (e.g. off-protocol) of unranked rows."""
    cols = metric_columns(groups)
    ranks = _ranks(groups)
    header = [*GROUP_COLUMNS]
    for n, hib in cols:
        header += [f"{n} mean ({'higher' if hib else 'lower'})", f"{n} std"]
    header += GROUP_TAIL
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for g in groups:
        vals = []
        for n, hib in cols:
            s = g.metrics.get(n) if g.higher.get(n) == hib else None
            vals += [_cell(s.mean), _cell(s.std)] if s is not None else ["", ""]
        t = g.sample_s_per_image
        w.writerow([
            g.method, g.variant, " ".join(g.flags), ranks.get(id(g), ""), g.dataset, g.tier, g.split, g.layout,
            g.image_size, g.protocol_version, g.split_version, len(g.runs), " ".join(map(str, g.seeds)), g.num_graphs,
            g.samples_per_graph, g.n_real, g.n_generated, g.metric_mode, *vals, _cell(t.mean),
            weights_summary(unique_weights(g.runs)), " ".join(g.git_commits), g.config_id,
            " ".join(r.run_id for r in g.runs), g.notes,
        ])  # fmt: skip
    return buf.getvalue()


def unique_weights(runs: Sequence[RunResult]) -> list[Weight]:
    out: list[Weight] = []
    for r in runs:
        out += [w for w in r.weights if w not in out]
    return out


def build_leaderboard(results_dir: str | Path | None = None, *, echo: Callable[[str], None] | None = None) -> Leaderboard:
    """Rewrite both leaderboard CSVs from every run file, under the leaderboard lock.

    ``echo`` (default: the module logger) receives a one-line summary, including the random-init exclusions.
    The result is kept for :func:`latest_leaderboard`, so a caller that prints the tables does not rebuild.
    """
    root = Path(results_dir or default_results_dir())
    echo = echo or _log.info
    with file_lock(root / ".leaderboard.lock"):
        runs, bad = scan_runs(root)
        ranked = [r for r in runs if not r.unranked]
        excluded = [r for r in runs if r.unranked]
        text, n_rows = runs_csv(ranked)
        atomic_write_text(root / LEADERBOARD, text)
        groups = group_runs(ranked)
        atomic_write_text(root / LEADERBOARD_MEAN_STD, mean_std_csv(groups))
    board = Leaderboard(root, tuple(ranked), tuple(excluded), tuple(bad), tuple(groups), n_rows)
    _LAST[root.resolve()] = board
    msg = f"leaderboard {board.path}: {n_rows} row(s) from {len(ranked)} run(s)"
    msg += f"; {root / LEADERBOARD_MEAN_STD}: {len(groups)} row(s), mean and std over seeds"
    if excluded:
        rnd = [r for r in excluded if r.random_init]
        partial = [r.run_id for r in excluded if not r.random_init]
        ids = ", ".join(f"{r.run_id} ({weights_summary([w for w in r.weights if w.random_init]) or 'flagged'})"
                        for r in rnd)  # fmt: skip
        if rnd:
            msg += f"; excluded {len(rnd)} run(s) with randomly initialised weights (never ranked): {ids}"
        if partial:
            msg += f"; excluded {len(partial)} run(s) on partial data (never ranked): {', '.join(partial)}"
    if bad:
        msg += f"; skipped {len(bad)} malformed file(s): {', '.join(p.name for p, _ in bad)}"
    echo(msg)
    return board


def rebuild_leaderboard(results_dir: str | Path | None = None, *, echo: Callable[[str], None] | None = None) -> Path:
    """:func:`build_leaderboard`, returning the path of ``leaderboard.csv``."""
    return build_leaderboard(results_dir, echo=echo).path


def latest_leaderboard(results_dir: str | Path | None = None) -> Leaderboard:
    """The leaderboard this process last rebuilt for ``results_dir`` (else rebuilt now)."""
    root = Path(results_dir or default_results_dir()).resolve()
    return _LAST.get(root) or build_leaderboard(root, echo=lambda _: None)
