"""Orchestration used by the CLI and the tests: run (train + evaluate + record), eval, generate."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from benchmark.checkpoint import config_from_dict
from benchmark.config import EvalConfig, RunConfig, TrainConfig, apply_overrides
from benchmark.env import environment
from benchmark.evaluate import evaluate
from benchmark.interfaces import Method
from benchmark.io import sha256_file
from benchmark.protocol import load_protocol
from benchmark.results import RunResult, rebuild_leaderboard, write_result
from benchmark.train import load_method, resolve_device, train


def run_dir_for(cfg: RunConfig, out: str | Path) -> Path:
    variant = f"-{cfg.protocol}" if cfg.protocol else ""
    return Path(out) / f"{cfg.method}__{cfg.dataset}{variant}__{cfg.tier}__s{cfg.seed}"


def _record(
    cfg: RunConfig,
    method: Method,
    checkpoint: Path,
    train_s: float,
    run_dir: Path,
    results_dir: Path | None,
    progress: bool,
    t_start: float,
) -> tuple[RunResult, Path]:
    device = resolve_device(cfg.device)
    proto = load_protocol(cfg.dataset, cfg.protocol)
    evaluations, metric_weights, splits, sample_s, eval_s = evaluate(method, cfg, device, run_dir, progress)
    weights = list(method.weight_provenance()) + metric_weights
    now = datetime.now(timezone.utc)
    result = RunResult(
        schema_version="1",
        run_id=f"{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}",
        created=now.isoformat(timespec="seconds"),
        method=cfg.method,
        dataset=cfg.dataset,
        tier=cfg.tier,
        seed=cfg.seed,
        image_size=cfg.image_size,
        protocol={"version": proto["version"], "sha256": proto["sha256"]},
        splits={"train": {"version": method.info.split_version, "sha256": method.info.split_sha256}, **splits},
        config=cfg.to_dict(),
        evaluations=evaluations,
        weights=weights,
        random_init=any(w.random_init for w in weights),
        checkpoint={"path": str(checkpoint), "sha256": sha256_file(checkpoint)},
        environment=environment(),
        timings={"train_s": train_s, "sample_s": sample_s, "eval_s": eval_s, "total_s": time.perf_counter() - t_start},
    )
    path = write_result(result, results_dir)
    rebuild_leaderboard(results_dir)
    return result, path


def run(
    cfg: RunConfig, out: str | Path = "runs", results_dir: Path | None = None, progress: bool = True
) -> tuple[RunResult, Path]:
    """Train (or resume), evaluate with the dataset's protocol, write the result, rebuild the leaderboard."""
    t0 = time.perf_counter()
    run_dir = run_dir_for(cfg, out)
    outcome = train(cfg, run_dir, progress)
    return _record(cfg, outcome.method, outcome.checkpoint, outcome.train_s, run_dir, results_dir, progress, t0)


def eval_checkpoint(
    checkpoint: str | Path,
    device: str = "auto",
    sets: dict | None = None,
    results_dir: Path | None = None,
    progress: bool = True,
) -> tuple[RunResult, Path]:
    """Score an existing checkpoint with its own run configuration (``eval.*`` / ``device`` may be overridden)."""
    t0 = time.perf_counter()
    checkpoint = Path(checkpoint)
    dev = resolve_device(device)
    sets = dict(sets or {})
    method_sets = {k.split(".", 1)[1]: sets.pop(k) for k in list(sets) if k.startswith(("method.", "method_cfg."))}
    method, meta = load_method(checkpoint, dev, method_sets)
    rc = dict(meta["run_config"])
    rc["method_cfg"] = method.cfg
    rc["eval"] = config_from_dict(EvalConfig, rc["eval"])
    rc["train"] = config_from_dict(TrainConfig, rc["train"])
    cfg = RunConfig(**rc)
    cfg = apply_overrides(cfg, {"device": device, **sets})
    if any(not k.startswith(("eval.", "device")) for k in sets):
        raise ValueError(f"eval: only eval.*, method.* and device may be overridden, got {sorted(sets)}")
    return _record(cfg, method, checkpoint, float(meta.get("train_s", 0.0)), checkpoint.parent, results_dir, progress, t0)


def generate(
    checkpoint: str | Path,
    graphs_json: str | Path,
    out_dir: str | Path,
    seed: int = 0,
    samples: int = 1,
    layout: str = "pred",
    device: str = "auto",
) -> list[Path]:
    """Images for the scene graphs of a JSON file (sg2im format) from a trained checkpoint, saved as PNG."""
    from PIL import Image

    from benchmark.batch import collate
    from benchmark.evaluate import generate_images
    from benchmark.scene_graph import load_graphs

    dev = resolve_device(device)
    method, _ = load_method(checkpoint, dev)
    items = load_graphs(graphs_json, method.info.vocab)
    if layout == "gt" and not all(bool(it.has_layout.all()) for it in items):
        raise ValueError(f"{graphs_json}: --layout gt needs 'boxes' for every object of every graph")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    batch = collate(items)
    paths = []
    for s in range(samples):
        imgs = generate_images(method, batch, seed, "generate", list(range(len(items))), s, layout, dev)
        for it, img in zip(items, imgs):
            p = out_dir / f"{it.image_id}_s{s}.png"
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(p)
            paths.append(p)
    return paths

