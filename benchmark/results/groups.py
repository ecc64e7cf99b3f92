"""Runs grouped over seeds: mean and sample standard deviation per metric, variant labels, flags and ranks.

A group's variant label lists the config fields where its runs differ from the tier's defaults (the config
``run`` resolves for that method, dataset and tier with no ``--set``; :func:`~benchmark.results.metadata.
tier_defaults`), so the same run gets the same label whatever else was run. A run whose budget
(:data:`BUDGET_KEYS`) differs from its tier is flagged ``off-protocol``; flagged groups are shown, never ranked.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmark.io import parse_utc
from benchmark.results.metadata import config_changes, flatten_config, primary_metrics
from benchmark.results.records import RunResult, SplitEvaluation

TIER_ORDER = ("smoke", "quick", "full")
# Config fields that cannot change the numbers of one split and metric; they are left out of the group key.
GROUP_IGNORED = frozenset(
    ("seed", "device", "train.num_workers", "train.log_every", "train.checkpoint_every", "eval.splits", "eval.metrics")
)
# Fields a variant label never shows: they are columns or table keys of their own.
LABEL_IGNORED = GROUP_IGNORED | {"method", "dataset", "tier", "protocol", "eval.layout", "eval.batch_size"}
# The protocol's budget: a run that changes one of these is off-protocol (shown, never ranked).
BUDGET_KEYS = ("train.steps", "train.batch_size", "image_size", "eval.num_graphs", "eval.samples_per_graph")
OFF_PROTOCOL = "off-protocol"


@dataclass(frozen=True)
class Stats:
    """Mean and sample standard deviation (``n - 1`` denominator) of the ``n`` available values.

    ``std`` is None for fewer than two values: one seed has no spread, and 0 would claim one.
    """

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        n = len(values)
        if n == 0:
            return cls(None, None, 0)
        mean = math.fsum(values) / n
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
        return cls(mean, std, n)


@dataclass(frozen=True)
class SeedGroup:
    """The runs of one configuration that differ only in the seed, for one split and layout.

    Key: (method, dataset, tier, split, layout, image size, protocol version and sha256, split version, run
    flags, an unfinished training stage (:func:`unfinished_stage`), the flattened config without
    :data:`GROUP_IGNORED`). A seed evaluated more than once counts once
    (its latest result). ``metrics[name]`` are the :class:`Stats` over seeds; ``higher[name]`` the metric's
    direction; ``modes[name]`` the implementation recorded with the values.
    """

    method: str
    dataset: str
    tier: str
    split: str
    layout: str
    image_size: int
    protocol_version: str
    split_version: str
    config: dict[str, Any]
    runs: tuple[RunResult, ...]
    evaluations: tuple[SplitEvaluation, ...]
    metrics: dict[str, Stats]
    higher: dict[str, bool]
    unavailable: dict[str, str]
    modes: dict[str, str]
    variant: str = ""
    flags: tuple[str, ...] = ()
    notes: str = ""
    protocol_variant: str = ""

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(r.seed for r in self.runs)

    @property
    def ranked(self) -> bool:
        return not self.flags

    @property
    def config_id(self) -> str:
        """The first 10 hex digits of the SHA-256 of the group's config (seed and device left out)."""
        return hashlib.sha256(json.dumps(sorted(self.config.items()), default=str).encode()).hexdigest()[:10]

    def _same(self, attr: str) -> int | str:
        vals = sorted({getattr(ev, attr) for ev in self.evaluations})
        return vals[0] if len(vals) == 1 else "/".join(map(str, vals))

    @property
    def num_graphs(self) -> int | str:
        return self._same("num_graphs")

    @property
    def samples_per_graph(self) -> int | str:
        return self._same("samples_per_graph")

    @property
    def n_real(self) -> int | str:
        return self._same("n_real")

    @property
    def n_generated(self) -> int | str:
        return self._same("n_generated")

    @property
    def sample_s_per_image(self) -> Stats:
        """Sampling seconds per generated image of each run: ``timings.sample_s`` / images over all its splits."""
        per = []
        for r in self.runs:
            n = sum(ev.n_generated for ev in r.evaluations)
            if n:
                per.append(r.timings["sample_s"] / n)
        return Stats.of(per)

    @property
    def git_commits(self) -> tuple[str, ...]:
        return tuple(sorted({str(r.environment.get("git_commit", "unknown"))[:12] for r in self.runs}))

    @property
    def metric_impl(self) -> str:
        """Each metric's recorded implementation, e.g. ``fid: clean-fid, clean mode, ...``."""
        return "; ".join(f"{m}: {self.modes[m]}" for m in sorted(self.metrics) if self.modes.get(m))

    @property
    def metric_mode(self) -> str:
        """How the numbers were measured: N real vs N generated, resolution, and each metric's implementation."""
        n, spg, px = self.n_generated, self.samples_per_graph, self.image_size
        return "; ".join(
            filter(None, [f"{self.n_real} real vs {n} generated ({spg}/graph), {px} px", self.metric_impl])
        )


def _fmt_value(v: Any) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, str) else v
    return text if len(text) <= 40 else text[:37] + "..."


def run_changes(r: RunResult) -> dict[str, Any]:
    """The run's flattened config fields that differ from its tier's defaults: the recorded
    ``config_changes``, else computed now against the tier as it was under the run's protocol version (empty
    when the defaults cannot be resolved here)."""
    if r.config_changes is not None:
        return r.config_changes
    protocol = str(r.config.get("protocol", ""))
    return config_changes(r.config, r.method, r.dataset, r.tier, protocol, str(r.protocol.get("version", ""))) or {}


def unfinished_stage(r: RunResult) -> str:
    """The training stage of the evaluated checkpoint when it is not the last stage of the run's plan (e.g. an
    evaluation after the first stage of a multi-stage method); "" otherwise, and for results that record no
    stages. Read with ``getattr``: the ``stage``/``stages`` fields are optional in the schema."""
    stage, stages = getattr(r, "stage", None), getattr(r, "stages", None)
    return stage if stage and stages and stage != stages[-1]["name"] else ""


def variant_of(r: RunResult) -> tuple[str, bool]:
    """(label, off-protocol) of a run: ``key=value`` for each config field that differs from the tier's
    defaults (``method_cfg.`` shown as ``method.``; :func:`run_changes`), and whether a :data:`BUDGET_KEYS`
    field is among them."""
    changes = run_changes(r)
    differ = [k for k in sorted(changes) if k not in LABEL_IGNORED]
    label = ", ".join(f"{k.replace('method_cfg.', 'method.', 1)}={_fmt_value(changes[k])}" for k in differ)
    if stage := unfinished_stage(r):  # never grouped or ranked with the finished runs of the same config
        label = ", ".join(filter(None, [f"stage={stage}", label]))
    return label, any(k in BUDGET_KEYS for k in differ) or bool(stage)


def group_runs(runs: Sequence[RunResult]) -> list[SeedGroup]:
    """Group evaluations over seeds (see :class:`SeedGroup`); random-init runs are never grouped (never shown)."""
    buckets: dict[tuple[Any, ...], dict[int, list[tuple[RunResult, SplitEvaluation]]]] = {}
    # Config fields added after a result was written are missing from it. A field that some runs of a
    # (method, dataset, tier) lack is compared only where a run recorded it as a change from the tier's defaults,
    # so a result written before the field existed groups with a newer run that keeps the field's default.
    flat = [flatten_config(r.config) for r in runs]
    common: dict[tuple[str, str, str], set[str]] = {}
    for r, f in zip(runs, flat):
        fam = (r.method, r.dataset, r.tier)
        common[fam] = common[fam] & f.keys() if fam in common else set(f)
    for r, f in zip(runs, flat):
        if r.random_init:
            continue
        changed = set(r.config_changes or ())
        shared = common[(r.method, r.dataset, r.tier)]
        cfg = {k: v for k, v in f.items() if k not in GROUP_IGNORED and (k in shared or k in changed)}
        for ev in r.evaluations:
            key = (
                r.method, r.dataset, r.tier, ev.split, ev.layout, r.image_size, r.protocol["version"],
                r.protocol["sha256"], r.splits[ev.split]["version"], r.flags, unfinished_stage(r),
                tuple(sorted(cfg.items(), key=lambda kv: kv[0])),
            )  # fmt: skip
            buckets.setdefault(key, {}).setdefault(r.seed, []).append((r, ev))
    groups = []
    for key, by_seed in buckets.items():
        chosen, notes = [], []
        for seed in sorted(by_seed):
            tries = sorted(by_seed[seed], key=lambda x: (parse_utc(x[0].created), x[0].run_id))
            chosen.append(tries[-1])
            if len(tries) > 1:
                notes.append(f"seed {seed}: {len(tries)} results, latest {tries[-1][0].run_id} used")
        names = sorted({n for _, ev in chosen for n in ev.metrics})
        metrics, higher, unavailable, modes = {}, {}, {}, {}
        for n in names:
            vals = [ev.metrics[n] for _, ev in chosen if n in ev.metrics]
            higher[n] = vals[0].higher_is_better
            modes[n] = "; ".join(sorted({m.mode for m in vals if m.mode}))
            metrics[n] = Stats.of([m.value for m in vals if m.value is not None])
            reasons = sorted({m.unavailable for m in vals if m.value is None and m.unavailable})
            if reasons:
                unavailable[n] = "; ".join(reasons)
            if 0 < metrics[n].n < len(chosen):
                notes.append(f"{n}: {metrics[n].n} of {len(chosen)} seeds")
        method, dataset, tier, split, layout, size, pv, _, sv, flags, _, cfg = key
        variant, off = variant_of(chosen[-1][0])
        groups.append(SeedGroup(
            method, dataset, tier, split, layout, size, pv, sv, dict(cfg), tuple(r for r, _ in chosen),
            tuple(ev for _, ev in chosen), metrics, higher, unavailable, modes, variant,
            tuple(flags) + ((OFF_PROTOCOL,) if off else ()), "; ".join(notes), str(dict(cfg).get("protocol", "")),
        ))  # fmt: skip
    return sorted(groups, key=group_sort_key)


def group_sort_key(g: SeedGroup) -> tuple[Any, ...]:
    tier = TIER_ORDER.index(g.tier) if g.tier in TIER_ORDER else len(TIER_ORDER)
    return (g.dataset, g.split, tier, g.tier, g.method, g.layout, g.image_size, g.variant)


def metric_columns(groups: Sequence[SeedGroup]) -> list[tuple[str, bool]]:
    """(metric, higher_is_better) over all groups, sorted by name: the metric list comes from the results."""
    return sorted({(n, g.higher[n]) for g in groups for n in g.metrics})


def table_key(g: SeedGroup) -> tuple[Any, ...]:
    """Groups ranked against each other: same dataset, split, tier, resolution, layout and protocol version."""
    return (g.dataset, g.split, g.tier, g.image_size, g.layout, g.protocol_version, g.protocol_variant)


def metric_order(rows: Sequence[SeedGroup]) -> list[str]:
    """The metrics with a value in some row: the protocol's primary ones first (its order), then by name.
    The first one ranks the rows."""
    available = sorted({n for g in rows for n, s in g.metrics.items() if s.mean is not None})
    primary = [n for n in primary_metrics(rows[0].dataset, rows[0].protocol_variant) if n in available] if rows else []
    return primary + [n for n in available if n not in primary]


def rank_groups(groups: Sequence[SeedGroup], metric: str | None) -> list[tuple[int | None, SeedGroup]]:
    """Unflagged groups with a value of ``metric``, best first, numbered 1, 2, ...; then the rest, unranked
    (None), in their usual order."""
    ranked = [g for g in groups if g.ranked and metric and g.metrics.get(metric, Stats(None, None, 0)).mean is not None]
    if ranked:
        sign = -1.0 if ranked[0].higher[metric] else 1.0
        ranked.sort(key=lambda g: (sign * g.metrics[metric].mean, group_sort_key(g)))
    ids = {id(g) for g in ranked}
    rest = [g for g in groups if id(g) not in ids]
    return [(i + 1, g) for i, g in enumerate(ranked)] + [(None, g) for g in rest]
