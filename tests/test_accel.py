"""The GPU path's switches (benchmark/accel.py): resolution per device, clean CPU fallbacks, and how far each
switch moves the outputs from the fp32 path (tolerances stated per test)."""

from __future__ import annotations

import copy
import dataclasses
import math
import os

import pytest
import torch

from benchmark import accel, registry
from benchmark.batch import collate
from benchmark.config import TrainConfig, build_run_config
from benchmark.protocol import load_protocol
from benchmark.train import build_dataset, dataset_info, train

EVERY_SWITCH = {
    "train.precision": "bf16",
    "train.channels_last": True,
    "train.fused_optimizer": True,
    "train.grad_accum": 2,
    "train.num_workers": 1,
    "train.pin_memory": True,
    "train.persistent_workers": True,
    "train.non_blocking": True,
}


def test_resolve_defaults_by_device():
    cpu = accel.resolve(TrainConfig(), "cpu")
    assert (cpu.precision, cpu.grad_scaler, cpu.channels_last, cpu.fused_optimizer) == ("fp32", False, False, False)
    assert (cpu.num_workers, cpu.pin_memory, cpu.persistent_workers, cpu.non_blocking) == (0, False, False, False)
    cuda = accel.resolve(TrainConfig(), "cuda")  # resolution only: no CUDA needed
    assert (cuda.precision, cuda.channels_last, cuda.fused_optimizer, cuda.pin_memory) == ("bf16", True, True, True)
    assert cuda.num_workers == accel.CUDA_WORKERS and cuda.persistent_workers and cuda.non_blocking
    assert not cuda.notes and not cuda.compile and cuda.grad_accum == 1


def test_resolve_fallbacks_and_errors():
    fp16 = accel.resolve(TrainConfig(precision="fp16"), "cpu")
    assert fp16.precision == "fp32" and not fp16.grad_scaler and any("fp16" in n for n in fp16.notes)
    assert accel.resolve(TrainConfig(precision="fp16"), "cuda").grad_scaler
    assert accel.resolve(TrainConfig(precision="bf16"), "cpu").autocast_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="train.precision"):
        accel.resolve(TrainConfig(precision="fp8"), "cpu")
    with pytest.raises(ValueError, match="train.grad_accum=3"):
        accel.resolve(TrainConfig(batch_size=32, grad_accum=3), "cpu")
    with pytest.raises(ValueError, match="train.grad_accum"):
        accel.resolve(TrainConfig(grad_accum=0), "cpu")


def _built(method: str, tier: str, sets: dict | None = None):
    cfg = build_run_config(method, "shapes", tier=tier, device="cpu", sets=sets or {})
    ds = build_dataset("shapes", "train", cfg.image_size)
    torch.manual_seed(0)
    m = registry.get("method", method)(cfg.method_cfg, dataset_info(ds, load_protocol("shapes")["version"]))
    return cfg, m, ds


def _one_step(cfg, m, ds, batch_size: int) -> dict[str, float]:
    """What the trainer does for one step: resolve, prepare the method and the batch, autocast, train_step."""
    a = accel.resolve(cfg.train, "cpu")
    accel.prepare_method(m, a)
    batch = accel.prepare_batch(collate([ds[i] for i in range(batch_size)]), a, torch.device("cpu"))
    m.train()
    with accel.train_step_context(a):
        return m.train_step(batch, 0)


@pytest.mark.parametrize("method", ["learned_ddpm", "sg2im"])
def test_full_tier_trains_a_step_on_cpu_with_every_switch(method):
    """The full tier (ADM-64 scale, 299M UNet parameters / sg2im train.py defaults) at batch 2 on CPU with
    bf16 autocast, channels-last, fused optimiser (falls back), grad accumulation (diffusion: 2 micro-batches)
    and activation checkpointing: one finite step. ~1-2 min for the diffusion model on 2 busy cores."""
    sets = {k: v for k, v in EVERY_SWITCH.items() if not k.startswith("train.num_workers")}
    sets["train.batch_size"] = 2
    if method == "learned_ddpm":
        sets["method.activation_checkpointing"] = True
    else:
        sets.pop("train.grad_accum")  # SG2Im's three alternating updates do not split (supports_grad_accum)
    cfg, m, ds = _built(method, "full", sets)
    assert cfg.image_size == 64 and cfg.train.batch_size == 2
    losses = _one_step(cfg, m, ds, 2)
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    if method == "learned_ddpm":
        assert m.net.unet.use_checkpoint and m.grad_accum == 2
    assert next(p for p in m.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)


def test_trainer_records_every_switch_and_falls_back(tmp_path):
    """``train()`` at the smoke tier with every switch set (one DataLoader worker, pinned memory requested):
    trains, and records the effective switches with the CPU fallbacks."""
    sets = {**EVERY_SWITCH, "train.steps": 2, "train.batch_size": 4, "train.precision": "fp16"}
    cfg = build_run_config("learned_ddpm", "shapes", tier="smoke", device="cpu", sets=sets)
    out = train(cfg, tmp_path / "run", progress=False)
    a = out.accel
    assert out.steps == 2 and a["device"] == "cpu" and a["precision"] == "fp32"  # fp16 -> fp32 on CPU
    assert a["grad_accum"] == 2 and a["channels_last"] and not a["fused_optimizer"] and not a["pin_memory"]
    assert a["num_workers"] == 1 and a["persistent_workers"] and len(a["notes"]) == 1
    assert all(math.isfinite(h["loss"]) for h in out.history)


def test_grad_accum_without_support_stops_with_the_field():
    cfg, m, _ = _built("sg2im", "smoke", {"train.grad_accum": 2, "train.batch_size": 4})
    with pytest.raises(ValueError, match=r"train.grad_accum=2: method Sg2Im"):
        accel.prepare_method(m, accel.resolve(cfg.train, "cpu"))


# -- each switch against the fp32 path, on the smoke-tier diffusion model without dropout --------------------


def _smoke_pair(**method_sets):
    sets = {"method.dropout": 0.0, **{f"method.{k}": v for k, v in method_sets.items()}}
    cfg, m, ds = _built("learned_ddpm", "smoke", sets)
    return cfg, m, collate([ds[i] for i in range(8)])


def _step_params(m, batch, a: accel.Accel, seed: int = 0) -> tuple[dict[str, float], list[torch.Tensor]]:
    accel.prepare_method(m, a)
    batch = accel.prepare_batch(batch, a, torch.device("cpu"))
    torch.manual_seed(seed)
    with accel.train_step_context(a):
        losses = m.train_step(batch, 0)
    return losses, [p.detach().clone() for p in m.net.parameters()]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def _fp32(**changes) -> accel.Accel:
    return accel.resolve(dataclasses.replace(TrainConfig(batch_size=8), **changes), "cpu")


def test_grad_accum_equals_the_full_batch():
    """Two micro-batches give the full batch's loss and updated weights within 1e-5 (deterministic config)."""
    cfg, m, batch = _smoke_pair()
    m2 = copy.deepcopy(m)
    l1, p1 = _step_params(m, batch, _fp32())
    l2, p2 = _step_params(m2, batch, _fp32(grad_accum=2))
    assert m2.grad_accum == 2
    for k in l1:
        assert abs(l1[k] - l2[k]) < 1e-5, (k, l1[k], l2[k])
    assert _max_diff(p1, p2) < 1e-5


def test_activation_checkpointing_is_exact():
    """Recomputing the UNet blocks in backward gives the same gradients: weights after a step within 1e-6."""
    _, m, batch = _smoke_pair(activation_checkpointing=False)
    _, m2, _ = _smoke_pair(activation_checkpointing=True)
    m2.load_state_dict(m.state_dict())
    assert m2.net.unet.use_checkpoint and not m.net.unet.use_checkpoint
    l1, p1 = _step_params(m, batch, _fp32())
    l2, p2 = _step_params(m2, batch, _fp32())
    assert abs(l1["loss"] - l2["loss"]) < 1e-6
    assert _max_diff(p1, p2) < 1e-6


def test_channels_last_matches_fp32_path():
    """NHWC weights and images: the same maths in another summation order; loss within 1e-5 relative,
    weights after one AdamW step (lr 1e-4 moves a weight by about 1e-4) within 1e-5."""
    _, m, batch = _smoke_pair()
    m2 = copy.deepcopy(m)
    l1, p1 = _step_params(m, batch, _fp32())
    l2, p2 = _step_params(m2, batch, _fp32(channels_last=True))
    assert abs(l1["loss"] - l2["loss"]) <= 1e-5 * abs(l1["loss"])
    assert _max_diff(p1, p2) < 1e-5


def test_bf16_autocast_stays_near_fp32():
    """bf16 autocast (8-bit mantissa, relative rounding 2^-8 = 0.4 %): the loss within 5 % relative of fp32
    and the eps prediction of the same inputs within 5 % of its scale (RMS)."""
    _, m, batch = _smoke_pair()
    m2 = copy.deepcopy(m)
    l1, _ = _step_params(m, batch, _fp32())
    l2, _ = _step_params(m2, batch, _fp32(precision="bf16"))
    assert abs(l1["loss"] - l2["loss"]) <= 0.05 * abs(l1["loss"]), (l1["loss"], l2["loss"])
    m.eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, 32, 32, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    with torch.no_grad():
        cond = m.net.cond(batch, layout="gt")
        ref = m.net(x, t, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m.net(x, t, cond).float()
    rms = float(ref.pow(2).mean().sqrt())
    assert float((ref - low).pow(2).mean().sqrt()) <= 0.05 * rms


def test_fused_optimizer_is_rebuilt_only_on_cuda():
    _, m, _ = _smoke_pair()
    opt = m.opt
    accel.prepare_method(m, _fp32(fused_optimizer=True))  # CPU: resolved off, the optimiser is kept
    assert m.opt is opt
    if torch.cuda.is_available():
        _, mc, _ = _smoke_pair()
        mc = mc.cuda()
        accel.prepare_method(mc, accel.resolve(TrainConfig(batch_size=8), "cuda"))
        assert mc.opt.param_groups[0]["fused"] and mc.opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_compile_wraps_the_declared_targets():
    """``train.compile`` compiles each declared submodule in place (state_dict keys unchanged)."""
    _, m, _ = _smoke_pair()
    keys = list(m.state_dict())
    accel.prepare_method(m, _fp32(compile=True))
    assert m.net.unet._compiled_call_impl is not None and list(m.state_dict()) == keys
    _, g, _ = _built("sg2im", "smoke")
    accel.prepare_method(g, _fp32(compile=True))
    assert g.obj_discriminator.cnn._compiled_call_impl is not None


def test_smoke_unet_traces_into_one_graph_for_compile():
    """Dynamo + AOT autograd (the ``aot_eager`` backend: inductor's front half, no C++ compile) take the
    smoke-tier UNet, dropout on, as one graph in a training step, so ``train.compile`` has no graph breaks."""
    _, m, batch = _smoke_pair(dropout=0.1)
    torch._dynamo.reset()
    m.net.unet.compile(backend="aot_eager", fullgraph=True)
    torch.manual_seed(0)
    losses = m.train_step(batch, 0)
    assert math.isfinite(losses["loss"])
    assert all(p.grad is not None for p in m.net.unet.parameters() if p.requires_grad)


@pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("SG2I_TEST_COMPILE")),
    reason="inductor's first compile of the smoke UNet took 86-419 s on 2 CPU cores (measured: idle Intel Xeon, "
    "busy AMD EPYC); runs on CUDA or with SG2I_TEST_COMPILE=1",
)
def test_compile_tiny_model_matches_eager():
    """A compiled training step of the smoke-tier UNet gives the eager loss within 1e-4 relative."""
    _, m, batch = _smoke_pair()
    m2 = copy.deepcopy(m)
    l1, _ = _step_params(m, batch, _fp32())
    l2, _ = _step_params(m2, batch, _fp32(compile=True))
    assert abs(l1["loss"] - l2["loss"]) <= 1e-4 * abs(l1["loss"]), (l1, l2)
