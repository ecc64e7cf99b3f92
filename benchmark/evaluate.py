"""Sampling and scoring: the same protocol for every (method, dataset) pair.

For each evaluation split of the protocol, the first ``num_graphs`` graphs (split-file order) are
generated ``samples_per_graph`` times, each sample from its own generator (``benchmark.seeding``), and every
metric of the protocol is computed on uint8 images in memory. Real images are the ground-truth images of
the same graphs at the generation resolution.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmark import distributed, registry
from benchmark.batch import SceneGraphBatch, collate
from benchmark.checkpoint import tensor_digest
from benchmark.config import RunConfig
from benchmark.interfaces import EvalInputs, Method, MetricUnavailable, SceneGraphDataset, WeightProvenance
from benchmark.io import atomic_write_bytes, sha256_json
from benchmark.progress import tqdm
from benchmark.results import MetricValue, SplitEvaluation
from benchmark.seeding import sample_generators
from benchmark.train import build_dataset


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [N, 3, H, W] in [0, 1] -> uint8, rounding to nearest (the inverse of x / 255)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


@torch.inference_mode()
def generate_images(
    method: Method,
    batch: SceneGraphBatch,
    seed: int,
    split: str,
    graph_indices: list[int],
    sample_index: int,
    layout: str,
    device: torch.device,
) -> torch.Tensor:
    gens = sample_generators(seed, split, graph_indices, sample_index)
    out = method.sample(batch.to(device), gens, layout=layout)
    expected = (len(graph_indices), 3, method.info.image_size, method.info.image_size)
    if tuple(out.shape) != expected:
        raise RuntimeError(f"{type(method).__name__}.sample returned shape {tuple(out.shape)}, expected {expected}")
    return to_uint8(out)


def _sample_key(
    method: Method, ds: SceneGraphDataset, cfg: RunConfig, device: torch.device, n: int, weights: str | None = None
) -> str:
    """What a chunk of samples depends on: the weights (``weights``: their :func:`tensor_digest`, computed when
    not given), the sampling settings and the batch boundaries."""
    mcfg = dataclasses.asdict(method.cfg) if dataclasses.is_dataclass(method.cfg) else repr(method.cfg)
    weights = weights or tensor_digest(method.state_dict())
    return sha256_json({
        "method": cfg.method, "method_cfg": mcfg, "weights": weights, "seed": cfg.seed,
        "split": ds.split, "split_sha256": ds.split_sha256, "image_size": cfg.image_size, "layout": cfg.eval.layout,
        "num_graphs": n, "batch_size": cfg.eval.batch_size, "samples_per_graph": cfg.eval.samples_per_graph,
        "device": device.type,
    })  # fmt: skip


def _read_chunk(path: Path, idx: list[int], shape: tuple[int, ...]) -> torch.Tensor | None:
    """A finished chunk's images, or None if absent or unusable (it is then generated again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            images, owners = z["images"], z["fake_to_graph"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if images.dtype != np.uint8 or images.shape != (len(idx), *shape) or owners.tolist() != idx:
        return None
    return torch.from_numpy(images.copy())


def sample_split(
    method: Method,
    ds: SceneGraphDataset,
    cfg: RunConfig,
    device: torch.device,
    progress: bool = True,
    cache: Path | None = None,
    key: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
    """Return (real uint8 [N,3,H,W], fake uint8 [N*S,3,H,W], fake_to_graph [N*S], graphs).

    The work is the one-process list of batches (sample ``s``, graphs ``[start, start + batch_size)``),
    numbered ``k``; under torchrun rank ``r`` generates the batches with ``k % world_size == r`` and rank 0
    gathers them, so the images are those of one process (see :mod:`benchmark.distributed`). The other ranks
    get None. With ``cache`` (a folder under the run), each finished batch is written atomically as
    ``<cache>/<key>/chunk_<k>.npz``, ``key`` hashing the weights and sampling settings; a restarted evaluation
    reads the finished chunks instead of generating them again (``key`` may be passed when already known).
    """
    n = min(cfg.eval.num_graphs, len(ds))
    items = [ds[i] for i in range(n)]
    bs = cfg.eval.batch_size
    chunks = [(s, list(range(start, min(n, start + bs)))) for s in range(cfg.eval.samples_per_graph) for start in range(0, n, bs)]
    if cache is not None:
        key = key or _sample_key(method, ds, cfg, device, n)
    folder = cache / key[:16] if cache is not None else None
    shape = (3, cfg.image_size, cfg.image_size)
    mine = distributed.shard(len(chunks))
    done: list[tuple[int, torch.Tensor]] = []
    bar = tqdm(total=sum(len(chunks[k][1]) for k in mine), desc=f"sample {cfg.method}/{ds.split}",
               disable=not progress or not distributed.is_main())  # fmt: skip
    for k in mine:
        s, idx = chunks[k]
        path = folder / f"chunk_{k:05d}.npz" if folder is not None else None
        images = _read_chunk(path, idx, shape) if path is not None else None
        if images is None:
            batch = collate([items[i] for i in idx])
            images = generate_images(method, batch, cfg.seed, ds.split, idx, s, cfg.eval.layout, device)
            if path is not None:
                save_samples(path, images, torch.tensor(idx), [items[i].image_id for i in idx])
        done.append((k, images))
        bar.update(len(idx))
    bar.close()
    gathered = distributed.gather_to_main(done)
    if gathered is None:
        return None  # type: ignore[return-value]  # ranks other than 0 only generate
    by_k = dict(pair for part in gathered for pair in part)
    reals = torch.stack([to_uint8(it.image) for it in items])
    fakes = torch.cat([by_k[k] for k in range(len(chunks))])
    owners = torch.cat([torch.tensor(idx) for _, idx in chunks])
    return reals, fakes, owners, items


@torch.inference_mode()
def predict_boxes_split(
    method: Method, items: list, fake_to_graph: torch.Tensor, cfg: RunConfig, split: str, device: torch.device
) -> list[torch.Tensor] | None:
    """Per generated image, the boxes ``method.predict_boxes`` lays out for its graph (float [O_i, 4], CPU).

    The j-th image of graph g is sample j (as in :func:`sample_split`), predicted with that sample's
    generators. None when the evaluation uses ground-truth layouts or the method predicts no boxes.
    """
    if cfg.eval.layout != "pred" or len(fake_to_graph) == 0:
        return None
    owners = fake_to_graph.tolist()
    samples = max(owners.count(g) for g in set(owners))
    graphs = sorted(set(owners))
    per: dict[tuple[int, int], torch.Tensor] = {}
    for s in range(samples):
        for start in range(0, len(graphs), cfg.eval.batch_size):
            idx = graphs[start : start + cfg.eval.batch_size]
            batch = collate([items[i] for i in idx]).to(device)
            boxes = method.predict_boxes(batch, sample_generators(cfg.seed, split, idx, s))
            if boxes is None:
                return None
            counts = torch.bincount(batch.obj_to_img, minlength=len(idx)).tolist()
            for g, b in zip(idx, boxes.detach().float().cpu().split(counts)):
                per[(g, s)] = b
    seen: dict[int, int] = {}
    out = []
    for g in owners:
        out.append(per[(g, seen.get(g, 0))])
        seen[g] = seen.get(g, 0) + 1
    return out


def score(
    inputs: EvalInputs, metric_names: tuple[str, ...]
) -> tuple[dict[str, MetricValue], list[WeightProvenance]]:
    """Every metric's outputs, each recorded with the metric's declared direction, name and implementation."""
    values: dict[str, MetricValue] = {}
    weights: list[WeightProvenance] = []
    for name in metric_names:
        metric = registry.get("metric", name)()
        facts = {"metric": name, "mode": metric.mode}
        try:
            out = metric.compute(inputs)
        except MetricUnavailable as e:
            for key, hib in metric.outputs.items():
                values[key] = MetricValue(None, hib, unavailable=str(e), **facts)
            continue
        for key, hib in metric.outputs.items():
            if out.get(key) is None:
                reason = metric.unavailable.get(key, "the metric returned no value")
                values[key] = MetricValue(None, hib, unavailable=reason, **facts)
            else:
                values[key] = MetricValue(float(out[key]), hib, **facts)
        weights += [w for w in metric.provenance() if w not in weights]
    return values, weights


def save_samples(path: Path, fake: torch.Tensor, fake_to_graph: torch.Tensor, image_ids: list[str]) -> None:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, images=fake.numpy(), fake_to_graph=fake_to_graph.numpy(), image_ids=np.array(image_ids))
    atomic_write_bytes(path, buf.getvalue())


def evaluate(
    method: Method,
    cfg: RunConfig,
    device: torch.device,
    run_dir: Path | None = None,
    progress: bool = True,
    load_split: Callable[[str], SceneGraphDataset] | None = None,
) -> tuple[list[SplitEvaluation], list[WeightProvenance], dict[str, dict[str, str]], float, float]:
    """Score ``method`` on every eval split. Returns (evaluations, weights, split versions, sample_s, eval_s)."""
    method.eval()
    load = load_split or (lambda split: build_dataset(cfg.dataset, split, cfg.image_size))
    evaluations, weights, splits = [], [], {}
    sample_s = eval_s = 0.0
    digest = tensor_digest(method.state_dict()) if run_dir is not None else None
    for split in cfg.eval.splits:
        ds = load(split)
        splits[split] = {"version": ds.split_version, "sha256": ds.split_sha256}
        t0 = time.perf_counter()
        cache = run_dir / "samples" / split if run_dir is not None else None
        # Hash the weights once per evaluation: the key names both the resumable chunks and the samples file.
        key = _sample_key(method, ds, cfg, device, min(cfg.eval.num_graphs, len(ds)), digest) if cache else None
        sampled = sample_split(method, ds, cfg, device, progress, cache, key)
        if sampled is None:
            continue  # under torchrun, rank 0 scores; the other ranks only generate their shards
        real, fake, owners, items = sampled
        pred_boxes = predict_boxes_split(method, items, owners, cfg, ds.split, device)
        t1 = time.perf_counter()
        samples_rel = None
        if key is not None:
            # One file per (weights, sampling settings): evaluating a checkpoint again with another layout,
            # sampler or guidance scale never overwrites the images behind an earlier result.
            samples_rel = f"samples/{split}__{key[:12]}.npz"
            save_samples(run_dir / samples_rel, fake, owners, [it.image_id for it in items])
        inputs = EvalInputs(
            dataset=cfg.dataset,
            split=split,
            image_size=cfg.image_size,
            vocab=ds.vocab,
            real=real,
            fake=fake,
            fake_to_graph=owners,
            graphs=items,
            device=device,
            load_split=load,
            pred_boxes=pred_boxes,
            layout=cfg.eval.layout,
        )
        metrics, w = score(inputs, cfg.eval.metrics)
        t2 = time.perf_counter()
        sample_s += t1 - t0
        eval_s += t2 - t1
        weights += [x for x in w if x not in weights]
        evaluations.append(
            SplitEvaluation(
                split=split,
                layout=cfg.eval.layout,
                num_graphs=len(items),
                samples_per_graph=cfg.eval.samples_per_graph,
                n_real=len(real),
                n_generated=len(fake),
                metrics=metrics,
                time_s=t2 - t0,
                samples=samples_rel,
            )
        )
    if run_dir is not None and distributed.is_main():  # every split is scored: drop the resumable chunks
        for split in cfg.eval.splits:
            shutil.rmtree(run_dir / "samples" / split, ignore_errors=True)
    return evaluations, weights, splits, sample_s, eval_s
