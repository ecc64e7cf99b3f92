"""Generated from the registries: every method on every dataset fixture trains and samples; on ``shapes`` it is
also trained twice to check that the same seed gives the same weights (training is dataset-agnostic, so one
dataset covers determinism and the others are trained once).

Every dataset writes its fixture with ``write_fixture(root)`` (``SceneGraphDataset``): a tiny copy in the exact
on-disk format (nothing for a generated dataset).
"""

from __future__ import annotations

import pytest
import torch

from benchmark import registry
from benchmark.batch import collate
from benchmark.config import build_run_config
from benchmark.preflight import random_weights_if_needed
from benchmark.seeding import sample_generators
from benchmark.train import build_dataset, train

DATASETS = registry.names("dataset")
DETERMINISM_DATASET = "shapes"
CASES = [(m, d) for m in registry.names("method") for d in DATASETS]


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data_root")
    for name in DATASETS:
        registry.get("dataset", name).write_fixture(root / name)
    return root


@pytest.fixture
def data_root(fixture_root, monkeypatch):
    monkeypatch.setenv("SG2I_DATA_ROOT", str(fixture_root))
    return fixture_root


def _sample(method, ds, seed: int = 0) -> torch.Tensor:
    n = min(3, len(ds))
    batch = collate([ds[i] for i in range(n)])
    return method.sample(batch, sample_generators(seed, "test", list(range(n)), 0), layout="pred")


@pytest.mark.parametrize("method_name,dataset", CASES)
def test_trains_samples_and_is_deterministic(method_name, dataset, tmp_path, data_root):
    sets = random_weights_if_needed(method_name)  # CLIP/data2vec weights are not on a test machine
    cfg = build_run_config(method_name, dataset, tier="smoke", seed=0, device="cpu", sets=sets)
    out_a = train(cfg, tmp_path / "a", progress=False)
    out_b = None
    if dataset == DETERMINISM_DATASET:
        out_b = train(cfg, tmp_path / "b", progress=False)
        state_a, state_b = out_a.method.state_dict(), out_b.method.state_dict()
        assert state_a.keys() == state_b.keys()
        for k in state_a:
            assert torch.equal(state_a[k], state_b[k]), f"{k} differs between two runs with the same seed"

    ds = build_dataset(dataset, cfg.eval.splits[0], cfg.image_size)
    x1, x2 = _sample(out_a.method, ds), _sample(out_a.method, ds)
    n = min(3, len(ds))
    assert x1.shape == (n, 3, cfg.image_size, cfg.image_size) and x1.dtype == torch.float32
    assert 0 <= x1.min() and x1.max() <= 1
    assert torch.equal(x1, x2), "same generators must give identical samples"
    if out_b is not None:
        assert torch.equal(x1, _sample(out_b.method, ds))


def test_the_determinism_dataset_is_registered():
    assert DETERMINISM_DATASET in DATASETS
