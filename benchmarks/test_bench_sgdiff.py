"""Speed of ``sgdiff`` (methods/sgdiff.py) at the quick tier: one training step of each stage and DDIM sampling.

Run: ``python -m pytest benchmarks/test_bench_sgdiff.py -p no:cacheprovider --benchmark-enable
-o addopts=--import-mode=importlib``. Figures go to ``benchmark.extra_info``; nothing is asserted about time.
The quick tier's stage lengths (``methods/sgdiff.py`` ``_QUICK``) were sized from these per-step figures.

- ``test_stage_step_quick[stage]``: one ``train_step`` of the autoencoder, CGIP and LDM stages (32 px shapes,
  batch 32), with the steps the quick tier gives the stage and the extrapolated stage time.
- ``test_sampling_quick``: images/s of ``sample`` (50 DDIM steps, batch 64).
"""

from __future__ import annotations

import pytest
import torch


def _method():
    from benchmark import registry
    from benchmark.config import build_run_config
    from benchmark.protocol import load_protocol
    from benchmark.train import build_dataset, dataset_info

    cfg = build_run_config("sgdiff", "shapes", tier="quick", device="cpu")
    ds = build_dataset("shapes", "train", cfg.image_size)
    m = registry.get("method", "sgdiff")(cfg.method_cfg, dataset_info(ds, load_protocol("shapes")["version"]))
    return m, ds, cfg


def _batch(ds, n: int):
    from benchmark.batch import collate

    return collate([ds[i] for i in range(n)])


@pytest.mark.parametrize("stage", ["autoencoder", "cgip", "ldm"])
def test_stage_step_quick(benchmark, stage):
    torch.manual_seed(0)
    m, ds, cfg = _method()
    steps = dict(m.stage_plan(cfg.train.steps))[stage]
    batch = _batch(ds, cfg.train.batch_size)
    m.train().begin_stage(stage)
    first = {"autoencoder": 0, "cgip": cfg.method_cfg.autoencoder_steps}.get(
        stage, cfg.method_cfg.autoencoder_steps + cfg.method_cfg.cgip_steps
    )
    counter = iter(range(first, first + 10**6))
    m.train_step(batch, next(counter))
    benchmark.pedantic(lambda: m.train_step(batch, next(counter)), rounds=5, iterations=1, warmup_rounds=1)
    s = benchmark.stats.stats.median
    benchmark.extra_info.update({"config": f"sgdiff quick, stage {stage}, 32 px", "batch": cfg.train.batch_size,
                                 "stage_steps": steps, "stage_s_extrapolated": s * steps,
                                 "threads": torch.get_num_threads()})  # fmt: skip


def test_sampling_quick(benchmark):
    from benchmark.seeding import sample_generators

    torch.manual_seed(0)
    m, ds, cfg = _method()
    m.eval()
    batch = _batch(ds, 64)
    benchmark.pedantic(lambda: m.sample(batch, sample_generators(0, "bench", list(range(64)), 0)), rounds=2,
                       iterations=1)  # fmt: skip
    s = benchmark.stats.stats.median
    benchmark.extra_info.update({"config": f"sgdiff quick, {cfg.method_cfg.sample_steps} DDIM steps, 32 px",
                                 "img_per_s": 64 / s, "s_per_512_images": 512 / 64 * s})  # fmt: skip
