"""Where things live: committed assets (``datasets/``), caches and raw data. Overridable by env vars."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def assets_dir() -> Path:
    """The data-only ``datasets/`` folder (split files, vocabularies, protocols, cards)."""
    p = Path(os.environ.get("SG2I_ASSETS", REPO_ROOT / "datasets"))
    if not p.is_dir():
        raise FileNotFoundError(
            f"dataset assets folder {p} not found: install the suite from a checkout with `pip install -e .` "
            "or set SG2I_ASSETS to the repository's datasets/ folder"
        )
    return p


def cache_dir() -> Path:
    """Generated data, reference statistics and evaluation classifiers (``SG2I_CACHE``)."""
    p = Path(os.environ.get("SG2I_CACHE", Path.home() / ".cache" / "sg2i-bench"))
    p.mkdir(parents=True, exist_ok=True)
    return p


def data_root() -> Path:
    """Raw datasets (COCO, VG, 4D-OR) live under ``SG2I_DATA_ROOT``."""
    return Path(os.environ.get("SG2I_DATA_ROOT", cache_dir() / "data"))


def _project_dir() -> Path:
    """The checkout when installed editable (``pip install -e .``), else the current folder."""
    return REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd()


def results_dir() -> Path:
    return Path(os.environ.get("SG2I_RESULTS", _project_dir() / "results"))


def reports_dir() -> Path:
    return Path(os.environ.get("SG2I_REPORTS", _project_dir() / "reports"))
