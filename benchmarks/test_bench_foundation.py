"""Speed of the foundation: CLI start-up, dataset generation, FID features, retrieval sampling.

Run: ``python -m pytest benchmarks -p no:cacheprovider --benchmark-enable -o addopts=--import-mode=importlib``.
Figures are reported, never asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def test_cli_ls_latency(benchmark):
    benchmark.pedantic(
        lambda: subprocess.run([sys.executable, "-m", "benchmark", "ls"], check=True, capture_output=True, cwd=REPO),
        rounds=5,
        iterations=1,
    )


def test_shapes_generation_all_splits(benchmark, tmp_path, monkeypatch):
    from benchmark.data.shapes import ShapesDataset

    counter = iter(range(100))
    monkeypatch.setenv("SG2I_CACHE", str(tmp_path))
    benchmark.pedantic(lambda: ShapesDataset.prepare(root=tmp_path / f"c{next(counter)}"), rounds=2, iterations=1)


def test_inception_features_throughput(benchmark):
    from benchmark.metrics.inception import inception_features

    g = torch.Generator().manual_seed(0)
    images = (torch.rand(32, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    benchmark.extra_info["images"] = len(images)
    benchmark.pedantic(lambda: inception_features(images, torch.device("cpu")), rounds=3, iterations=1)


@pytest.fixture(scope="module")
def retrieval():
    from benchmark.config import build_run_config
    from benchmark.train import train

    cfg = build_run_config("retrieval", "shapes", "smoke", device="cpu")
    import tempfile

    return train(cfg, Path(tempfile.mkdtemp()), progress=False).method


def test_retrieval_sampling_throughput(benchmark, retrieval):
    from benchmark.batch import collate
    from benchmark.seeding import sample_generators
    from benchmark.train import build_dataset

    ds = build_dataset("shapes", "test", 32)
    batch = collate([ds[i] for i in range(64)])
    gens = sample_generators(0, "test", list(range(64)), 0)
    benchmark.extra_info["images"] = 64
    benchmark.pedantic(lambda: retrieval.sample(batch, gens), rounds=3, iterations=1)
