"""Ablations found in the results: seed groups that differ in one studied setting and in nothing else.

A group's key is its config without the seed (:class:`benchmark.results.SeedGroup`). For an axis with config
fields ``F``, two groups belong to one series when they agree on dataset, tier, split, image size, protocol,
(layout, unless the axis is the layout) and on every config field outside ``F``; a series with two or more
distinct values of ``F`` is an ablation. Nothing is hard-coded about which methods exist: the text-encoder
axis compares the methods of one *generator family*, the family the run recorded (the presets of one method,
:func:`benchmark.registry.register_presets`: ``sg2im`` / ``sg2im_minilm`` -> ``sg2im``; ``learned_ddpm`` /
``minilm_ddpm`` -> ``ddpm``), or for results written before families were recorded, the registered one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmark import registry
from benchmark.results import SeedGroup


@dataclass(frozen=True)
class Axis:
    name: str
    title: str
    fields: frozenset[str]  # flattened config keys that vary along the axis
    numeric: bool  # x is a number (line plot) or a category (grouped bars)
    requires: str = ""  # a config key the group must have for the axis to apply


AXES = (
    Axis(
        "text_encoder",
        "Text encoder by generator",
        frozenset({"method", "method_cfg.text_encoder", "method_cfg.text_encoder_weights"}),
        False,
        "method_cfg.text_encoder",
    ),
    Axis(
        "use_layout",
        "With and without a layout (method.use_layout)",
        frozenset({"method_cfg.use_layout"}),
        False,
        "method_cfg.use_layout",
    ),
    Axis(
        "eval_layout",
        "Ground-truth vs predicted layout at evaluation (eval.layout)",
        frozenset({"eval.layout"}),
        False,
    ),
    Axis(
        "guidance_scale",
        "Classifier-free guidance scale (method.guidance_scale)",
        frozenset({"method_cfg.guidance_scale"}),
        True,
        "method_cfg.guidance_scale",
    ),
    Axis(
        "sampler_steps",
        "Sampler steps against the metrics and the time per image",
        frozenset({"method_cfg.sampler", "method_cfg.sample_steps", "method_cfg.ddim_eta"}),
        True,
        "method_cfg.sample_steps",
    ),
)


@dataclass
class Series:
    """Groups along one axis, everything else equal. ``points`` are (value, group), sorted by value.

    ``line`` splits a numeric series into lines (the sampler for ``sampler_steps``); ``label`` names the series
    (the generator family for text encoders, else the method).
    """

    axis: Axis
    dataset: str
    tier: str
    split: str
    layout: str
    image_size: int
    label: str
    points: list[tuple[Any, SeedGroup]] = field(default_factory=list)

    @property
    def context(self) -> str:
        lay = "" if self.axis.name == "eval_layout" else f", {self.layout} layout"
        return f"{self.dataset} / {self.tier} / {self.split}{lay}, {self.image_size} px"

    def lines(self) -> dict[str, list[tuple[Any, SeedGroup]]]:
        if self.axis.name != "sampler_steps":
            return {self.label: self.points}
        out: dict[str, list[tuple[Any, SeedGroup]]] = {}
        for v, g in self.points:
            sampler, _, eta = v
            name = f"{self.label} {sampler}" + (f" eta={eta}" if sampler == "ddim" else "")
            out.setdefault(name, []).append((v[1], g))
        return out


def generator_family(g: SeedGroup) -> str:
    """The family its runs recorded, else the registered family of its method (a method unknown to the
    registry is its own family)."""
    recorded = {r.family for r in g.runs if r.family}
    return recorded.pop() if len(recorded) == 1 else registry.family(g.method)


def _value(axis: Axis, g: SeedGroup) -> Any:
    c = g.config
    if axis.name == "text_encoder":
        return c["method_cfg.text_encoder"]
    if axis.name == "eval_layout":
        return g.layout
    if axis.name == "sampler_steps":
        return (
            c.get("method_cfg.sampler", ""),
            c["method_cfg.sample_steps"],
            c.get("method_cfg.ddim_eta", 0.0),
        )
    return c[next(iter(axis.fields))]


def _sortable(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return (2, tuple(_sortable(x) for x in v), "")
    return (
        (0, v, "")
        if isinstance(v, (int, float)) and not isinstance(v, bool)
        else (1, 0, json.dumps(v, default=str))
    )


def detect(groups: Sequence[SeedGroup], axis: Axis) -> list[Series]:
    """Every series of ``axis`` with at least two distinct values, in a stable order."""
    buckets: dict[tuple[Any, ...], Series] = {}
    for g in groups:
        if axis.requires and axis.requires not in g.config:
            continue
        rest = tuple(
            sorted((k, json.dumps(v, default=str)) for k, v in g.config.items() if k not in axis.fields)
        )
        if axis.name == "text_encoder":
            label = generator_family(g)
        else:
            label = g.method
        layout = "" if axis.name == "eval_layout" else g.layout
        key = (g.dataset, g.tier, g.split, layout, g.image_size, g.protocol_version, label, rest)
        s = buckets.setdefault(key, Series(axis, g.dataset, g.tier, g.split, layout, g.image_size, label))
        s.points.append((_value(axis, g), g))
    out = []
    for s in buckets.values():
        if len({json.dumps(v, default=str) for v, _ in s.points}) < 2:
            continue
        s.points.sort(key=lambda p: _sortable(p[0]))
        out.append(s)
    _disambiguate(out)
    return sorted(out, key=lambda s: (s.dataset, s.tier, s.split, s.layout, s.image_size, s.label))


def _disambiguate(series: list[Series]) -> None:
    """Series with the same context and label (different configs otherwise) get their config id appended."""
    seen: dict[tuple[Any, ...], list[Series]] = {}
    for s in series:
        seen.setdefault((s.dataset, s.tier, s.split, s.layout, s.image_size, s.label), []).append(s)
    for same in seen.values():
        if len(same) > 1:
            for s in same:
                s.label = f"{s.label} [cfg {s.points[0][1].config_id[:6]}]"


def detect_all(groups: Sequence[SeedGroup]) -> dict[str, list[Series]]:
    return {a.name: detect(groups, a) for a in AXES}


def by_context(
    series: Sequence[Series], key: Callable[[Series], Any] | None = None
) -> dict[Any, list[Series]]:
    """Series grouped by (dataset, tier, image size) (or ``key``), order kept."""
    key = key or (lambda s: (s.dataset, s.tier, s.image_size))
    out: dict[Any, list[Series]] = {}
    for s in series:
        out.setdefault(key(s), []).append(s)
    return out
