"""Facts the tables need beyond the result files: which metric produced a value (for schema-1 files), the
protocol's primary metrics, and the tier's default configuration that variant labels are measured from.

All of it is read from the registry's parse (no plug-in imports) and the protocol files, except
:func:`tier_defaults`, which imports the one method module to read its ``Config`` defaults.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from benchmark import registry


def producer(key: str) -> tuple[str | None, str | None]:
    """(registered metric, its declared mode) that reports value ``key``: the metric whose declared
    ``outputs`` name it, else the metric of that name; (None, None) when no registered metric does."""
    entries = registry.entries()["metric"]
    name = next((n for n, e in entries.items() if key in e.outputs), key if key in entries else None)
    return (name, entries[name].mode) if name else (None, None)


@cache
def primary_metrics(dataset: str, variant: str = "") -> tuple[str, ...]:
    """The value names the dataset's protocol ranks by, in order (``"primary"`` of its protocol file); the
    first is the ranking metric. Empty when the protocol cannot be read here."""
    from benchmark.protocol import load_protocol

    try:
        return tuple(load_protocol(dataset, variant).get("primary", ()))
    except (OSError, ValueError):
        return ()


def flatten_config(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"eval": {"layout": "gt"}}`` -> ``{"eval.layout": "gt"}`` (lists become tuples, so values hash); a method
    field under its old name (``benchmark.config.RENAMED_FIELDS``, e.g. ``lr``) reads as its new name."""
    from benchmark.config import RENAMED_FIELDS

    out: dict[str, Any] = {}
    for k, v in d.items():
        if prefix == "method_cfg.":
            k = RENAMED_FIELDS.get(k, k)
        if isinstance(v, dict):
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


@cache
def tier_defaults(
    method: str, dataset: str, tier: str, protocol: str = "", version: str = ""
) -> dict[str, Any] | None:
    """The flattened configuration ``run --method M --dataset D --tier T`` resolves with no ``--set``: the
    reference variant labels are measured from. ``version``: as the tier was under that protocol version (see
    ``Method.tier_history``). None when it cannot be resolved here (unknown method)."""
    from benchmark.config import build_run_config

    try:
        cfg = build_run_config(method, dataset, tier, protocol=protocol, protocol_version=version)
    except (KeyError, ValueError, OSError, ImportError):
        return None
    return flatten_config(cfg.to_dict())


def config_changes(
    config: dict[str, Any], method: str, dataset: str, tier: str, protocol: str = "", version: str = ""
) -> dict[str, Any] | None:
    """The flattened fields of ``config`` (a ``RunConfig.to_dict()``) whose value differs from the tier's
    defaults (JSON values; under protocol ``version`` when given); None when the defaults cannot be resolved
    here. Seed and device are not changes."""
    defaults = tier_defaults(method, dataset, tier, protocol, version)
    if defaults is None:
        return None
    same = lambda a, b: json.dumps(a, default=str) == json.dumps(b, default=str)  # noqa: E731
    flat = flatten_config(config)
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in sorted(flat.items())
        if k in defaults and k not in ("seed", "device") and not same(v, defaults[k])
    }
