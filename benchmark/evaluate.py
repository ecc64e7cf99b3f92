"""Sampling and scoring: the same protocol for every (method, dataset) pair.

For each evaluation split of the protocol, the first ``num_graphs`` graphs (split-file order) are
generated ``samples_per_graph`` times, each sample from its own generator (``benchmark.seeding``), and every
metric of the protocol is computed on uint8 images in memory. Real images are the ground-truth images of
the same graphs at the generation resolution.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark import registry
from benchmark.batch import SceneGraphBatch, collate
from benchmark.config import RunConfig
from benchmark.interfaces import EvalInputs, Method, MetricUnavailable, SceneGraphDataset, WeightProvenance
from benchmark.io import atomic_write_bytes
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


def sample_split(
    method: Method, ds: SceneGraphDataset, cfg: RunConfig, device: torch.device, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
    """Return (real uint8 [N,3,H,W], fake uint8 [N*S,3,H,W], fake_to_graph [N*S], graphs)."""
    n = min(cfg.eval.num_graphs, len(ds))
    items = [ds[i] for i in range(n)]
    reals = torch.stack([to_uint8(it.image) for it in items])
    fakes, owners = [], []
    bs = cfg.eval.batch_size
    total = n * cfg.eval.samples_per_graph
    bar = tqdm(total=total, desc=f"sample {cfg.method}/{ds.split}", disable=not progress)
    for s in range(cfg.eval.samples_per_graph):
        for start in range(0, n, bs):
            idx = list(range(start, min(n, start + bs)))
            batch = collate([items[i] for i in idx])
            fakes.append(generate_images(method, batch, cfg.seed, ds.split, idx, s, cfg.eval.layout, device))
            owners.append(torch.tensor(idx))
            bar.update(len(idx))
    bar.close()
    return reals, torch.cat(fakes), torch.cat(owners), items


def score(
    inputs: EvalInputs, metric_names: tuple[str, ...]
) -> tuple[dict[str, MetricValue], list[WeightProvenance]]:
    values: dict[str, MetricValue] = {}
    weights: list[WeightProvenance] = []
    for name in metric_names:
        metric = registry.get("metric", name)()
        try:
            out = metric.compute(inputs)
        except MetricUnavailable as e:
            for key, hib in metric.outputs.items():
                values[key] = MetricValue(None, hib, unavailable=str(e))
            continue
        for key, hib in metric.outputs.items():
            if out.get(key) is None:
                reason = getattr(metric, "unavailable", {}).get(key, "the metric returned no value")
                values[key] = MetricValue(None, hib, unavailable=reason)
            else:
                values[key] = MetricValue(float(out[key]), hib)
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
    for split in cfg.eval.splits:
        ds = load(split)
        splits[split] = {"version": ds.split_version, "sha256": ds.split_sha256}
        t0 = time.perf_counter()
        real, fake, owners, items = sample_split(method, ds, cfg, device, progress)
        t1 = time.perf_counter()
        if run_dir is not None:
            save_samples(run_dir / "samples" / f"{split}.npz", fake, owners, [it.image_id for it in items])
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
            )
        )
    return evaluations, weights, splits, sample_s, eval_s
