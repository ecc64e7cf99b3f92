"""Sampling cost of SceneGenie guidance (methods/guidance.py) on the scene-graph diffusion methods.

Run: ``python -m pytest benchmarks/test_bench_guidance.py -p no:cacheprovider --benchmark-enable
-o addopts=--import-mode=importlib``. Figures go to ``benchmark.extra_info``; nothing is asserted about time.

- ``test_guidance_box_term_cost``: ``sample`` of the quick-tier ``minilm_ddpm`` (32 px, 50 respaced DDPM steps,
  batch 16) with guidance off (the "peer") and with the box term (one extra backward pass through the UNet
  per step), the same weights, timed alternately in this run (:mod:`benchmarks.side_by_side`) under
  ``inference_mode`` as the evaluator samples; s/image of both.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.side_by_side import alternate


def _method(**sets: object):
    from benchmark import registry
    from benchmark.config import build_run_config
    from benchmark.protocol import load_protocol
    from benchmark.train import build_dataset, dataset_info

    cfg = build_run_config(
        "minilm_ddpm", "shapes", tier="quick", device="cpu", sets={f"method.{k}": v for k, v in sets.items()}
    )
    ds = build_dataset("shapes", "train", cfg.image_size)
    m = registry.get("method", "minilm_ddpm")(cfg.method_cfg, dataset_info(ds, load_protocol("shapes")["version"]))
    m.setup(ds)
    return m, ds


@pytest.fixture(scope="module")
def pair():
    """The quick-tier model after 5 training steps (non-zero output layers), unguided and box-guided."""
    from benchmark.batch import collate

    torch.manual_seed(0)
    off, ds = _method()
    train_batch = collate([ds[i] for i in range(32)])
    for step in range(5):
        off.train_step(train_batch, step)
    box, _ = _method(guidance="scenegenie")
    box.load_state_dict(off.state_dict())
    return off.eval(), box.eval(), collate([ds[i] for i in range(16)])


def test_guidance_box_term_cost(benchmark, pair):
    from benchmark.seeding import sample_generators

    off, box, batch = pair
    n = batch.num_images
    assert off.cfg.sample_steps == 50 and off.cfg.sampler == "ddpm" and off.info.image_size == 32

    def run(m):
        with torch.inference_mode():
            return m.sample(batch, sample_generators(0, "bench", list(range(n)), 0))

    out = alternate(benchmark, "minilm_ddpm quick sampling, 50 steps, 16 images: off vs box guidance",
                    lambda: run(off), lambda: run(box), rounds=3, warmup=1, peer_name="guidance off",
                    items=n)  # fmt: skip
    benchmark.extra_info.update(
        s_per_img_off=out["peer_s_median"] / n, s_per_img_box=out["ours_s_median"] / n,
        box_over_off=out["ours_s_median"] / out["peer_s_median"],
    )  # fmt: skip
