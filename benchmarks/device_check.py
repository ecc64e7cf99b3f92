"""One device check for a GPU machine (budget: under 8 minutes on one GPU), written as one JSON file.

    python benchmarks/device_check.py --out device_check.json               # on the GPU machine
    python benchmarks/device_check.py --device cpu --tiny --out check.json  # every code path, small, on CPU

Sections (each records its own seconds and, on failure, the error; the file is always written):

1. ``runs``: smoke and quick ``run()`` of ``sg2im`` and ``minilm_ddpm`` on ``shapes`` (train + protocol eval).
2. ``throughput``: full-tier SG2Im-64 and ADM-64 (``learned_ddpm``) training steps at batch 32 for
   fp32, bf16 and bf16 + ``torch.compile``: img/s (median of the timed steps after warm-up) and peak
   ``torch.cuda.max_memory_allocated`` (CPU: the process's peak RSS).
3. ``attention``: which scaled-dot-product-attention kernel the UNet's attention block runs, from the
   profiler's kernel names, with ``torch.backends.cuda`` SDP flags.
4. ``metric_agreement``: one fixed checkpoint (the smoke sg2im run's) scored on CPU and on the device, every
   metric's absolute difference; and FID with the Inception network under bf16 autocast vs fp32 on the same
   images (bf16 is acceptable for FID only within 1e-3).

``--tiny`` shrinks every section (smoke tier only, batch 2, 2 timed steps, compile skipped on CPU) so that
``tests/test_device_check.py`` runs it on CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmark import accel, registry  # noqa: E402
from benchmark.batch import collate  # noqa: E402
from benchmark.config import build_run_config  # noqa: E402
from benchmark.protocol import load_protocol  # noqa: E402
from benchmark.train import build_dataset, dataset_info  # noqa: E402


def _log(msg: str) -> None:
    print(f"[device_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _section(report: dict[str, Any], name: str, fn: Callable[[], Any]) -> None:
    _log(f"{name} ...")
    t0 = time.perf_counter()
    try:
        report[name] = {"ok": True, "result": fn()}
    except Exception as e:  # recorded, and the next section still runs
        report[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
    report[name]["seconds"] = round(time.perf_counter() - t0, 2)
    _log(f"{name}: {'ok' if report[name]['ok'] else report[name]['error']} ({report[name]['seconds']} s)")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _metrics(result: Any) -> dict[str, float | None]:
    return {f"{e.split}/{k}": v.value for e in result.evaluations for k, v in e.metrics.items()}


# -- 1. smoke and quick runs ---------------------------------------------------------------------------------


def runs(device: str, tiny: bool, out: Path) -> dict[str, Any]:
    from benchmark.run import run

    res: dict[str, Any] = {}
    tiers = ("smoke",) if tiny else ("smoke", "quick")
    for method in ("sg2im", "minilm_ddpm"):
        for tier in tiers:
            key = f"{method}/{tier}"
            sets: dict[str, Any] = {}
            if tiny:
                sets = {"eval.splits": ("test",), "eval.metrics": ("fid", "kid"), "eval.num_graphs": 8}
            t0 = time.perf_counter()
            try:
                cfg = build_run_config(method, "shapes", tier=tier, device=device, sets=sets)
                result, _ = run(cfg, out / "runs", out / "results", progress=False)
                res[key] = {"ok": True, "timings": result.timings, "metrics": _metrics(result),
                            "accel": result.environment.get("accel")}
            except Exception as e:
                res[key] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            res[key]["seconds"] = round(time.perf_counter() - t0, 2)
            _log(f"  run {key}: {res[key]['seconds']} s")
    return res


# -- 2. full-tier throughput ---------------------------------------------------------------------------------


def _throughput(method: str, device: torch.device, precision: str, compile_: bool, tiny: bool) -> dict[str, Any]:
    tier, batch_size, warmup, timed = ("smoke", 2, 1, 2) if tiny else ("full", 32, 3, 10)
    cfg = build_run_config(
        method, "shapes", tier=tier, device=str(device),
        sets={"train.precision": precision, "train.compile": compile_, "train.batch_size": batch_size},
    )
    ds = build_dataset("shapes", "train", cfg.image_size)
    torch.manual_seed(0)
    m = registry.get("method", method)(cfg.method_cfg, dataset_info(ds, load_protocol("shapes")["version"]))
    m = m.to(device)
    a = accel.resolve(cfg.train, device)
    accel.prepare_method(m, a)
    batch = accel.prepare_batch(collate([ds[i % len(ds)] for i in range(batch_size)]), a, device)
    scaler = torch.amp.GradScaler(device.type) if a.grad_scaler else None
    m.train()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    t_first = time.perf_counter()
    for i in range(warmup + timed):
        _sync(device)
        t0 = time.perf_counter()
        with accel.train_step_context(a, scaler):
            m.train_step(batch, i)
        _sync(device)
        times.append(time.perf_counter() - t0)
    s = statistics.median(times[warmup:])
    params = sum(p.numel() for p in m.parameters())
    out = {"tier": tier, "image_size": cfg.image_size, "batch": batch_size, "params": params,
           "step_s_median": s, "img_per_s": batch_size / s, "first_steps_s": times[:warmup],
           "warmup_total_s": sum(times[:warmup]), "wall_s": time.perf_counter() - t_first,
           "accel": a.to_dict(), **_peak_memory(device)}
    del m, batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def throughput(device: torch.device, tiny: bool) -> dict[str, Any]:
    res: dict[str, Any] = {}
    variants = [("fp32", False), ("bf16", False), ("bf16", True)]
    for method in ("sg2im", "learned_ddpm"):
        for precision, comp in variants:
            key = f"{method}/{precision}{'+compile' if comp else ''}"
            if comp and tiny and device.type == "cpu":
                res[key] = {"skipped": "inductor compiles for minutes on a small CPU; run without --tiny"}
                continue
            try:
                res[key] = _throughput(method, device, precision, comp, tiny)
                _log(f"  {key}: {res[key]['img_per_s']:.1f} img/s")
            except Exception as e:
                res[key] = {"error": f"{type(e).__name__}: {e}"}
                _log(f"  {key}: {res[key]['error']}")
    return res


# -- 3. attention kernel -------------------------------------------------------------------------------------


def attention_kernel(device: torch.device, tiny: bool) -> dict[str, Any]:
    """Profile one ADM-64 attention block (32x32 positions, 64 channels per head) forward and backward under
    the default precision of ``device`` and list the attention kernels that ran."""
    from torch.profiler import ProfilerActivity, profile

    from methods.unet import AttentionBlock

    c, hw, b = (64, 8, 2) if tiny else (192, 32, 32)
    block = AttentionBlock(c, num_head_channels=64, encoder_channels=128).to(device)
    x = torch.randn(b, c, hw, hw, device=device, requires_grad=True)
    tokens = torch.randn(b, 9, 128, device=device)
    mask = torch.ones(b, 9, dtype=torch.bool, device=device)
    mask[:, 5:] = False
    a = accel.resolve(build_run_config("learned_ddpm", "shapes", tier="full", device=str(device)).train, device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    res: dict[str, Any] = {"precision": a.precision}
    for name, tok, msk in (("self_attention", None, None), ("cross_attention_masked", tokens, mask)):
        with accel.train_step_context(a):
            block(x, tok, msk).sum().backward()  # warm-up
            _sync(device)
            with profile(activities=acts) as prof:
                block(x, tok, msk).sum().backward()
                _sync(device)
        names = sorted({e.key for e in prof.key_averages()
                        if any(k in e.key.lower() for k in ("attention", "flash", "efficient", "fmha", "sdp", "cudnn"))})
        res[name] = names
    if device.type == "cuda":
        res["sdp_flags"] = {
            "flash": torch.backends.cuda.flash_sdp_enabled(),
            "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
            "math": torch.backends.cuda.math_sdp_enabled(),
        }
    return res


# -- 4. CPU vs device metrics on one checkpoint, and Inception in bf16 -----------------------------------------


def metric_agreement(device: torch.device, tiny: bool, out: Path) -> dict[str, Any]:
    from benchmark.run import eval_checkpoint, run

    sets: dict[str, Any] = {"eval.splits": ("test",)}
    if tiny:
        sets.update({"eval.metrics": ("fid", "kid"), "eval.num_graphs": 8})
    cfg = build_run_config("sg2im", "shapes", tier="smoke", device="cpu", sets=sets)
    run(cfg, out / "fixed", out / "results_fixed", progress=False)  # the fixed checkpoint, trained on CPU
    ckpt = next((out / "fixed").glob("*/checkpoint.safetensors"))
    scored = {}
    for dev in ("cpu", str(device)):
        result, _ = eval_checkpoint(ckpt, dev, sets=sets, results_dir=out / f"results_{dev}", progress=False)
        scored[dev] = _metrics(result)
    cpu, other = scored["cpu"], scored[str(device)]
    diff = {k: (abs(cpu[k] - other[k]) if cpu[k] is not None and other.get(k) is not None else None) for k in cpu}
    return {"checkpoint": str(ckpt.relative_to(out)), "cpu": cpu, "device": other, "abs_diff": diff,
            "inception_bf16": _inception_bf16(device, 16 if tiny else 512)}


def _inception_bf16(device: torch.device, n: int) -> dict[str, Any]:
    """FID(train images, test images) with Inception features computed in fp32 and under bf16 autocast."""
    from benchmark.metrics.fid import fid_from_features
    from benchmark.metrics.inception import _layers, load_inception, preprocess

    def images(split: str) -> torch.Tensor:
        ds = build_dataset("shapes", split, 32)
        return (torch.stack([ds[i].image for i in range(min(n, len(ds)))]) * 255).round().to(torch.uint8)

    layers = _layers(load_inception(device))

    def feats(x: torch.Tensor, bf16: bool) -> Any:
        outs = []
        for s in range(0, len(x), 64):
            b = ((preprocess(x[s : s + 64]) - 128) / 128).to(device)
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                outs.append(layers(b).reshape(len(b), -1).float().cpu())
        return torch.cat(outs).double().numpy()

    a, b = images("train"), images("test")
    fp32 = fid_from_features(feats(a, False), feats(b, False))
    bf16 = fid_from_features(feats(a, True), feats(b, True))
    return {"images": len(a), "fid_fp32": fp32, "fid_bf16": bf16, "abs_diff": abs(fp32 - bf16),
            "bf16_acceptable": abs(fp32 - bf16) <= 1e-3}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="small versions of every section (CPU test mode)")
    p.add_argument("--dry-run", action="store_true", help="the same as --device cpu --tiny")
    p.add_argument("--out", default="device_check.json")
    p.add_argument("--work", default=None, help="folder for runs and checkpoints (default: a temporary one)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip")
    args = p.parse_args(argv)
    if args.dry_run:
        args.device, args.tiny = "cpu", True
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here (use --dry-run for the CPU code paths)")
    work = Path(args.work or tempfile.mkdtemp(prefix="device_check_"))
    skip = {s for s in args.skip.split(",") if s}
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "device": str(device), "tiny": args.tiny, "torch": torch.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
    }
    if device.type == "cuda":
        report["bf16_supported"] = torch.cuda.is_bf16_supported()
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 rows use TF32 matmuls, as training would
        torch.backends.cudnn.allow_tf32 = True
    sections: list[tuple[str, Callable[[], Any]]] = [
        ("attention", lambda: attention_kernel(device, args.tiny)),
        ("throughput", lambda: throughput(device, args.tiny)),
        ("metric_agreement", lambda: metric_agreement(device, args.tiny, work)),
        ("runs", lambda: runs(str(device), args.tiny, work)),
    ]
    for name, fn in sections:
        if name in skip:
            report[name] = {"skipped": "--skip"}
            continue
        _section(report, name, fn)
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))  # what is done so far survives
    report["total_s"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    _log(f"wrote {args.out} ({report['total_s']} s)")
    return report


if __name__ == "__main__":
    main()
