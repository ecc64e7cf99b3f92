"""Versioned evaluation protocols and tier budgets, read from ``datasets/<name>/protocol.json``.

A protocol file is data, never changed once committed (a change means a new ``version``)::

    {"dataset": "shapes", "version": "1.0", "mask_size": 16,
     "eval_splits": ["test", "test_unseen"], "metrics": ["fid", "kid", "object_acc"],
     "tiers": {"smoke": {"image_size": 32, "train": {...}, "eval": {"num_graphs": 8, "samples_per_graph": 1}}, ...}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.io import read_json, sha256_json
from benchmark.paths import assets_dir

TIERS = ("smoke", "quick", "full")
_REQUIRED = ("dataset", "version", "eval_splits", "metrics", "tiers")


def protocol_path(dataset: str) -> Path:
    return assets_dir() / dataset / "protocol.json"


def load_protocol(dataset: str) -> dict[str, Any]:
    path = protocol_path(dataset)
    proto = read_json(path, "protocol file")
    missing = [k for k in _REQUIRED if k not in proto]
    if missing:
        raise ValueError(f"protocol file {path}: missing field(s) {missing}")
    for tier in TIERS:
        if tier not in proto["tiers"]:
            raise ValueError(f"protocol file {path}: field 'tiers' lacks tier {tier!r}")
    proto["sha256"] = sha256_json({k: v for k, v in proto.items() if k != "sha256"})
    return proto


def tier_settings(proto: dict[str, Any], tier: str) -> dict[str, Any]:
    if tier not in proto["tiers"]:
        raise ValueError(f"unknown tier {tier!r}; valid tiers: {', '.join(proto['tiers'])}")
    return proto["tiers"][tier]
