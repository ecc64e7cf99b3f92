"""``python -m benchmark report``: a Markdown and an HTML report of every result, with figures.

Everything is read from the result files (``results/runs/*.json``), the committed published numbers
(``results/reported.csv``) and, for the sample grids, the samples each evaluation saved in its run folder::

    reports/report.md, reports/report.html, reports/figures/*.png

Sections: provenance, the reproduced leaderboard (one ranked table per dataset and split, the tables of
:mod:`benchmark.results.tables`), per-metric bar charts per dataset, ablations found in the results (text
encoder by generator, with/without layout, ground-truth vs predicted layout with each method's drop from one
to the other, guidance scale, sampler steps against the metrics and the time per image, and the grid text
encoder x generator family x sampling-time guidance), training curves, sample grids, then the published
numbers (a separate table, never ranked with the reproduced rows) and the list of result files.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.io import parse_utc as parse_created
from benchmark.io import utc_now
from benchmark.paths import reports_dir
from benchmark.paths import results_dir as default_results_dir
from benchmark.report import render
from benchmark.report.ablations import AXES, Series, by_context, detect_all
from benchmark.report.render import Block, Bullets, Figure, Heading, Para, Table
from benchmark.results import (
    LEADERBOARD,
    LEADERBOARD_MEAN_STD,
    RunResult,
    SeedGroup,
    fmt_mean_std,
    group_runs,
    load_reported,
    metric_columns,
    primary_metrics,
    producer,
    reported_path,
    scan_runs,
    views,
    weights_summary,
)

TITLE = "Scene-graph-to-image benchmark report"
HTML_TABLE_CHARS = 116  # leaderboard tables keep to ~1,000 px in the report's 12.5 px font


def show(path: Path) -> str:
    """A path relative to the working directory when it lies below it (reports carry no home folders)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


@dataclass
class Report:
    markdown: Path
    html: Path
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be shown, and why


class _Builder:
    def __init__(self, out: Path, results: Path, runs_roots: Sequence[Path], max_graphs: int) -> None:
        self.out, self.results, self.runs_roots, self.max_graphs = out, results, list(runs_roots), max_graphs
        self.fig_dir = out / "figures"
        self.blocks: list[Block] = []
        self.figures: list[Path] = []
        self.notes: list[str] = []

    # -- helpers -------------------------------------------------------------------------------------------
    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.add(Para(text, "note"))

    def figure(self, fig, name: str, caption: str) -> None:
        from benchmark.report.figures import save

        if fig is None:
            self.note(f"No values to plot for: {caption}")
            return
        path = save(fig, self.fig_dir, name)
        if path in self.figures:
            raise RuntimeError(f"two report figures named {path.name}")
        self.figures.append(path)
        self.add(Figure(path.relative_to(self.out).as_posix(), caption))

    # -- sections ------------------------------------------------------------------------------------------
    def provenance(
        self, runs: list[RunResult], excluded: list[RunResult], bad: list[tuple[Path, str]]
    ) -> None:
        from benchmark.env import git_state

        commit, dirty = git_state()
        commits = Counter(str(r.environment.get("git_commit", "unknown"))[:12] for r in runs)
        protos = sorted({(r.dataset, r.protocol["version"], r.protocol["sha256"][:12]) for r in runs})
        self.add(Heading(2, "Provenance", "provenance"))
        self.add(
            Bullets(
                [
                    f"Built {utc_now()} by the code at commit "
                    f"{commit}{' (with uncommitted changes)' if dirty else ''}.",
                    f"Results: {len(runs) + len(excluded) + len(bad)} file(s) in {show(self.results / 'runs')}; {len(runs)} ranked, "
                    f"{len(excluded)} excluded for randomly initialised weights, {len(bad)} malformed (skipped).",
                    "Result git commits: "
                    + (", ".join(f"{c} ({n} run(s))" for c, n in sorted(commits.items())) or "none"),
                    "Protocols: " + (", ".join(f"{d} v{v} (sha256 {s})" for d, v, s in protos) or "none"),
                    "Every number comes from these result files. Rows group the runs that differ only in the seed; "
                    "mean ± std is the mean and the sample standard deviation (n - 1) over seeds, shown only with two "
                    "seeds or more. The seeds of each row are listed in it. A variant label lists the settings that "
                    "differ from the tier's defaults; rows whose budget differs from the tier's (off-protocol) are "
                    "shown but not ranked.",
                    f"CSV files: {show(self.results / LEADERBOARD)} (one row per run) and {show(self.results / LEADERBOARD_MEAN_STD)} "
                    "(the leaderboard rows below), rebuilt by `python -m benchmark leaderboard` and after every run.",
                ]
            )
        )

    def leaderboard(self, groups: list[SeedGroup], runs: list[RunResult]) -> None:
        self.add(Heading(2, "Leaderboard (reproduced by this suite)", "leaderboard"))
        if not groups:
            self.note("No ranked results yet: run `python -m benchmark run ...` first.")
            return
        for view in views(groups, HTML_TABLE_CHARS):
            self.add(Heading(3, view.title), Table(view.header, view.rows, numeric=view.numeric))
            self.add(*(Para(n, "small") for n in view.notes))
        impls = {i: f"M{k + 1}" for k, i in enumerate(dict.fromkeys(g.metric_impl for g in groups))}
        for dataset in sorted({g.dataset for g in groups}):
            details = []
            for g in (g for g in groups if g.dataset == dataset):
                t = g.sample_s_per_image
                variant = "; ".join(filter(None, [g.variant, *g.flags])) or "-"
                details.append([
                    g.split, g.tier, g.layout, g.method, variant, f"{g.n_real} / {g.n_generated}",
                    f"{t.mean:.3g}" if t.mean is not None else "", impls[g.metric_impl], g.config_id,
                ])  # fmt: skip
            self.add(
                Table(
                    ["split", "tier", "layout", "method", "variant (vs tier defaults); flags", "N real / gen",
                     "s/image", "metric mode", "config"],  # fmt: skip
                    details,
                    caption=f"{dataset}: rows in detail",
                    numeric=[False] * 5 + [True, True, False, False],
                )
            )
        self.add(
            Table(
                ["metric mode", "implementations recorded in the results"],
                [[k, i or "-"] for i, k in impls.items()],
                caption="Metric modes",
            )
        )
        by_reason: dict[tuple[str, str], set[str]] = {}
        for g in groups:
            for n, why in g.unavailable.items():
                by_reason.setdefault((n, why), set()).add(f"{g.method}/{g.split}")
        unavailable = [
            f"{n} ({len(rows)} row(s): {', '.join(sorted(rows))}): {why}" for (n, why), rows in sorted(by_reason.items())
        ]
        if unavailable:
            self.add(
                Para("Unavailable metrics (never computed with substitute weights):", "small"),
                Bullets(unavailable),
            )
        weights: dict[str, set[str]] = {}
        for r in runs:
            for w in r.weights:
                weights.setdefault(w.name, set()).add(weights_summary([w]))
        from benchmark import registry

        summaries = registry.entries()["metric"]
        defs = []
        for n, h in metric_columns(groups):
            entry = producer(n)[0]
            defs.append([n, "higher" if h else "lower", summaries[entry].summary if entry else "(not registered here)"])
        self.add(Table(["metric", "better", "implementation (registry)"], defs, caption="Metrics"))
        self.add(
            Table(
                ["weights", "source@sha256"],
                [[k, "; ".join(sorted(v))] for k, v in sorted(weights.items())],
                caption="Weights used by the ranked runs",
            )
        )

    def reported(self) -> None:
        self.add(Heading(2, "Published numbers (reported, not reproduced)", "reported"))
        path = reported_path(self.results)
        if not path.is_file():
            self.note(f"No published numbers: {show(path)} not found.")
            return
        rows = load_reported(path)
        self.add(
            Para(
                f"Transcribed into {show(path)} from the papers and repositories named in each row. These numbers were NOT produced by this suite: "
                "protocols, sample counts and metric implementations differ between papers (see each row), so they are "
                "listed apart and never ranked together with the reproduced results above. ⚠ marks numbers that the notes "
                "flag as unverified (recalled [R], or tables still to be checked against the paper).",
                "small",
            )
        )
        for dataset in sorted({r["dataset"] for r in rows}):
            notes: dict[str, str] = {}  # long protocol / metric-mode / note texts, as footnotes [1], [2], ...

            def ref(text: str, notes: dict[str, str] = notes) -> str:
                return text if len(text) <= 32 else f"[{notes.setdefault(text, str(len(notes) + 1))}]"

            body = []
            for r in (r for r in rows if r["dataset"] == dataset):
                value = r["value"] + (f" ± {r['std']}" if r["std"] else "")
                n = f"{r['n_real']} / {r['n_generated']}" if r["n_real"] or r["n_generated"] else ""
                body.append(
                    [
                        r["resolution"],
                        r["layout"],
                        r["method"],
                        r["metric"] + (" ↑" if r["direction"] == "higher" else " ↓"),
                        value,
                        n,
                        ref(r["protocol"]),
                        ref(r["metric_mode"]),
                        f"{r['source']} {r['provenance']}",
                        "⚠ unverified" if r["unverified"] == "yes" else "",
                        ref(r["notes"]),
                    ]
                )
            self.add(
                Heading(3, f"{dataset} (published)"),
                Table(
                    [
                        "res.",
                        "layout",
                        "method",
                        "metric",
                        "value",
                        "N real / gen",
                        "protocol",
                        "metric mode",
                        "source",
                        "status",
                        "notes",
                    ],
                    body,
                    numeric=[True, False, False, False, True, True],
                ),
            )
            if notes:
                self.add(
                    Table(
                        ["", "protocol, metric mode or note"],
                        [[f"[{k}]", t] for t, k in notes.items()],
                        caption=f"{dataset}: footnotes",
                    )
                )

    def bars(self, groups: list[SeedGroup]) -> None:
        from benchmark.report.figures import metric_bars

        self.add(Heading(2, "Metrics per dataset", "metrics"))
        if not groups:
            self.note("No ranked results: no charts.")
            return
        for dataset, tier, size in sorted({(g.dataset, g.tier, g.image_size) for g in groups}):
            rows = [g for g in groups if (g.dataset, g.tier, g.image_size) == (dataset, tier, size)]
            self.add(Heading(3, f"{dataset} / {tier} / {size} px"))
            for n, _ in metric_columns(rows):
                title = f"{n} on {dataset} ({tier} tier, {size} px): mean over seeds, error bar = std"
                self.figure(metric_bars(rows, n, title), f"bars_{dataset}_{tier}_{size}_{n}", title)

    def ablations(self, groups: list[SeedGroup]) -> None:
        from benchmark.report.figures import category_plot, numeric_plot

        self.add(Heading(2, "Ablations", "ablations"))
        self.add(
            Para(
                "Found in the results: rows (seed groups) that differ in the studied setting and in nothing else of their "
                "configuration, on the same dataset, tier, split and protocol.",
                "small",
            )
        )
        found = detect_all(groups)
        for axis in AXES:
            self.add(Heading(3, axis.title))
            series = found[axis.name]
            if not series:
                fields = ", ".join(sorted(f.replace("method_cfg.", "method.") for f in axis.fields))
                self.note(f"No results differ only in {fields}: nothing to compare for this ablation yet.")
                continue
            for (dataset, tier, size), part in by_context(series).items():
                self.add(self._ablation_table(axis.name, part, axis.numeric))
                title = f"{axis.title}: {dataset} / {tier} / {size} px"
                name = f"ablation_{axis.name}_{dataset}_{tier}_{size}"
                if axis.name == "sampler_steps":
                    fig = numeric_plot(part, title, "sampler steps", with_time=True)
                elif axis.numeric:
                    fig = numeric_plot(part, title, axis.name.replace("_", " "))
                else:
                    fig = category_plot(part, title)
                self.figure(fig, name, title)
                if axis.name == "eval_layout":
                    self._layout_drop([g for g in groups if (g.dataset, g.tier, g.image_size) == (dataset, tier, size)])
        self.generator_grid(groups)

    def _layout_drop(self, groups: list[SeedGroup]) -> None:
        """Per method, the change from ground-truth to predicted boxes of the protocol's primary metrics."""
        from benchmark.report.ablations import layout_drops
        from benchmark.report.figures import layout_drop_plot

        g0 = groups[0]
        metrics = primary_metrics(g0.dataset, g0.protocol_variant)
        drops = layout_drops(groups, metrics)
        context = f"{g0.dataset} / {g0.tier} / {g0.image_size} px"
        rows, seeds = [], {}
        for d in drops:
            cell = lambda st: f"{fmt_mean_std(st.mean, st.std)} (n={st.n})" if st else "-"  # noqa: E731
            drop = "-" if d.drop is None else f"{fmt_mean_std(d.drop, d.drop_std)} (n={len(d.paired_seeds)})"
            rows.append([d.label, d.split, f"{d.metric} {'↑' if d.higher_is_better else '↓'}", cell(d.gt),
                         cell(d.pred), drop])  # fmt: skip
            seeds.setdefault(d.label, f"{d.label}: {d.gt.n if d.gt else 0} gt / {d.pred.n if d.pred else 0} pred")
        self.add(
            Table(["method", "split", "metric", "gt layout", "pred layout", "pred − gt (paired seeds)"], rows,
                  f"{context}: the drop from ground-truth to predicted layout", numeric=[False] * 3 + [True] * 3)
        )  # fmt: skip
        title = f"Drop from ground-truth to predicted layout: {context}"
        caption = (
            f"{title}. Bar = mean(pred) − mean(gt) over seeds of each primary metric; error bar and ± = std over "
            "the seeds evaluated with both layouts of the per-seed difference (shown with >= 2 such seeds); red = "
            "worse with the predicted layout. Seeds (n) per method and layout: " + "; ".join(seeds.values()) + "."
        )
        self.figure(layout_drop_plot(drops, metrics, title), f"layout_drop_{g0.dataset}_{g0.tier}_{g0.image_size}", caption)

    def generator_grid(self, groups: list[SeedGroup]) -> None:
        """Text encoder x generator family x sampling-time guidance, one table and figure per context."""
        from benchmark.report.ablations import generator_grid
        from benchmark.report.figures import generator_grid_plot

        self.add(Heading(3, "Text encoder × generator × sampling-time guidance"))
        cells, left = generator_grid(groups)
        contexts = sorted({(c.group.dataset, c.group.tier, c.group.image_size) for c in cells})
        if not contexts:
            self.note("No result rows with only the text encoder or the guidance changed: nothing to compare yet.")
        for dataset, tier, size in contexts:
            part = [c for c in cells if (c.group.dataset, c.group.tier, c.group.image_size) == (dataset, tier, size)]
            g0 = part[0].group
            metrics = [*primary_metrics(dataset, g0.protocol_variant), "box_recall@0.5"]
            metrics = [m for m in dict.fromkeys(metrics) if any(m in c.group.metrics for c in part)]
            context = f"{dataset} / {tier} / {size} px"
            for split in sorted({c.group.split for c in part}):
                rows = [
                    [c.family, c.layout, c.encoder + (f" [cfg {c.tag}]" if c.tag else ""), c.guidance_label,
                     " ".join(map(str, c.group.seeds)),
                     *(fmt_mean_std(st.mean, st.std) if (st := c.group.metrics.get(m)) else "" for m in metrics)]
                    for c in part if c.group.split == split
                ]  # fmt: skip
                self.add(
                    Table(["generator", "layout", "text encoder", "guidance", "seeds", *metrics], rows,
                          f"{context} / {split}", numeric=[False] * 5 + [True] * len(metrics))
                )  # fmt: skip
            ns = sorted({st.n for c in part for m in metrics if (st := c.group.metrics.get(m)) and st.n}) or [0]
            n_text = f"n = {ns[0]} seed(s) per bar" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]} seeds per bar (in each bar's label)"
            skipped = [g for g in left if (g.dataset, g.tier, g.image_size) == (dataset, tier, size)]
            title = f"Text encoder × generator × guidance: {context}"
            caption = (
                f"{title}. Each method's rows with only the text encoder (method.text_encoder) and the sampling-time "
                f"guidance (method.guidance and its weights) differing from its tier's defaults, at each layout it was "
                f"evaluated with; bar = mean over seeds, error bar = std (>= 2 seeds); {n_text}; generator = the "
                f"method's family. {len(skipped)} other row(s) changed further settings or are unranked: left out."
            )
            self.figure(generator_grid_plot(part, metrics, title), f"generator_grid_{dataset}_{tier}_{size}", caption)

    @staticmethod
    def _ablation_table(axis: str, series: list[Series], numeric: bool) -> Table:
        metrics = sorted({m for s in series for _, g in s.points for m in g.metrics})
        dataset, tier, size = series[0].dataset, series[0].tier, series[0].image_size
        caption = f"{dataset} / {tier} / {size} px"
        if numeric:
            header = ["series", "split", "layout", axis, "seeds", *metrics, "s/image"]
            rows = []
            for s in series:
                for v, g in s.points:
                    value = f"{v[0]} {v[1]} steps" if axis == "sampler_steps" else str(v)
                    t = g.sample_s_per_image
                    rows.append(
                        [
                            s.label,
                            s.split,
                            s.layout or "-",
                            value,
                            " ".join(map(str, g.seeds)),
                            *(
                                fmt_mean_std(g.metrics[m].mean, g.metrics[m].std) if m in g.metrics else ""
                                for m in metrics
                            ),
                            f"{t.mean:.3g}" if t.mean is not None else "",
                        ]
                    )
            return Table(header, rows, caption, numeric=[False] * 5 + [True] * (len(metrics) + 1))
        values = sorted({str(v) for s in series for v, _ in s.points})
        header = ["series", "split", "layout", "metric", *(f"{axis}={v}" for v in values)]
        rows = []
        for s in series:
            by_value = {str(v): g for v, g in s.points}
            for m in metrics:
                cells = []
                for v in values:
                    g = by_value.get(v)
                    st = g.metrics.get(m) if g is not None else None
                    cells.append(
                        f"{fmt_mean_std(st.mean, st.std)} (s {' '.join(map(str, g.seeds))})"
                        if st and g
                        else ""
                    )
                rows.append([s.label, s.split, s.layout or "gt/pred", m, *cells])
        return Table(header, rows, caption, numeric=[False] * 4 + [True] * len(values))

    def curves(self, runs: list[RunResult]) -> None:
        from benchmark.report.figures import training_curves

        self.add(Heading(2, "Training curves", "training"))
        trained: dict[tuple[str, str, int], dict[str, dict[str, RunResult]]] = {}
        for r in runs:
            if not r.train_history:
                continue
            key = (
                r.checkpoint["sha256"] if r.checkpoint else r.run_id
            )  # one training, evaluated more than once
            per = trained.setdefault((r.dataset, r.tier, r.image_size), {}).setdefault(r.method, {})
            if key not in per or len(r.train_history) > len(per[key].train_history or []):
                per[key] = r
        if not trained:
            self.note(
                "No result records a training history (methods without training, or results written before "
                "the history was recorded)."
            )
            return
        for (dataset, tier, size), per_method in sorted(trained.items()):
            by_method = {m: sorted(v.values(), key=lambda r: r.seed) for m, v in sorted(per_method.items())}
            title = f"Training losses: {dataset} / {tier} / {size} px"
            self.figure(training_curves(by_method, title), f"training_{dataset}_{tier}_{size}", title)

    def grids(self, runs: list[RunResult], all_runs: list[RunResult]) -> None:
        from benchmark.report.figures import slug
        from benchmark.report.grids import Column, load_samples, sample_grid
        from benchmark.train import build_dataset

        self.add(Heading(2, "Samples", "samples"))
        self.add(
            Para(
                f"The first {self.max_graphs} graphs of each evaluation split: the scene graph (objects as nodes, "
                "relations as edges), the ground-truth image and the first sample of each method (its lowest "
                "seed, predicted layout where evaluated, earliest evaluation), read from the samples file that "
                "the result names (older results: <run folder>/samples/<split>.npz, written by the latest "
                "evaluation of that checkpoint).",
                "small",
            )
        )
        contexts = sorted({(r.dataset, r.tier, r.image_size, ev.split) for r in runs for ev in r.evaluations})
        if not contexts:
            self.note("No ranked results: no samples to show.")
        for dataset, tier, size, split in contexts:
            title = f"{dataset} / {tier} / {split}, {size} px"
            self.add(Heading(3, title))
            try:
                ds = build_dataset(dataset, split, size)
                items = [ds[i] for i in range(min(self.max_graphs, len(ds)))]
            except Exception as e:  # a dataset that is not prepared here: say so, keep building
                self.note(f"{title}: ground truth unavailable ({type(e).__name__}: {e}); grid skipped.")
                continue
            columns, used = [], []
            mine = [
                r
                for r in runs
                if (r.dataset, r.tier, r.image_size) == (dataset, tier, size)
                and any(ev.split == split for ev in r.evaluations)
            ]
            for method in sorted({r.method for r in mine}):
                first = min(
                    (r for r in mine if r.method == method),
                    key=lambda r: (
                        r.seed,
                        next(ev.layout for ev in r.evaluations if ev.split == split) != "pred",
                        parse_created(r.created),
                        r.run_id,
                    ),
                )
                named = next((ev.samples for ev in first.evaluations if ev.split == split and ev.samples), None)
                run_dir = self._run_dir(first)
                if run_dir is None:
                    self.note(
                        f"{title}: {method}: run folder of {first.checkpoint['path'] if first.checkpoint else '?'} "
                        f"not found (result {first.run_id}); column skipped."
                    )
                    continue
                path = run_dir / (named or f"samples/{split}.npz")
                if not path.is_file():
                    self.note(f"{title}: {method}: {path} not found; column skipped.")
                    continue
                writer = first if named else self._sample_writer(first, all_runs, split)
                if writer.random_init:
                    self.note(
                        f"{title}: {method}: {path} was last written by a random-init evaluation; column skipped."
                    )
                    continue
                try:
                    images = load_samples(path, items)
                except (ValueError, OSError, KeyError) as e:
                    self.note(f"{title}: {method}: {e}; column skipped.")
                    continue
                layout = next(ev.layout for ev in writer.evaluations if ev.split == split)
                columns.append(Column(f"{method}\nseed {writer.seed}, {layout} layout", images))
                used.append(f"{method}: {writer.run_id}")
            caption = f"{title}: " + (
                "; ".join(used) if used else "ground truth only (no method's samples found)"
            )
            self.figure(
                sample_grid(items, ds.vocab, columns, title),
                slug("grid", dataset, tier, size, split),
                caption,
            )

    def _run_dir(self, r: RunResult) -> Path | None:
        if not r.checkpoint:
            return None
        rel = Path(r.checkpoint["path"]).parent
        candidates = (
            [rel]
            if rel.is_absolute()
            else [base / rel for base in (*self.runs_roots, Path.cwd(), self.results.parent)]
        )
        candidates += [root / rel.name for root in self.runs_roots]
        return next((c for c in candidates if c.is_dir()), None)

    @staticmethod
    def _sample_writer(first: RunResult, all_runs: list[RunResult], split: str) -> RunResult:
        """The latest result evaluated from the same checkpoint file: it wrote the samples file last."""
        path = first.checkpoint["path"] if first.checkpoint else None
        same = [
            r
            for r in all_runs
            if r.checkpoint
            and r.checkpoint["path"] == path
            and any(ev.split == split for ev in r.evaluations)
        ]
        return max(same or [first], key=lambda r: (parse_created(r.created), r.run_id))

    def run_files(
        self, runs: list[RunResult], excluded: list[RunResult], bad: list[tuple[Path, str]]
    ) -> None:
        self.add(Heading(2, "Result files", "runs"))
        rows = []
        for r in sorted(runs, key=lambda r: (r.dataset, r.tier, r.method, r.seed, r.created)):
            evs = ", ".join(f"{ev.split}/{ev.layout}" for ev in r.evaluations)
            run_dir = self._run_dir(r)
            rows.append(
                [
                    r.filename,
                    r.method,
                    r.dataset,
                    r.tier,
                    str(r.seed),
                    r.created,
                    str(r.environment.get("git_commit", "unknown"))[:12],
                    f"v{r.protocol['version']}",
                    evs,
                    f"{r.timings['train_s']:.1f}",
                    "found" if run_dir else "missing",
                ]
            )
        self.add(
            Table(
                [
                    "file",
                    "method",
                    "dataset",
                    "tier",
                    "seed",
                    "created",
                    "commit",
                    "protocol",
                    "evaluations",
                    "train s",
                    "run folder",
                ],
                rows,
                numeric=[False] * 4 + [True] + [False] * 4 + [True],
            )
        )
        if excluded:
            self.add(
                Para("Excluded (randomly initialised weights; never ranked):", "small"),
                Bullets(
                    [
                        f"{r.filename}: {weights_summary([w for w in r.weights if w.random_init]) or 'flagged'}"
                        for r in excluded
                    ]
                ),
            )
        if bad:
            self.add(
                Para("Malformed result files (skipped):", "small"),
                Bullets([f"{p.name}: {e}" for p, e in bad]),
            )


def build_report(
    results_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    runs_roots: Sequence[str | Path] = (),
    max_graphs: int = 4,
    echo: Callable[[str], None] | None = None,
) -> Report:
    """Write ``report.md``, ``report.html`` and ``figures/`` under ``out_dir`` (default ``reports/``).

    ``runs_roots``: extra folders where run folders (checkpoints and samples) are looked for, when a result's
    recorded checkpoint path is relative to another working directory or the runs were moved.
    """
    import warnings

    results = Path(results_dir or default_results_dir())
    out = Path(out_dir or reports_dir())
    b = _Builder(out, results, [Path(p) for p in runs_roots], max_graphs)
    if b.fig_dir.is_dir():
        shutil.rmtree(b.fig_dir)  # derived output: never keep a stale figure
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # malformed files are listed in the report
        all_runs, bad = scan_runs(results)
    runs = [r for r in all_runs if not r.unranked]
    excluded = [r for r in all_runs if r.unranked]
    groups = group_runs(runs)
    b.provenance(runs, excluded, bad)
    b.leaderboard(groups, runs)
    b.bars(groups)
    b.ablations(groups)
    b.curves(runs)
    b.grids(runs, all_runs)
    b.reported()  # published numbers after everything reproduced
    b.run_files(runs, excluded, bad)
    out.mkdir(parents=True, exist_ok=True)
    from benchmark.io import atomic_write_text

    md, html = out / "report.md", out / "report.html"
    atomic_write_text(md, render.to_markdown(TITLE, b.blocks))
    atomic_write_text(html, render.to_html(TITLE, b.blocks))
    (echo or print)(
        f"report: {html} and {md}, {len(b.figures)} figure(s) in {b.fig_dir}"
        + (f"; {len(b.notes)} note(s) on missing data" if b.notes else "")
    )
    return Report(md, html, b.figures, b.notes)
