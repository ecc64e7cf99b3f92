"""Speed and memory of the scene-graph diffusion methods (methods/sg_diffusion.py): training, sampling, full tier.

Run: ``python -m pytest benchmarks/test_bench_diffusion.py -p no:cacheprovider --benchmark-enable
-o addopts=--import-mode=importlib``. Figures go to ``benchmark.extra_info``; nothing is asserted about time.

- ``test_train_step_quick``: one ``train_step`` of ``learned_ddpm`` at the quick tier (32 px, batch 32).
- ``test_unet_train_step_vs_diffusers[fp32|bf16]`` / ``test_unet_denoising_step_vs_diffusers``:
  improved-diffusion's 32 px UNet (64 ch, ``channel_mult`` (1, 2, 2, 2), 2 res blocks, attention at 16 and
  8 px, 4 heads, learned sigma, batch 32: 9,926,790 parameters) as ours and as diffusers' ``UNet2DModel`` of
  the same architecture (same parameter count, checked), timed alternately in this run on the same inputs
  (:mod:`benchmarks.side_by_side`): both medians and ``peer/ours``; the training step in fp32 and with both
  sides under CPU bf16 autocast (like for like: the precision is never mixed across a pair).
- ``test_sampling_throughput[sampler]``: images/s of ``sample`` for the quick-tier model with 1000-step
  respaced DDPM (i.e. no respacing), 50-step DDIM and 20-step DPM-Solver++ (batch 16).
- ``test_full_tier_train_step_cpu``: the full-tier 64 px model (ADM-64 scale) on CPU at batch 2, with the
  peak RSS of a fresh process doing the same (``resource.ru_maxrss``).
- ``test_full_tier_cuda``: the same at batch 32 on CUDA with bf16 autocast and ``max_memory_allocated``
  (skipped without CUDA).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.side_by_side import alternate

REPO = Path(__file__).resolve().parents[1]


def _method(tier: str, image_size: int, **sets: object):
    from benchmark import registry
    from benchmark.config import build_run_config
    from benchmark.protocol import load_protocol
    from benchmark.train import build_dataset, dataset_info

    cfg = build_run_config(
        "learned_ddpm", "shapes", tier=tier, device="cpu", sets={f"method.{k}": v for k, v in sets.items()}
    )
    ds = build_dataset("shapes", "train", image_size)
    m = registry.get("method", "learned_ddpm")(
        cfg.method_cfg, dataset_info(ds, load_protocol("shapes")["version"])
    )
    return m, ds


def _batch(ds, n: int):
    from benchmark.batch import collate

    return collate([ds[i] for i in range(n)])


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_train_step_quick(benchmark):
    torch.manual_seed(0)
    m, ds = _method("quick", 32)
    batch = _batch(ds, 32)
    m.train_step(batch, 0)
    counter = iter(range(1, 10**6))
    benchmark.extra_info.update(
        {
            "config": "learned_ddpm quick, 32 px",
            "batch": 32,
            "unet_params": _params(m.net.unet),
            "params": _params(m.net),
        }
    )
    benchmark.pedantic(lambda: m.train_step(batch, next(counter)), rounds=5, iterations=1, warmup_rounds=1)
    s = benchmark.stats.stats.median
    benchmark.extra_info.update({"it_per_s": 1 / s, "img_per_s": 32 / s, "threads": torch.get_num_threads()})


def _iddpm_unets() -> tuple[torch.nn.Module, torch.nn.Module]:
    """improved-diffusion's 32 px UNet (``image_train.py`` defaults with ``--num_channels 64``: channel_mult
    (1, 2, 2, 2), 2 res blocks, attention at 16 and 8 px, 4 heads, scale-shift norm, learned sigma, dropout
    0.1) as ours and as diffusers' ``UNet2DModel`` (the peer). Both have 9,926,790 parameters, and
    both are moved off their zero-initialised state (see below)."""
    from diffusers import UNet2DModel

    from methods.unet import UNetModel

    torch.manual_seed(0)
    ours = UNetModel(
        3, 64, 6, num_res_blocks=2, attention_resolutions=(2, 4), dropout=0.1, channel_mult=(1, 2, 2, 2),
        num_heads=4, use_scale_shift_norm=True,
    )
    peer = UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=6,
        block_out_channels=(64, 128, 128, 128),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        resnet_time_scale_shift="scale_shift",
        attention_head_dim=32,  # 128 channels / 4 heads
        norm_num_groups=32,
        attn_norm_num_groups=32,  # the middle attention block's GroupNorm (diffusers drops it for scale_shift)
        dropout=0.1,
        flip_sin_to_cos=True,  # [cos, sin] as in improved-diffusion's timestep_embedding
        freq_shift=0,
    )
    # Time a mid-training state, not the initialisation: both UNets zero-initialise the last layer of every
    # residual branch, so in the first steps the gradients behind those layers are tiny (measured after 4
    # steps: down to 5e-24 in ours, and subnormal values in its Adam state), a regime that real training
    # leaves within a few steps and in which x86 arithmetic can slow down on denormals. Every parameter of
    # both gets N(0, 0.02^2) noise from the same seed.
    for net in (peer, ours):
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return peer, ours


def _hybrid_step(forward, net: torch.nn.Module, ema: torch.nn.Module, opt, x0: torch.Tensor, diffusion, g) -> None:
    """One improved-diffusion training step: hybrid loss (L_simple + L_vlb), AdamW, EMA 0.9999."""
    from methods.diffusion import ema_update

    t = torch.randint(0, diffusion.num_timesteps, (x0.shape[0],), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    x_t = diffusion.q_sample(x0, t, noise)
    loss = diffusion.hybrid_loss(forward(net, x_t, t), x0, x_t, t, noise)["loss"].mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    ema_update(ema, net, 0.9999)


def _peer_forward(net, x, t):
    return net(x, t).sample


def _ours_forward(net, x, t):
    return net(x, t.float())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_unet_train_step_vs_diffusers(benchmark, precision):
    """Training step of improved-diffusion's 9.9M UNet, 32 px, batch 32, hybrid loss: diffusers
    ``UNet2DModel`` of the same architecture vs ours, alternately, same images, timesteps and noise; both in
    fp32, or both under bf16 autocast (``train.precision=bf16``; fast only on CPUs with bf16 dot-product
    instructions, e.g. AVX512-BF16 or AMX, and emulated elsewhere)."""
    import contextlib
    import copy

    from methods.diffusion import GaussianDiffusion

    diffusion = GaussianDiffusion(1000)
    peer, ours = _iddpm_unets()
    n_peer, n_ours = _params(peer), _params(ours)
    assert n_peer == n_ours, (n_peer, n_ours)
    x0 = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sides = {}
    for name, net, fwd in (("peer", peer, _peer_forward), ("ours", ours, _ours_forward)):
        ema = copy.deepcopy(net).requires_grad_(False)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(1)
        sides[name] = lambda net=net, ema=ema, opt=opt, g=g, fwd=fwd: _hybrid_step(fwd, net, ema, opt, x0, diffusion, g)

    def autocast(side):
        def run() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext():
                side()

        return run

    benchmark.extra_info.update(peer_params=n_peer, ours_params=n_ours, batch=32, image_size=32, precision=precision)
    alternate(benchmark, f"UNet training step (iDDPM 9.9M, 32 px, batch 32, {precision})", autocast(sides["peer"]),
              autocast(sides["ours"]), rounds=7, warmup=2, peer_name="diffusers UNet2DModel", items=32)


def test_unet_denoising_step_vs_diffusers(benchmark):
    """One denoising forward pass (inference mode) of the same two UNets at batch 32."""
    peer, ours = _iddpm_unets()
    peer.eval()
    ours.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 32, 32, generator=g)
    t = torch.randint(0, 1000, (32,), generator=g)

    def run(fwd, net):
        with torch.inference_mode():
            fwd(net, x, t)

    benchmark.extra_info.update(peer_params=_params(peer), ours_params=_params(ours), batch=32)
    alternate(benchmark, "UNet denoising step (iDDPM 9.9M, 32 px, batch 32)", lambda: run(_peer_forward, peer),
              lambda: run(_ours_forward, ours), rounds=7, warmup=2, peer_name="diffusers UNet2DModel", items=32)


@pytest.fixture(scope="module")
def quick_model():
    torch.manual_seed(0)
    m, ds = _method("quick", 32)
    # A few training steps so that the zero-initialised output layer is not zero (the cost is the same).
    batch = _batch(ds, 8)
    for i in range(3):
        m.train_step(batch, i)
    return m.eval(), _batch(ds, 16)


@pytest.mark.parametrize("sampler,steps", [("ddpm", 1000), ("ddim", 50), ("dpmsolver++", 20)])
def test_sampling_throughput(benchmark, quick_model, sampler, steps):
    import dataclasses

    from benchmark.seeding import sample_generators

    m, batch = quick_model
    old = m.cfg
    m.cfg = dataclasses.replace(old, sampler=sampler, sample_steps=steps)
    n = batch.num_images
    try:
        with torch.inference_mode():
            benchmark.pedantic(
                lambda: m.sample(batch, sample_generators(0, "bench", list(range(n)), 0)),
                rounds=1 if steps >= 1000 else 3,
                iterations=1,
            )
    finally:
        m.cfg = old
    s = benchmark.stats.stats.median
    benchmark.extra_info.update(
        {
            "sampler": sampler,
            "steps": steps,
            "images": n,
            "img_per_s": n / s,
            "s_per_img": s / n,
            "model": "quick",
        }
    )


_FULL_SCRIPT = r"""
import json, resource, sys, time, torch
sys.path.insert(0, {repo!r})
from benchmarks.test_bench_diffusion import _batch, _method
torch.manual_seed(0)
m, ds = _method("full", 64)
b = _batch(ds, {batch})
times = []
for i in range(2):
    t0 = time.perf_counter(); m.train_step(b, i); times.append(time.perf_counter() - t0)
print(json.dumps({{"step_s": times[-1], "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}}))
"""


def test_full_tier_train_step_cpu(benchmark):
    batch_size = 2
    torch.manual_seed(0)
    m, ds = _method("full", 64)
    b = _batch(ds, batch_size)
    counter = iter(range(10**6))
    benchmark.extra_info.update(
        {
            "config": "learned_ddpm full (ADM-64 scale), 64 px, CPU",
            "batch": batch_size,
            "unet_params": _params(m.net.unet),
        }
    )
    benchmark.pedantic(lambda: m.train_step(b, next(counter)), rounds=1, iterations=1, warmup_rounds=1)
    m = None  # free the model before the subprocess measures its own peak
    out = subprocess.run(
        [sys.executable, "-c", _FULL_SCRIPT.format(repo=str(REPO), batch=batch_size)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    benchmark.extra_info.update(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_full_tier_cuda(benchmark):
    batch_size = 32
    torch.manual_seed(0)
    m, ds = _method("full", 64)
    m = m.cuda()
    b = _batch(ds, batch_size).to("cuda")
    counter = iter(range(10**6))

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            m.train_step(b, next(counter))
        torch.cuda.synchronize()

    step()
    torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(step, rounds=5, iterations=1)
    s = benchmark.stats.stats.median
    from benchmark.seeding import sample_generators

    m.eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        m.sample(b, sample_generators(0, "bench", list(range(batch_size)), 0))
    torch.cuda.synchronize()
    sample_s = time.perf_counter() - t0
    benchmark.extra_info.update(
        {
            "batch": batch_size,
            "img_per_s": batch_size / s,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "device": torch.cuda.get_device_name(),
            "sample_img_per_s": batch_size / sample_s,
            "sampler": f"{m.cfg.sampler} {m.cfg.sample_steps} steps",
        }
    )
