"""The training loop: any registered method on any registered dataset, CPU or CUDA, resumable.

The loop never imports a specific method or dataset; it resolves names through the registry and calls
``Method.train_step``. Data order is a pure function of (seed, step): epoch ``e`` visits the training set in
``torch.randperm`` order seeded by ``derive_seed(seed, "epoch", e)``, so a resumed run sees exactly the
batches an uninterrupted run would.

Stages: ``Method.stage_plan(train.steps)`` lists ``(name, steps)`` run in order under one global step counter
(default: one stage ``("train", train.steps)``). ``Method.begin_stage(name)`` is called when a stage begins; a
checkpoint is written at the end of every stage but the last, and every checkpoint records the plan, the stage
of its last step and the steps done in it (``stages``, ``stage``, ``stage_step``), so a run killed in any stage
resumes there: weights, then ``begin_stage(stage, resumed=True)`` (which re-creates that stage's optimizers),
then their saved state.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from benchmark import accel as accel_mod
from benchmark import distributed, registry
from benchmark.batch import collate
from benchmark.checkpoint import (
    CheckpointError,
    config_from_dict,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from benchmark.config import RunConfig, apply_overrides
from benchmark.env import environment
from benchmark.interfaces import DatasetInfo, Method, SceneGraphDataset
from benchmark.progress import tqdm
from benchmark.protocol import load_protocol
from benchmark.scene_graph import Vocab
from benchmark.seeding import derive_seed, seed_everything

CHECKPOINT_NAME = "checkpoint.safetensors"


class TrainingDiverged(RuntimeError):
    """A non-finite loss; the last good checkpoint is kept."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return distributed.local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine")
    return distributed.local_device(dev)  # under torchrun, "cuda" is this process's GPU (LOCAL_RANK)


def build_dataset(name: str, split: str, image_size: int) -> SceneGraphDataset:
    return registry.get("dataset", name).build(split=split, image_size=image_size)


def dataset_info(ds: SceneGraphDataset, protocol_version: str) -> DatasetInfo:
    obj_phrases, pred_phrases = ds.phrases()
    return DatasetInfo(
        name=ds.name,
        vocab=ds.vocab,
        image_size=ds.image_size,
        mask_size=ds.mask_size,
        split_version=ds.split_version,
        split_sha256=ds.split_sha256,
        protocol_version=protocol_version,
        phrases=tuple(obj_phrases),
        pred_phrases=tuple(pred_phrases),
    )


class StepSampler(Sampler[list[int]]):
    """Batches for steps [start, stop): epoch-wise permutations seeded by (seed, epoch), drop-last."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int) -> None:
        if n < 1:
            raise ValueError("the training split is empty")
        self.n, self.bs, self.seed, self.start, self.stop = n, min(batch_size, n), seed, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        per_epoch = self.n // self.bs
        for step in range(self.start, self.stop):
            epoch, k = divmod(step, per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch)))
            # Under torchrun each rank takes its equal slice of the same global batch.
            yield distributed.batch_slice(perm[k * self.bs : (k + 1) * self.bs].tolist())


@dataclass
class TrainOutcome:
    method: Method
    checkpoint: Path
    train_s: float
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0
    accel: dict[str, Any] = field(default_factory=dict)  # the effective GPU-path switches (accel.Accel)


Plan = list[tuple[str, int]]


def check_plan(plan: Plan, method: str) -> Plan:
    """``plan`` as a list of ``(str, int >= 0)`` pairs with unique names; a bad one stops naming the method."""
    out = []
    for entry in plan:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], int) and not isinstance(entry[1], bool) and entry[1] >= 0):  # fmt: skip
            raise ValueError(f"method {method!r}: stage_plan entries must be (name, steps >= 0), got {entry!r}")
        out.append((entry[0], int(entry[1])))
    names = [n for n, _ in out]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"method {method!r}: stage_plan needs at least one stage and unique names, got {names}")
    return out


def stage_at(plan: Plan, step: int) -> tuple[str, int]:
    """The stage of the last of ``step`` completed steps and the steps done in it (``(first stage, 0)`` at 0)."""
    end = 0
    for name, n in plan:
        if n and step <= end + n:
            return name, step - end
        end += n
    return (plan[-1][0], plan[-1][1]) if plan else ("train", step)


def _meta(cfg: RunConfig, info: DatasetInfo, step: int, train_s: float, plan: Plan | None = None) -> dict[str, Any]:
    stage, stage_step = stage_at(plan or [], step)
    return {
        "method": cfg.method,
        "method_cfg": asdict(cfg.method_cfg),
        "run_config": cfg.to_dict(),
        "dataset": cfg.dataset,
        "vocab": info.vocab.to_json(),
        "phrases": list(info.phrases),
        "pred_phrases": list(info.pred_phrases),
        "image_size": info.image_size,
        "mask_size": info.mask_size,
        "split_version": info.split_version,
        "split_sha256": info.split_sha256,
        "protocol_version": info.protocol_version,
        "step": step,
        "stages": [[n, k] for n, k in plan or []],  # the method's stage plan: [name, steps] in order
        "stage": stage,  # the stage of the last completed step
        "stage_step": stage_step,  # steps done in that stage
        "train_s": train_s,
        "git_commit": environment().get("git_commit", "unknown"),
    }


def _comparable(run_config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a run config that must match for a resume (evaluation settings may differ), as JSON
    (tuples and lists compare equal, as they come back from the checkpoint's metadata)."""
    return json.loads(json.dumps({k: v for k, v in run_config.items() if k not in ("eval", "device")}))


def train(cfg: RunConfig, run_dir: Path, progress: bool = True) -> TrainOutcome:
    """Train ``cfg.method`` on ``cfg.dataset``; resume from ``run_dir/checkpoint.safetensors`` if present.

    Under torchrun the global batch is split over the ranks and gradients are averaged
    (:mod:`benchmark.distributed`); only rank 0 writes checkpoints.
    """
    device = resolve_device(cfg.device)
    world = distributed.world_size()
    if world > 1 and cfg.train.batch_size % world:
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} is the global batch; it must be a multiple of the "
            f"number of processes ({world})"
        )
    seed_everything(cfg.seed)
    proto = load_protocol(cfg.dataset, cfg.protocol)
    train_set = build_dataset(cfg.dataset, proto["train_split"], cfg.image_size)
    info = dataset_info(train_set, proto["version"])
    method_cls = registry.get("method", cfg.method)
    method: Method = method_cls(cfg.method_cfg, info).to(device)
    accel = accel_mod.resolve(cfg.train, device)
    accel_mod.prepare_method(method, accel)
    plan = check_plan(method.stage_plan(cfg.train.steps), cfg.method) if method_cls.trainable else []

    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / CHECKPOINT_NAME
    start, history, prior_s = 0, [], 0.0
    seen = distributed.all_gather(ckpt.exists())
    if len(set(seen)) > 1:
        raise RuntimeError(
            f"{ckpt} exists for ranks {[r for r, x in enumerate(seen) if x]} only: under torchrun the --out folder "
            "must be on a filesystem that every node sees"
        )
    if seen[0]:
        meta = read_metadata(ckpt)
        if meta.get("method") != cfg.method:
            raise CheckpointError(
                f"{ckpt}: field 'method' is {meta.get('method')!r} but this run trains {cfg.method!r}; "
                "use another --out folder"
            )
        if _comparable(meta.get("run_config", {})) != _comparable(cfg.to_dict()):
            raise CheckpointError(
                f"{ckpt}: field 'run_config' differs from this run's configuration; "
                "use another --out folder or delete the checkpoint to start afresh"
            )
        saved_plan = meta.get("stages")
        if saved_plan is not None and [tuple(x) for x in saved_plan] != [tuple(x) for x in plan]:
            raise CheckpointError(
                f"{ckpt}: field 'stages' is {saved_plan} but this run's stage plan is {[list(x) for x in plan]}; "
                "use another --out folder"
            )
        meta, state, extra = load_checkpoint(ckpt, device)
        resume_stage = stage_at(plan, int(meta["step"]))[0] if plan and int(meta["step"]) > 0 else None
        _restore(method, ckpt, state, extra, resume_stage)
        rngs = extra.get("torch_rng_ranks") if world > 1 else None
        if isinstance(rngs, list) and len(rngs) == world:  # each rank resumes its own stream
            torch.set_rng_state(rngs[distributed.rank()].cpu())
        elif world > 1:
            seed_everything(derive_seed(distributed.rank_seed(cfg.seed), "resume", meta["step"]))
        elif "torch_rng" in extra:
            torch.set_rng_state(extra["torch_rng"].cpu())
        cuda_rngs = extra.get("cuda_rng_ranks") if world > 1 else None
        if device.type == "cuda" and isinstance(cuda_rngs, list) and len(cuda_rngs) == world:
            torch.cuda.set_rng_state(cuda_rngs[distributed.rank()].cpu())
        elif device.type == "cuda" and world == 1 and "cuda_rng" in extra:
            torch.cuda.set_rng_state(extra["cuda_rng"].cpu())
        start, history, prior_s = int(meta["step"]), list(extra.get("history", [])), float(meta.get("train_s", 0.0))
    else:
        method.setup(train_set)
        if world > 1:
            seed_everything(distributed.rank_seed(cfg.seed))  # per-rank noise in train_step
    averager = distributed.GradientAverager(method) if world > 1 else None
    distributed.broadcast_module(method)

    def save(step: int, elapsed: float) -> None:
        bad = [k for k, v in method.state_dict().items() if v.is_floating_point() and not bool(v.isfinite().all())]
        if bad:
            raise TrainingDiverged(
                f"non-finite weights after step {step} ({', '.join(bad[:5])}); the last good checkpoint {ckpt} is kept"
            )
        rng = distributed.gather_to_main(torch.get_rng_state())
        cuda_rng = distributed.gather_to_main(torch.cuda.get_rng_state()) if device.type == "cuda" else None
        if not distributed.is_main():
            return
        extra = {"optimizers": method.optimizer_state(), "torch_rng": torch.get_rng_state(), "history": history}
        if device.type == "cuda":
            extra["cuda_rng"] = torch.cuda.get_rng_state()
        if world > 1:
            extra["torch_rng_ranks"] = rng
            if cuda_rng is not None:
                extra["cuda_rng_ranks"] = cuda_rng
        meta = {**_meta(cfg, info, step, elapsed, plan), "world_size": world}
        save_checkpoint(ckpt, method.state_dict(), meta, extra)

    steps = sum(n for _, n in plan)
    starts, ends, acc = {}, set(), 0  # global step -> the stage that begins there; the steps that end a stage
    for name, n in plan:
        if n:
            starts[acc] = name
            ends.add(acc + n)
        acc += n
    t0 = time.perf_counter()
    if start < steps:
        loader = DataLoader(
            train_set,
            batch_sampler=StepSampler(len(train_set), cfg.train.batch_size, cfg.seed, start, steps),
            collate_fn=collate,
            num_workers=accel.num_workers,
            pin_memory=accel.pin_memory,
            persistent_workers=accel.persistent_workers,
            # Its own generator: creating the iterator must not draw from the global RNG, or a resumed run
            # would see a shifted stream of training noise.
            generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "loader", distributed.rank())),
        )
        scaler = torch.amp.GradScaler(device.type) if accel.grad_scaler else None
        method.train()
        desc = f"train {cfg.method}/{cfg.dataset}"
        bar = tqdm(total=steps, initial=start, desc=desc if len(plan) < 2 else f"{desc} [{stage_at(plan, start + 1)[0]}]",
                   disable=not progress or not distributed.is_main())  # fmt: skip
        for step, batch in enumerate(loader, start=start):
            if step in starts:
                method.begin_stage(starts[step])
                if len(plan) > 1:
                    bar.set_description(f"{desc} [{starts[step]}]")
            batch = accel_mod.prepare_batch(batch, accel, device)
            with accel_mod.train_step_context(accel, scaler):
                losses = method.train_step(batch, step)
            if world > 1:
                losses = distributed.mean_losses(losses)  # the same values (and stop decision) on every rank
                distributed.sync_buffers(method)
            bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
            if bad:
                raise TrainingDiverged(
                    f"non-finite loss at step {step}: {bad}; the last good checkpoint {ckpt} is kept"
                )
            done = step + 1
            if done % cfg.train.log_every == 0 or done == steps:
                history.append({"step": done, **{k: float(v) for k, v in losses.items()}})
                bar.set_postfix({k: f"{v:.3g}" for k, v in list(losses.items())[:4]})
            bar.update(1)
            if (done % cfg.train.checkpoint_every == 0 or done in ends) and done < steps:
                save(done, prior_s + time.perf_counter() - t0)
        bar.close()
    train_s = prior_s + time.perf_counter() - t0
    if distributed.all_gather(start < steps or not ckpt.exists())[0]:  # rank 0's view decides for all
        save(steps, train_s)
    if averager is not None:
        averager.close()
    distributed.barrier()
    method.eval()
    return TrainOutcome(method, ckpt, train_s, steps, history, resumed_from=start, accel=accel.to_dict())


def _restore(
    method: Method, ckpt: Path, state: dict[str, Any], extra: dict[str, Any], stage: str | None = None
) -> None:
    """Load weights and optimizer states for a resume; a mismatch names the checkpoint and the field.

    ``stage``: the stage the checkpoint stopped in; ``begin_stage(stage, resumed=True)`` re-creates its optimizers
    between the weights and their saved state.
    """
    try:
        method.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt}: field 'model' does not fit method {type(method).__name__}: {str(e)[:300]}") from None
    if stage is not None:
        method.begin_stage(stage, resumed=True)
    opts = extra.get("optimizers", {})
    expected = set(method.optimizer_state())
    if not isinstance(opts, dict) or set(opts) != expected:
        got = sorted(opts) if isinstance(opts, dict) else type(opts).__name__
        raise CheckpointError(f"{ckpt}: field 'optimizers' holds {got}, the method has {sorted(expected)}")
    try:
        method.load_optimizer_state(opts)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt}: field 'optimizers' does not fit the method's optimizers ({e})") from None


def load_method(
    path: str | Path, device: str | torch.device = "cpu", overrides: dict[str, Any] | None = None
) -> tuple[Method, dict[str, Any]]:
    """Rebuild a trained method from a self-describing checkpoint (no flags needed).

    ``overrides`` change sampling-time fields of the method config (e.g. ``{"sampler": "ddim"}``).
    """
    meta, state, _ = load_checkpoint(path, device)
    name = meta.get("method")
    if not isinstance(name, str):
        raise CheckpointError(f"{path}: metadata field 'method' is missing")
    try:
        method_cls = registry.get("method", name)
    except registry.UnknownNameError as e:
        raise CheckpointError(f"{path}: metadata field 'method': {e}") from None
    try:
        mcfg = apply_overrides(config_from_dict(method_cls.Config, meta["method_cfg"]), overrides or {})
        info = DatasetInfo(
            name=meta["dataset"],
            vocab=Vocab.from_json(meta["vocab"], source=f"{path} field 'vocab'"),
            image_size=int(meta["image_size"]),
            mask_size=int(meta["mask_size"]),
            split_version=str(meta["split_version"]),
            split_sha256=str(meta.get("split_sha256", "")),
            protocol_version=str(meta["protocol_version"]),
            phrases=tuple(meta.get("phrases", ())),
            pred_phrases=tuple(meta.get("pred_phrases", ())),
        )
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: metadata field {e} is missing or malformed") from None
    try:
        method = method_cls(mcfg, info).to(device)
    except (ValueError, TypeError) as e:
        extra = f" with overrides {overrides}" if overrides else ""
        raise CheckpointError(f"{path}: metadata field 'method_cfg'{extra} does not build method {name!r}: {e}") from None
    try:
        method.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit method {name!r}: {str(e)[:500]}") from None
    method.eval()
    return method, meta
