"""Speed of the foundation: CLI start-up, dataset generation, FID features (side by side with clean-fid
and with the Inception network alone, :mod:`benchmarks.side_by_side`), retrieval sampling.

Run: ``python -m pytest benchmarks -p no:cacheprovider --benchmark-enable -o addopts=--import-mode=importlib``.
Figures are reported, never asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.side_by_side import alternate

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


FID_IMAGES = 32  # image-like inputs: the first shapes test images (the Inception network is ~10 % slower on noise)


@pytest.fixture(scope="module")
def fid_images(tmp_path_factory):
    """uint8 [32, 3, 32, 32] shapes test images, and the same images as lossless PNGs (clean-fid's input)."""
    from PIL import Image

    from benchmark.train import build_dataset

    ds = build_dataset("shapes", "test", 32)
    images = (torch.stack([ds[i].image for i in range(FID_IMAGES)]) * 255).round().to(torch.uint8)
    folder = tmp_path_factory.mktemp("fid_pngs")
    for i, im in enumerate(images):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    return images, folder


def test_fid_features_vs_cleanfid_folder(benchmark, fid_images):
    """FID features of 32 images: clean-fid's ``get_folder_features`` (clean mode, PNG folder, the same
    TorchScript Inception) vs ours (in memory, ``inception_features``), alternately; values equal within 1e-3."""
    import numpy as np
    from cleanfid import fid as cfid

    from benchmark.metrics.inception import inception_features, load_inception

    images, folder = fid_images
    net = load_inception("cpu")
    out = {}

    def peer():
        out["peer"] = cfid.get_folder_features(
            str(folder), model=lambda x: net((x - 128) / 128), mode="clean", num_workers=0, batch_size=32,
            device=torch.device("cpu"), verbose=False,
        )

    def ours():
        out["ours"] = inception_features(images, "cpu", batch_size=32, progress=False)

    alternate(benchmark, "FID features, 32 images (32 px -> 299)", peer, ours, rounds=5, warmup=1,
              peer_name="clean-fid get_folder_features", items=FID_IMAGES)
    diff = float(np.abs(out["peer"] - out["ours"]).max())
    benchmark.extra_info["max_abs_feature_diff"] = diff
    assert diff < 1e-3, diff


def test_fid_features_vs_inception_alone(benchmark, fid_images):
    """The ceiling: the Inception network alone on the same images already resized to 299x299 (float
    batches, no resize in the loop) vs our whole feature path (resize + network), alternately."""
    from benchmark.metrics.inception import _layers, inception_features, load_inception, preprocess

    images, _ = fid_images
    layers = _layers(load_inception("cpu"))
    resized = (preprocess(images) - 128) / 128

    def peer():
        with torch.inference_mode():
            layers(resized)

    alternate(benchmark, "FID features vs the Inception network alone, 32 images", peer,
              lambda: inception_features(images, "cpu", batch_size=32, progress=False), rounds=5, warmup=1,
              peer_name="Inception alone (pre-resized)", items=FID_IMAGES)


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
