"""Test-wide settings: offline hubs, a persistent test cache (generated data, classifiers), results in tmp."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Generated shapes data, reference features and the evaluation classifier are deterministic: keep them
# across test runs (CI sets its own folder) instead of regenerating them in every test.
os.environ.setdefault("SG2I_CACHE", str(REPO / ".cache" / "sg2i-test"))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _results_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("SG2I_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("SG2I_REPORTS", str(tmp_path / "reports"))
