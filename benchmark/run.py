"""Orchestration used by the CLI and the tests: run (train + evaluate + record), eval, generate."""

from __future__ import annotations

import time
from pathlib import Path

from benchmark import accel, distributed, registry
from benchmark.checkpoint import config_from_dict, read_metadata, unflatten_state
from benchmark.config import RunConfig, TrainConfig, apply_overrides, build_run_config
from benchmark.env import environment
from benchmark.evaluate import evaluate
from benchmark.interfaces import Method, WeightProvenance
from benchmark.io import sha256_file
from benchmark.preflight import announce, check_run
from benchmark.protocol import load_protocol
from benchmark.results import RunResult, config_changes, downsample_history, rebuild_leaderboard, write_result
from benchmark.train import load_method, resolve_device, train


def checkpoint_history(checkpoint: str | Path) -> list[dict[str, float]]:
    """The training-loss history a checkpoint keeps in ``extra_state["history"]`` (metadata only, no tensors)."""
    skel = read_metadata(checkpoint).get("extra_state", {})
    pairs = skel.get("__dict__", []) if isinstance(skel, dict) else []
    return next((list(unflatten_state(v, {})) for k, v in pairs if k == "history"), [])


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
    history: list[dict[str, float]] | None = None,
    partial_data: dict[str, list[int]] | None = None,
    imported: dict | None = None,
) -> tuple[RunResult, Path]:
    device = resolve_device(cfg.device)
    proto = load_protocol(cfg.dataset, cfg.protocol)
    evaluations, metric_weights, splits, sample_s, eval_s = evaluate(method, cfg, device, run_dir, progress)
    if not distributed.is_main():
        return None, None  # type: ignore[return-value]  # under torchrun only rank 0 scores and writes
    weights = list(method.weight_provenance()) + metric_weights
    ckpt_meta = read_metadata(checkpoint)
    stages = ckpt_meta.get("stages")  # benchmark.train: the stage plan and the stage of the last step
    if imported:  # weights converted from a release (benchmark/imports.py)
        weights.append(WeightProvenance(f"{imported['kind']} release", f"imported:{imported.get('source', '')}",
                                        imported["source_sha256"]))  # fmt: skip
    result = RunResult(  # run_id and created: now (benchmark.io.new_run_id, utc_now)
        method=cfg.method,
        dataset=cfg.dataset,
        tier=cfg.tier,
        seed=cfg.seed,
        image_size=cfg.image_size,
        protocol={"version": proto["version"], "sha256": proto["sha256"]},
        splits={"train": {"version": method.info.split_version, "sha256": method.info.split_sha256}, **splits},
        config=cfg.to_dict(),
        config_changes=config_changes(cfg.to_dict(), cfg.method, cfg.dataset, cfg.tier, cfg.protocol),
        evaluations=evaluations,
        weights=weights,
        random_init=any(w.random_init for w in weights),
        checkpoint={"path": str(checkpoint), "sha256": sha256_file(checkpoint),
                    **{k: v for k, v in ckpt_meta.items() if k == "tensors_sha256"}},
        # accel: the train.* GPU-path switches as resolved on this device (benchmark/accel.py)
        environment={**environment(), "world_size": distributed.world_size(),
                     "accel": accel.resolve(cfg.train, device).to_dict()},
        timings={"train_s": train_s, "sample_s": sample_s, "eval_s": eval_s, "total_s": time.perf_counter() - t_start},
        train_history=downsample_history(history) if history else None,
        family=registry.family(cfg.method),
        partial_data=partial_data,
        imported=imported,
        stages=[{"name": str(n), "steps": int(k)} for n, k in stages] if stages is not None else None,
        stage=ckpt_meta.get("stage"),
    )
    path = write_result(result, results_dir)
    rebuild_leaderboard(results_dir)  # the only rebuild of a run; the CLI prints this one (latest_leaderboard)
    return result, path


def run(
    cfg: RunConfig,
    out: str | Path = "runs",
    results_dir: Path | None = None,
    progress: bool = True,
    allow_partial_data: bool = False,
) -> tuple[RunResult, Path]:
    """Check what the run needs (:mod:`benchmark.preflight`), train (or resume), evaluate with the dataset's
    protocol, write the result, rebuild the leaderboard."""
    t0 = time.perf_counter()
    pre = check_run(cfg, allow_partial_data)
    if distributed.is_main():
        announce(pre)
    run_dir = run_dir_for(cfg, out)
    outcome = train(cfg, run_dir, progress)
    return _record(
        cfg, outcome.method, outcome.checkpoint, outcome.train_s, run_dir, results_dir, progress, t0, outcome.history,
        pre.partial_data,
    )  # fmt: skip


def eval_checkpoint(
    checkpoint: str | Path,
    device: str = "auto",
    sets: dict | None = None,
    results_dir: Path | None = None,
    progress: bool = True,
    allow_partial_data: bool = False,
) -> tuple[RunResult, Path]:
    """Score an existing checkpoint under the current protocol file of its dataset, at the checkpoint's tier.

    The model (``method_cfg``, ``train``, ``image_size``, seed) comes from the checkpoint; the evaluation settings
    (splits, metrics, graphs, samples per graph) from the protocol as it is now, so the result carries the
    protocol version it was really scored under; ``eval.*``, sampling-time ``method.*`` fields and ``device``
    may be overridden. Evaluation overrides given at training time are not inherited.
    """
    t0 = time.perf_counter()
    checkpoint = Path(checkpoint)
    dev = resolve_device(device)
    sets = dict(sets or {})
    method_sets = {k.split(".", 1)[1]: sets.pop(k) for k in list(sets) if k.startswith(("method.", "method_cfg."))}
    method, meta = load_method(checkpoint, dev, method_sets)
    rc = dict(meta["run_config"])
    rc["method_cfg"] = method.cfg
    if any(not k.startswith(("eval.", "device")) for k in sets):
        raise ValueError(f"eval: only eval.*, method.* and device may be overridden, got {sorted(sets)}")
    proto_cfg = build_run_config(
        rc["method"], rc["dataset"], rc["tier"], int(rc["seed"]), device, protocol=rc.get("protocol", "")
    )
    rc["eval"] = proto_cfg.eval
    rc["train"] = config_from_dict(TrainConfig, rc["train"])
    cfg = RunConfig(**rc)
    cfg = apply_overrides(cfg, {"device": device, **sets})
    pre = check_run(cfg, allow_partial_data, train=False)
    if distributed.is_main():
        announce(pre)
    history = checkpoint_history(checkpoint)
    return _record(
        cfg, method, checkpoint, float(meta.get("train_s", 0.0)), checkpoint.parent, results_dir, progress, t0, history,
        pre.partial_data,
        meta.get("imported"),
    )  # fmt: skip


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
    from benchmark.scene_graph import file_stems, load_graphs

    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"--samples: expected a positive number of images per graph, got {samples!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir}: a file of that name exists; give a folder for the images")
    dev = resolve_device(device)
    method, _ = load_method(checkpoint, dev)
    items = load_graphs(graphs_json, method.info.vocab)
    if layout == "gt" and not all(bool(it.has_layout.all()) for it in items):
        raise ValueError(f"{graphs_json}: --layout gt needs 'boxes' for every object of every graph")
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = file_stems([it.image_id for it in items])  # image ids may hold '/' etc.; file names may not
    paths = []
    for s in range(samples):
        for start in range(0, len(items), 64):  # batches of 64 graphs: a long file never makes one huge batch
            idx = list(range(start, min(len(items), start + 64)))
            imgs = generate_images(method, collate([items[i] for i in idx]), seed, "generate", idx, s, layout, dev)
            for i, img in zip(idx, imgs):
                p = out_dir / f"{stems[i]}_s{s}.png"
                Image.fromarray(img.permute(1, 2, 0).numpy()).save(p)
                paths.append(p)
    return paths

