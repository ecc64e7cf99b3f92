"""Test-wide settings: offline hubs; every weight and data cache in empty temporary folders; results in tmp.

The tests must not depend on what the machine's caches hold: ``TORCH_HOME``, ``HF_HOME``, ``XDG_CACHE_HOME``,
``SG2I_CACHE`` and open_clip's download folder point at one temporary folder per run (set in
``pytest_configure``, before any test module is imported, because huggingface_hub reads ``HF_HOME`` at import).
Tests that bring their own files set these variables themselves (monkeypatch). Deterministic derived data
(generated ``shapes`` images, reference Inception features, the evaluation classifier) is built once per run in
that folder and shared by the tests.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CACHE_VARS = ("TORCH_HOME", "HF_HOME", "XDG_CACHE_HOME", "SG2I_CACHE")
# Weight locations a user may have exported: a test run must not see them either.
WEIGHT_VARS = ("SG2I_CLIP_WEIGHTS", "SG2I_DATA2VEC_DIR", "SG2I_MINILM_DIR", "SG2I_INCEPTION_IS", "SG2I_LPIPS_ALEXNET",
               "SG2I_RESNET101_IMAGENET", "SG2I_INCEPTION_FID", "SG2I_DATA_ROOT", "HF_HUB_CACHE",
               "TRANSFORMERS_CACHE", "SENTENCE_TRANSFORMERS_HOME")
_SESSION_DIR: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _SESSION_DIR
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    _SESSION_DIR = Path(tempfile.mkdtemp(prefix="sg2i-tests-"))
    for var in CACHE_VARS:
        os.environ[var] = str(_SESSION_DIR / var.lower())
    for var in WEIGHT_VARS:
        os.environ.pop(var, None)
    from benchmark.metrics import clip_score

    clip_score.OPENAI_URL_CACHE = str(_SESSION_DIR / "clip")  # open_clip's ~/.cache/clip
    torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SESSION_DIR is not None:
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def empty_caches() -> Path:
    """The run's temporary cache folder; fails early if something replaced it before the tests started."""
    assert _SESSION_DIR is not None
    for var in CACHE_VARS:
        assert os.environ[var] == str(_SESSION_DIR / var.lower()), var
    return _SESSION_DIR


@pytest.fixture(autouse=True)
def _results_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("SG2I_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("SG2I_REPORTS", str(tmp_path / "reports"))
