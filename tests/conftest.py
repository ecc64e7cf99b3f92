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
# Pretrained-weight lookups ($TORCH_HOME/hub/checkpoints, SG2I_* weight paths) must not see a user's real
# ImageNet/Inception/CLIP files: tests build their own fixtures, so metrics needing weights stay unavailable.
os.environ["TORCH_HOME"] = str(REPO / ".cache" / "torch-test")
for _var in ("SG2I_CLIP_WEIGHTS", "SG2I_DATA2VEC_DIR", "SG2I_MINILM_DIR", "SG2I_INCEPTION_IS", "SG2I_LPIPS_ALEXNET",
             "SG2I_RESNET101_IMAGENET", "SG2I_INCEPTION_FID"):
    os.environ.pop(_var, None)
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _results_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("SG2I_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("SG2I_REPORTS", str(tmp_path / "reports"))
