"""Matplotlib figures of the report (Agg backend, PNG): metric bars, ablation plots, training curves."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from benchmark.report.ablations import GUIDANCE_KINDS, Cell, LayoutDrop, Series  # noqa: E402
from benchmark.results import RunResult, SeedGroup, Stats  # noqa: E402

DPI = 100
COLORS = plt.get_cmap("tab10").colors


def slug(*parts: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(str(p) for p in parts if p != "")).strip("-")


def save(fig: Figure, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{slug(name)}.png"
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def direction(hib: bool) -> str:
    return "higher is better" if hib else "lower is better"


def _errorbars(ax, xs: Sequence[float], stats: Sequence[Stats]) -> None:
    """Vertical std bars only where there are two seeds or more (one seed has no measured spread)."""
    pts = [(x, st) for x, st in zip(xs, stats) if st.std is not None]
    if pts:
        ax.errorbar(
            [x for x, _ in pts],
            [st.mean for _, st in pts],
            yerr=[st.std for _, st in pts],
            fmt="none",
            ecolor="black",
            capsize=3,
        )


def group_label(g: SeedGroup, version: bool = False) -> str:
    """``method · layout`` (+ ``· protocol vX`` when ``version``) and the variant on a second line."""
    variant = g.variant.replace("method.", "")
    head = f"{g.method} · {g.layout} layout" + (f" · v{g.protocol_version}" if version else "")
    return head + (f"\n{variant}" if variant else "")


def metric_bars(groups: Sequence[SeedGroup], metric: str, title: str) -> Figure | None:
    """Horizontal bars, one panel per split: a bar per seed group (mean), error bar = std over seeds (n >= 2)."""
    has = [g for g in groups if g.metrics.get(metric) and g.metrics[metric].mean is not None]
    splits = sorted({g.split for g in has})
    if not splits:
        return None
    # Rows of several protocol versions are never merged: each bar then names its version.
    versioned = len({(g.protocol_version, g.protocol_variant) for g in has}) > 1
    labels = list(dict.fromkeys(group_label(g, versioned) for g in has))
    lines = sum(label.count("\n") + 1 for label in labels)
    fig, axes = plt.subplots(
        1,
        len(splits),
        figsize=(3.2 + 3.6 * len(splits), 0.9 + 0.24 * lines + 0.12 * len(labels)),
        squeeze=False,
        sharey=True,
    )
    hib = has[0].higher[metric]
    methods = sorted({g.method for g in has})
    for ax, split in zip(axes[0], splits):
        rows = {group_label(g, versioned): g for g in has if g.split == split}
        ys = [i for i, label in enumerate(labels) if label in rows]
        gs = [rows[labels[i]] for i in ys]
        means = [g.metrics[metric].mean for g in gs]
        colors = [COLORS[methods.index(g.method) % len(COLORS)] for g in gs]
        ax.barh(ys, means, color=colors, edgecolor="black", linewidth=0.5, height=0.7)
        multi = [(y, g.metrics[metric]) for y, g in zip(ys, gs) if g.metrics[metric].std is not None]
        if multi:
            ax.errorbar(
                [s.mean for _, s in multi],
                [y for y, _ in multi],
                xerr=[s.std for _, s in multi],
                fmt="none",
                ecolor="black",
                capsize=4,
            )
        for y, g in zip(ys, gs):
            st = g.metrics[metric]
            ax.annotate(
                f" {st.mean:.4g} (n={st.n})", (max(st.mean + (st.std or 0.0), 0), y), va="center", fontsize=7
            )
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.set_title(split, fontsize=10)
        ax.set_xlabel(f"{metric} ({direction(hib)})", fontsize=9)
        ax.margins(x=0.25)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def metrics_of(series: Sequence[Series]) -> list[str]:
    return sorted(
        {m for s in series for _, g in s.points for m, st in g.metrics.items() if st.mean is not None}
    )


def _panel_grid(n: int, width: float, height: float) -> tuple[Figure, list[Axes]]:
    """A figure with ``n`` panels, at most 3 per row (unused cells hidden); the axes in reading order."""
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, grid = plt.subplots(nrows, cols, figsize=(width * cols, height * nrows), squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _finish(fig: Figure, title: str) -> Figure:
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def category_plot(series: Sequence[Series], title: str) -> Figure | None:
    """Grouped bars: one group per series (and split/layout context), one bar per axis value; a panel per metric."""
    metrics = metrics_of(series)
    if not metrics:
        return None
    values = sorted({str(v) for s in series for v, _ in s.points})
    width = max(3.4, 0.45 * len(series) * len(values) + 1.6)
    fig, axes = _panel_grid(len(metrics), width, 3.4)
    bw = 0.8 / len(values)
    for ax, metric in zip(axes, metrics):
        hib = next(g.higher[metric] for s in series for _, g in s.points if metric in g.higher)
        for j, val in enumerate(values):
            xs, sts = [], []
            for i, s in enumerate(series):
                for v, g in s.points:
                    st = g.metrics.get(metric)
                    if str(v) == val and st is not None and st.mean is not None:
                        xs.append(i + (j - (len(values) - 1) / 2) * bw)
                        sts.append(st)
            ax.bar(
                xs,
                [st.mean for st in sts],
                bw,
                label=val,
                color=COLORS[j % len(COLORS)],
                edgecolor="black",
                linewidth=0.5,
            )
            _errorbars(ax, xs, sts)
        ax.set_xticks(
            range(len(series)),
            [f"{s.label}\n{s.split}, {s.layout or 'gt/pred'}" for s in series],
            fontsize=8,
            rotation=20,
            ha="right",
        )
        ax.set_ylabel(f"{metric}\n({direction(hib)})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, title=series[0].axis.name, title_fontsize=7)
    return _finish(fig, title)


def numeric_plot(series: Sequence[Series], title: str, xlabel: str, with_time: bool = False) -> Figure | None:
    """Lines of metric (mean ± std) against a numeric axis; a panel per metric (+ seconds per image)."""
    metrics = metrics_of(series)
    panels = metrics + (["sample_s_per_image"] if with_time else [])
    if not panels:
        return None
    fig, axes = _panel_grid(len(panels), 4.6, 3.3)
    for ax, panel in zip(axes, panels):
        c = 0
        for s in series:
            for name, pts in s.lines().items():
                xs, sts = [], []
                for x, g in pts:
                    st = g.sample_s_per_image if panel == "sample_s_per_image" else g.metrics.get(panel)
                    if st is not None and st.mean is not None:
                        xs.append(float(x))
                        sts.append(st)
                if xs:
                    ax.plot(
                        xs,
                        [st.mean for st in sts],
                        marker="o",
                        color=COLORS[c % len(COLORS)],
                        label=f"{name} ({s.split}, {s.layout or 'gt/pred'})",
                    )
                    _errorbars(ax, xs, sts)
                c += 1
        if panel == "sample_s_per_image":
            ax.set_ylabel("sampling seconds per image", fontsize=9)
        else:
            hib = next(g.higher[panel] for s in series for _, g in s.points if panel in g.higher)
            ax.set_ylabel(f"{panel}\n({direction(hib)})", fontsize=9)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _finish(fig, title)


def training_curves(
    runs_by_method: dict[str, list[RunResult]], title: str, max_keys: int = 8
) -> Figure | None:
    """A panel per method: every recorded loss against the step, one line style per seed."""
    methods = [m for m, runs in runs_by_method.items() if any(r.train_history for r in runs)]
    if not methods:
        return None
    fig, axes = _panel_grid(len(methods), 5.0, 3.4)
    styles = ["-", "--", ":", "-."]
    for ax, method in zip(axes, methods):
        runs = [r for r in runs_by_method[method] if r.train_history]
        keys = sorted({key for r in runs for p in r.train_history for key in p if key != "step"})
        keys = sorted(keys, key=lambda n: (n not in ("loss", "total_loss"), n))[:max_keys]
        positive = all(p[key] > 0 for r in runs for p in r.train_history for key in keys if key in p)
        for j, r in enumerate(runs):
            for i, key in enumerate(keys):
                pts = [(p["step"], p[key]) for p in r.train_history if key in p]
                if not pts:
                    continue
                ax.plot(
                    *zip(*pts),
                    styles[j % len(styles)],
                    marker="." if len(pts) < 3 else None,
                    color=COLORS[i % len(COLORS)],
                    label=key if j == 0 else None,
                )
        if positive:
            ax.set_yscale("log")
        seeds = ", ".join(str(r.seed) for r in runs)
        ax.set_title(f"{method} (seed {seeds}; line style = seed)", fontsize=9)
        ax.set_xlabel("step", fontsize=9)
        ax.set_ylabel("training loss", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _finish(fig, title)


def _split_metric_grid(splits: Sequence[str], metrics: Sequence[str], labels: Sequence[str]) -> tuple[Figure, Any]:
    """A row of panels per metric, a column per split, the y axis (one row label per bar) shared; sized so that
    the figure keeps to about the report's width (~1,000 px) and its text stays legible there."""
    label_in = 0.3 + 0.062 * max(len(label) for label in labels)
    fig, axes = plt.subplots(
        len(metrics),
        len(splits),
        figsize=(label_in + 3.3 * len(splits), len(metrics) * (0.85 + 0.27 * len(labels))),
        squeeze=False,
        sharey=True,
    )
    return fig, [[axes[i][j] for i in range(len(metrics))] for j in range(len(splits))]


def layout_drop_plot(drops: Sequence[LayoutDrop], metrics: Sequence[str], title: str) -> Figure | None:
    """Per method, the change of each metric from ground-truth to predicted boxes: a bar of mean(pred) -
    mean(gt), error bar = std over seeds of the paired per-seed differences (>= 2 seeds), coloured by whether
    the predicted layout is worse; a method evaluated with one layout is a grey note ("gt only (n=3)")."""
    metrics = [m for m in metrics if any(d.metric == m for d in drops)]
    if not metrics:
        return None
    splits = sorted({d.split for d in drops})
    labels = list(dict.fromkeys(d.label for d in sorted(drops, key=lambda d: (d.only != "", d.label))))
    fig, axes = _split_metric_grid(splits, metrics, labels)
    worse_c, better_c = "#c44e52", "#55a868"
    for i, split in enumerate(splits):
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            for d in (d for d in drops if d.split == split and d.metric == metric):
                y = labels.index(d.label)
                if d.drop is None:
                    st = d.gt or d.pred
                    ax.annotate(f"{d.only} only (n={st.n})", (0, y), xytext=(3, 0), textcoords="offset points",
                                va="center", fontsize=7, color="grey", style="italic")  # fmt: skip
                    continue
                worse = d.drop > 0 if not d.higher_is_better else d.drop < 0
                ax.barh(y, d.drop, height=0.6, color=worse_c if worse else better_c, edgecolor="black", linewidth=0.5)
                if d.drop_std is not None:
                    ax.errorbar(d.drop, y, xerr=d.drop_std, fmt="none", ecolor="black", capsize=3)
                n = f"n={len(d.paired_seeds)}" if d.gt.n == d.pred.n == len(d.paired_seeds) else f"n={d.gt.n}/{d.pred.n}"
                text = f"{d.drop:+.3g}" + (f" ± {d.drop_std:.2g}" if d.drop_std is not None else "") + f" ({n})"
                ax.annotate(text, (d.drop / 2, y), xytext=(0, 9), textcoords="offset points", ha="center", va="center",
                            fontsize=7)  # fmt: skip
            ax.axvline(0, color="black", linewidth=0.8)
            ax.set_yticks(range(len(labels)), labels, fontsize=8)
            ax.set_ylim(len(labels) - 0.5, -0.95)
            ax.set_title(f"{split} · {metric}", fontsize=9)
            hib = next(d.higher_is_better for d in drops if d.metric == metric)
            ax.set_xlabel(f"pred − gt ({'< 0' if hib else '> 0'} is worse)", fontsize=8)
            ax.margins(x=0.3)
            ax.grid(axis="x", alpha=0.3)
    handles = [Patch(color=worse_c, label="worse with predicted layout"), Patch(color=better_c, label="better")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, bbox_to_anchor=(0.5, 0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.4 / fig.get_figheight(), 1, 1 - 0.25 / fig.get_figheight()))
    return fig


def generator_grid_plot(cells: Sequence[Cell], metrics: Sequence[str], title: str) -> Figure | None:
    """Encoder x generator x guidance: a horizontal bar per cell (generator family, layout, text encoder,
    guidance), mean over seeds, error bar = std (>= 2 seeds), colour = guidance; a panel per split and metric."""
    def value(c: Cell, m: str) -> Stats | None:
        st = c.group.metrics.get(m)
        return st if st is not None and st.mean is not None else None

    metrics = [m for m in metrics if any(value(c, m) for c in cells)]
    if not metrics:
        return None
    splits = sorted({c.group.split for c in cells})
    labels = list(dict.fromkeys(c.label for c in cells))
    families = {c.label: c.family for c in cells}
    kinds = sorted({c.guidance for c in cells}, key=lambda k: GUIDANCE_KINDS.index(k) if k in GUIDANCE_KINDS else 9)
    colors = {k: COLORS[i % len(COLORS)] for i, k in enumerate(kinds)}
    fig, axes = _split_metric_grid(splits, metrics, labels)
    for i, split in enumerate(splits):
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            for c in (c for c in cells if c.group.split == split):
                st = value(c, metric)
                if st is None:
                    continue
                y = labels.index(c.label)
                ax.barh(y, st.mean, height=0.7, color=colors[c.guidance], edgecolor="black", linewidth=0.5)
                if st.std is not None:
                    ax.errorbar(st.mean, y, xerr=st.std, fmt="none", ecolor="black", capsize=3)
                ax.annotate(f" {st.mean:.4g} (n={st.n})", (max(st.mean + (st.std or 0.0), 0), y), va="center",
                            fontsize=7)  # fmt: skip
            for y in range(1, len(labels)):  # a rule between generator families
                if families[labels[y]] != families[labels[y - 1]]:
                    ax.axhline(y - 0.5, color="grey", linewidth=0.6)
            ax.set_yticks(range(len(labels)), labels, fontsize=8)
            ax.set_ylim(len(labels) - 0.5, -0.5)
            hib = next(c.group.higher[metric] for c in cells if metric in c.group.higher)
            ax.set_title(f"{split} · {metric}", fontsize=9)
            ax.set_xlabel(f"{metric} ({direction(hib)})", fontsize=8)
            ax.margins(x=0.45)
            ax.grid(axis="x", alpha=0.3)
    handles = [Patch(color=colors[k], label=f"guidance: {k}") for k in kinds]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, bbox_to_anchor=(0.5, 0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.4 / fig.get_figheight(), 1, 1 - 0.25 / fig.get_figheight()))
    return fig
