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
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from benchmark import registry
from benchmark.results import SeedGroup, Stats
from benchmark.results.metadata import flatten_config


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
    # Fields some results of a series predate are left out of its comparison: a run written before a field
    # existed still pairs with the runs that keep the field's default.
    labels = [generator_family(g) if axis.name == "text_encoder" else g.method for g in groups]
    shared: dict[tuple[Any, ...], set[str]] = {}
    for g, label in zip(groups, labels):
        ctx = (g.dataset, g.tier, g.protocol_version, label)
        shared[ctx] = shared[ctx] & g.config.keys() if ctx in shared else set(g.config)
    for g, label in zip(groups, labels):
        if axis.requires and axis.requires not in g.config:
            continue
        keep = shared[(g.dataset, g.tier, g.protocol_version, label)]
        rest = tuple(
            sorted(
                (k, json.dumps(v, default=str)) for k, v in g.config.items() if k not in axis.fields and k in keep
            )
        )
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


# --- the drop from ground-truth to predicted layout, per method ---------------------------------------------


@dataclass(frozen=True)
class LayoutDrop:
    """One method (and variant) on one split: the metric under ground-truth and under predicted boxes.

    ``drop`` = mean(pred) - mean(gt), each mean over the seeds evaluated with that layout; ``drop_std`` = the
    sample standard deviation over the seeds evaluated with both layouts of the per-seed difference pred - gt
    (the two evaluations of one seed come from one checkpoint, so they pair), None for fewer than two such
    seeds. A method evaluated with one layout only has ``drop`` None and the other side None.
    """

    label: str
    method: str
    variant: str
    split: str
    metric: str
    higher_is_better: bool
    gt: Stats | None
    pred: Stats | None
    drop: float | None
    drop_std: float | None
    paired_seeds: tuple[int, ...]

    @property
    def only(self) -> str:
        """"gt" or "pred" for a method evaluated with one layout; "" with both."""
        return "" if (self.gt is None) == (self.pred is None) else ("gt" if self.pred is None else "pred")


def _seed_values(g: SeedGroup, metric: str) -> dict[int, float]:
    out = {}
    for r, ev in zip(g.runs, g.evaluations):
        m = ev.metrics.get(metric)
        if m is not None and m.value is not None:
            out[r.seed] = m.value
    return out


LAYOUT_ONLY = frozenset({"eval.layout", "method_cfg.layout_from"})  # settings that change only predicted boxes


def _rest(g: SeedGroup, leave_out: frozenset[str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, json.dumps(v, default=str)) for k, v in g.config.items() if k not in leave_out))


def layout_drops(groups: Sequence[SeedGroup], metrics: Sequence[str]) -> list[LayoutDrop]:
    """Every method's ground-truth -> predicted layout drop for ``metrics`` (see :class:`LayoutDrop`).

    A pred group pairs with the gt group that agrees with it on everything (dataset, tier, split, size,
    protocol, flags, config) but ``eval.layout``, else on everything but the settings that only change the
    predicted boxes (:data:`LAYOUT_ONLY`: ``method.layout_from`` given at evaluation) when one gt group does.
    A group with no partner is listed as evaluated with one layout when it is the method's default
    configuration (no variant, no flag) and the method has no pair on that split; other unpaired variants are
    left out (the ablation tables show them). The label is the method, plus the pred side's variant.
    """
    buckets: dict[tuple[Any, ...], list[SeedGroup]] = {}
    for g in groups:
        key = (g.dataset, g.tier, g.image_size, g.protocol_version, g.protocol_variant, g.split, g.method, g.flags,
               _rest(g, LAYOUT_ONLY))  # fmt: skip
        buckets.setdefault(key, []).append(g)
    out = []
    for same in buckets.values():
        gts = [g for g in same if g.layout == "gt"]
        pairs: list[tuple[SeedGroup | None, SeedGroup | None]] = []
        for p in (g for g in same if g.layout == "pred"):
            exact = [g for g in gts if _rest(g, frozenset({"eval.layout"})) == _rest(p, frozenset({"eval.layout"}))]
            pairs.append((exact[0] if exact else gts[0] if len(gts) == 1 else None, p))
        used = {id(gt) for gt, _ in pairs}
        pairs += [(g, None) for g in gts if id(g) not in used]
        for gt, pred in pairs:
            side = pred or gt
            variant = side.variant
            label = side.method + (f" ({variant.replace('method.', '')})" if variant else "") + (" †" if side.flags else "")
            for metric in metrics:
                sides = [x if x is not None and x.metrics.get(metric, Stats(None, None, 0)).mean is not None else None
                         for x in (gt, pred)]  # fmt: skip
                if sides == [None, None]:
                    continue
                g_st, p_st = (x.metrics[metric] if x is not None else None for x in sides)
                higher = next(x.higher[metric] for x in sides if x is not None)
                drop = drop_std = None
                paired: tuple[int, ...] = ()
                if g_st is not None and p_st is not None:
                    drop = p_st.mean - g_st.mean
                    gv, pv = _seed_values(sides[0], metric), _seed_values(sides[1], metric)
                    paired = tuple(sorted(set(gv) & set(pv)))
                    drop_std = Stats.of([pv[s] - gv[s] for s in paired]).std
                out.append(LayoutDrop(label, side.method, variant, side.split, metric, higher, g_st, p_st, drop,
                                      drop_std, paired))  # fmt: skip
    paired_methods = {(d.split, d.method) for d in out if not d.only}
    out = [d for d in out if not d.only or (d.label == d.method and (d.split, d.method) not in paired_methods)]
    return sorted(out, key=lambda d: (d.split, d.metric, d.only != "", d.label))


# --- text encoder x generator family x sampling-time guidance -----------------------------------------------

ENCODER_FIELDS = frozenset({"method", "method_cfg.text_encoder", "method_cfg.text_encoder_weights"})
GUIDANCE_KINDS = ("none", "box", "clip", "box+clip")
GUIDANCE_TERMS = frozenset({"method_cfg.guidance", "method_cfg.guidance_box_weight", "method_cfg.guidance_clip_weight"})


def is_guidance_field(key: str) -> bool:
    """Sampling-time guidance settings (``method.guidance``, its weights, cutouts, schedule, CLIP weights);
    classifier-free guidance (``method.guidance_scale``) is another setting."""
    return key.startswith("method_cfg.guidance") and key != "method_cfg.guidance_scale"


def guidance_of(config: dict[str, Any]) -> tuple[str, str]:
    """(kind, label) of a flattened config: kind in :data:`GUIDANCE_KINDS` from ``method.guidance`` and the
    weights of its two terms (a term with weight 0 is off: it reproduces the unguided samples); the label adds
    the weights, e.g. ``box w=1``, or names another guidance mode."""
    mode = config.get("method_cfg.guidance", "none") or "none"
    if mode == "none":
        return "none", "none"
    box, clip = (float(config.get(f"method_cfg.guidance_{t}_weight", 0.0) or 0.0) for t in ("box", "clip"))
    if mode != "scenegenie":
        return mode, mode
    kind = {(True, True): "box+clip", (True, False): "box", (False, True): "clip"}.get((box > 0, clip > 0), "none")
    weights = ", ".join(f"{t} w={w:g}" for t, w in (("box", box), ("clip", clip)) if w > 0)
    return kind, weights or "none (weights 0)"


@dataclass(frozen=True)
class Cell:
    """One seed group placed on the encoder x generator x guidance grid."""

    family: str
    encoder: str
    guidance: str  # a kind of GUIDANCE_KINDS (or another guidance mode's name)
    guidance_label: str
    layout: str
    group: SeedGroup
    tag: str = ""  # the config id, for rows otherwise alike (a setting the label does not show)

    @property
    def label(self) -> str:
        guided = "" if self.guidance_label == "none" else f", guided: {self.guidance_label}"
        return f"{self.family} · {self.layout} layout · {self.encoder}{guided}" + (f" [cfg {self.tag}]" if self.tag else "")


def _kind_order(kind: str) -> int:
    return GUIDANCE_KINDS.index(kind) if kind in GUIDANCE_KINDS else len(GUIDANCE_KINDS)


def generator_grid(groups: Sequence[SeedGroup]) -> tuple[list[Cell], list[SeedGroup]]:
    """(cells, left out): the groups whose only changes from their tier's defaults are the text encoder and
    the sampling-time guidance (and the layout, which is a coordinate of the cell), unflagged; the other
    groups are left out (they belong to other ablations). The encoder is ``method.text_encoder`` ("none" for
    a method without one: label embeddings or no text at all), the generator its family
    (:func:`generator_family`), guidance :func:`guidance_of`."""
    from benchmark.results import run_changes
    from benchmark.results.groups import LABEL_IGNORED

    cells, left = [], []
    for g in groups:
        changes = run_changes(g.runs[-1])
        other = [k for k in changes if k not in LABEL_IGNORED and k not in ENCODER_FIELDS and not is_guidance_field(k)]
        if other or g.flags:
            left.append(g)
            continue
        # the latest run's whole config: a weight kept at its default is not among the group's compared fields
        kind, label = guidance_of({**flatten_config(g.runs[-1].config), **g.config})
        extra = [f"{k.removeprefix('method_cfg.guidance_')}={v}" for k, v in sorted(changes.items())
                 if is_guidance_field(k) and k not in GUIDANCE_TERMS]  # e.g. cutouts=8, until=0.5
        if extra and kind != "none":
            label = ", ".join([label, *extra])
        encoder = str(g.config.get("method_cfg.text_encoder") or "none")
        cells.append(Cell(generator_family(g), encoder, kind, label, g.layout, g))
    cells.sort(key=lambda c: (c.group.split, c.family, c.layout, c.encoder, _kind_order(c.guidance), c.guidance_label))
    alike = Counter((c.group.split, c.label) for c in cells)  # e.g. another text_encoder_weights: add the config id
    cells = [replace(c, tag=c.group.config_id[:6]) if alike[c.group.split, c.label] > 1 else c for c in cells]
    return cells, left
