"""Leaderboard tables a researcher reads at a glance, built in memory from the seed groups.

One table per (dataset, split, tier, resolution, layout, protocol version): the protocol's primary metrics
first (its ``"primary"`` list), then the other metrics while the table fits ``width`` characters; columns
that are unavailable in every row are folded into one note, as are columns left out for width (all of them
stay in ``leaderboard_mean_std.csv``). Rows are ranked by the first primary metric (``#``), the best ranked
value of each column is marked ``*``; flagged rows (off-protocol, run flags) are listed after, unranked.
Cells are ``mean ± std`` with the mean to 4 and the std to 2 significant digits; ``±`` only with >= 2 seeds.

The terminal (``python -m benchmark leaderboard``, the end of ``run``) and the HTML report render the same
:class:`TableView`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmark.results.groups import (
    OFF_PROTOCOL,
    SeedGroup,
    Stats,
    group_sort_key,
    metric_order,
    rank_groups,
    table_key,
)
from benchmark.results.metadata import primary_metrics

BEST = "*"
INLINE_VARIANT = 18  # longer variant labels become footnotes [a], [b], ...


def fmt_mean_std(mean: float | None, std: float | None, digits: int = 4) -> str:
    """``12.35 ± 0.21`` (mean to ``digits``, std to 2 significant digits); ``12.35`` without a std (one seed);
    ``-`` when unavailable."""
    if mean is None:
        return "-"
    return f"{mean:.{digits}g}" + ("" if std is None else f" ± {std:.2g}")


def align(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """A plain-text table: columns two spaces apart, numbers right-aligned, a dashed rule under the header."""
    widths = [max([len(h)] + [len(r[j]) for r in rows]) for j, h in enumerate(header)]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if rt else c.ljust(w) for c, w, rt in zip(row, widths, right)).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def table_width(header: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
    return sum(max([len(h)] + [len(r[j]) for r in rows]) for j, h in enumerate(header)) + 2 * (len(header) - 1)


@dataclass
class TableView:
    title: str
    header: list[str]
    rows: list[list[str]]
    numeric: list[bool]
    notes: list[str] = field(default_factory=list)

    def text(self, width: int = 120) -> str:
        wrap = lambda s: textwrap.fill(s, width, subsequent_indent="  ", break_on_hyphens=False)  # noqa: E731
        return "\n".join([self.title, align(self.header, self.rows, self.numeric), *map(wrap, self.notes)])


def _letters(i: int) -> str:
    return chr(ord("a") + i) if i < 26 else f"a{i}"


def views(groups: Sequence[SeedGroup], width: int | None = 120) -> list[TableView]:
    """The leaderboard tables (see the module docstring); ``width=None``: every available metric column."""
    tables: dict[tuple, list[SeedGroup]] = {}
    for g in sorted(groups, key=group_sort_key):
        tables.setdefault(table_key(g), []).append(g)
    out = []
    for (dataset, split, tier, size, layout, pv, variant), rows in tables.items():
        out.append(_view(dataset, split, tier, size, layout, pv, variant, rows, width))
    return out


def _view(
    dataset: str, split: str, tier: str, size: int, layout: str, pv: str, pvariant: str,
    rows: list[SeedGroup], width: int | None,
) -> TableView:  # fmt: skip
    present = sorted({n for g in rows for n in g.metrics})
    order = metric_order(rows)
    ranked = rank_groups(rows, order[0] if order else None)
    higher = {n: next(g.higher[n] for g in rows if n in g.higher) for n in present}
    best: dict[str, float] = {}
    for n in order:
        vals = [g.metrics[n].mean for r, g in ranked if r is not None and n in g.metrics and g.metrics[n].mean is not None]
        if len(vals) >= 2:  # a best among one is no news
            best[n] = max(vals) if higher[n] else min(vals)

    notes: list[str] = []
    footnotes: dict[str, str] = {}
    labels = []
    for _, g in ranked:
        label = g.method
        if g.variant and len(g.variant) <= INLINE_VARIANT:
            label += f" ({g.variant})"
        elif g.variant:
            label += f" [{footnotes.setdefault(g.variant, _letters(len(footnotes)))}]"
        if g.flags:
            label += " †"
        labels.append(label)

    def cell(g: SeedGroup, n: str) -> str:
        s = g.metrics.get(n, Stats(None, None, 0))
        text = fmt_mean_std(s.mean, s.std)
        return text + (BEST if s.mean is not None and best.get(n) == s.mean and g.ranked else "")

    base_header = ["#", "method", "seeds"]
    base = [[str(r) if r else "-", lab, " ".join(map(str, g.seeds))] for (r, g), lab in zip(ranked, labels)]
    header, body, shown = list(base_header), [list(b) for b in base], []
    primary = set(primary_metrics(dataset, pvariant))
    for n in order:  # primary metrics always; the others while the table fits
        h = f"{n} {'↑' if higher[n] else '↓'}"
        col = [cell(g, n) for _, g in ranked]
        too_wide = width is not None and table_width([*header, h], [[*b, c] for b, c in zip(body, col)]) > width
        if too_wide and n not in primary:
            continue
        header.append(h)
        for b, c in zip(body, col):
            b.append(c)
        shown.append(n)

    title = f"{dataset} / {split} · {tier} tier · {size} px · {layout} layout · protocol v{pv}" + (
        f" ({pvariant})" if pvariant else ""
    )
    rank_by = order[0] if order else None
    if rank_by:
        notes.append(f"# = rank by {rank_by} ({'higher' if higher[rank_by] else 'lower'} is better); {BEST} = best ranked value; ± = std over >= 2 seeds.")
    for v, k in footnotes.items():
        notes.append(f"[{k}] {v}")
    if any(g.flags for g in rows):
        flagged = sorted({f for g in rows for f in g.flags})
        why = {OFF_PROTOCOL: "training/evaluation budget differs from the tier's"}
        notes.append("† not ranked: " + "; ".join(f"{f} ({why[f]})" if f in why else f for f in flagged) + ".")
    unavailable = [n for n in present if n not in order]
    if unavailable:
        notes.append("Unavailable in every row: " + ", ".join(unavailable) + " (reasons in the run files and the report).")
    hidden = [n for n in order if n not in shown]
    if hidden:
        notes.append("Not shown for width: " + ", ".join(hidden) + " (see leaderboard_mean_std.csv).")
    return TableView(title, header, body, [True, False, False] + [True] * len(shown), notes)


def format_tables(groups: Sequence[SeedGroup], width: int = 120) -> str:
    """Every leaderboard table as text no wider than ``width`` (when the columns allow it)."""
    if not groups:
        return "(no ranked results)"
    return "\n\n".join(v.text(width) for v in views(groups, width))
