"""Fixtures shared by the baselines' tests."""

from __future__ import annotations

import pytest
import torch

from benchmark.train import build_dataset, dataset_info


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is as fast and immune to OpenMP spin-waits on a shared, busy CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def shapes():
    """The shapes training split at 32 px and its DatasetInfo."""
    ds = build_dataset("shapes", "train", 32)
    return ds, dataset_info(ds, "test")
