"""Versioned evaluation protocols and tier budgets, read from ``datasets/<name>/protocol.json``.

A protocol file is data, never changed once committed (a change means a new ``version``)::

    {"dataset": "shapes", "version": "1.0", "mask_size": 16,
     "eval_splits": ["test", "test_unseen"], "metrics": ["fid", "kid", "object_acc"],
     "tiers": {"smoke": {"image_size": 32, "train": {...}, "eval": {"num_graphs": 8, "samples_per_graph": 1}}, ...}}

``"primary"`` (optional) lists the metric values the leaderboard shows first, ranking by the first (e.g.
``["fid", "kid", "object_acc_small", "sg_consistency"]``). It changes how results are presented, never a
number, so it is left out of the protocol's ``sha256`` and needs no new version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.io import read_json, sha256_json
from benchmark.paths import assets_dir

TIERS = ("smoke", "quick", "full")
_REQUIRED = ("dataset", "version", "eval_splits", "metrics", "tiers")
PRESENTATION = ("primary",)  # fields that change no number: not hashed


def dataset_folder(dataset: str) -> Path:
    """The data folder of a dataset: ``datasets/<dataset>/`` of the suite, or for a dataset registered by an
    installed plug-in, ``datasets/<dataset>/`` beside the plug-in module that registers it."""
    from benchmark import registry

    entry = registry.entries()["dataset"].get(dataset)
    if entry is not None and entry.plugin:
        return Path(entry.path).parent / "datasets" / dataset
    return assets_dir() / dataset


def protocol_path(dataset: str, variant: str = "") -> Path:
    """``datasets/<dataset>/protocol.json``, or ``protocol_<variant>.json`` for a named variant."""
    return dataset_folder(dataset) / (f"protocol_{variant}.json" if variant else "protocol.json")


def protocol_variants(dataset: str) -> list[str]:
    return sorted(p.stem[len("protocol_") :] for p in dataset_folder(dataset).glob("protocol_*.json"))


def load_protocol(dataset: str, variant: str = "") -> dict[str, Any]:
    """Load and check a protocol file; ``train_split`` defaults to "train"."""
    path = protocol_path(dataset, variant)
    if variant and not path.is_file():
        valid = ", ".join(protocol_variants(dataset)) or "(none)"
        raise ValueError(f"unknown protocol variant {variant!r} of {dataset}; valid variants: {valid}")
    proto = read_json(path, "protocol file")
    missing = [k for k in _REQUIRED if k not in proto]
    if missing:
        raise ValueError(f"protocol file {path}: missing field(s) {missing}")
    for tier in TIERS:
        if tier not in proto["tiers"]:
            raise ValueError(f"protocol file {path}: field 'tiers' lacks tier {tier!r}")
    primary = proto.get("primary", [])
    if not isinstance(primary, list) or not all(isinstance(p, str) and p for p in primary):
        raise ValueError(f"protocol file {path}: field 'primary' must be a list of metric value names")
    proto.setdefault("train_split", "train")
    proto["sha256"] = sha256_json({k: v for k, v in proto.items() if k != "sha256" and k not in PRESENTATION})
    return proto


def tier_settings(proto: dict[str, Any], tier: str) -> dict[str, Any]:
    if tier not in proto["tiers"]:
        raise ValueError(f"unknown tier {tier!r}; valid tiers: {', '.join(proto['tiers'])}")
    return proto["tiers"][tier]
