"""Speed and memory of the SG2Im baseline at the full-tier configuration (64x64, batch 32, reference dims).

Run: ``python -m pytest benchmarks/test_bench_sg2im.py -p no:cacheprovider --benchmark-enable
-o addopts=--import-mode=importlib``. Figures are reported in ``benchmark.extra_info``, never asserted.

One training iteration = generator step + object-discriminator step + image-discriminator step
(google/sg2im ``scripts/train.py``). ``reference_ops`` runs the same model with google/sg2im's op structure
(dense ``[O, 128, H, W]`` layout built by ``grid_sample`` + ``scatter_add``, per-image crop loop, dense CRN,
contiguous memory format; the in-place activations and the G step without discriminator weight gradients
are shared) so the speed-up is measured side by side on the same (shared, noisy) machine: the ``*_vs_reference_ops``
tests first check that both give the same images and discriminator outputs (``OUTPUT_ATOL``), then alternate
the two call by call (:mod:`benchmarks.side_by_side`) and report both medians and the ratio.
Peak memory is the resident set's high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` before
each case; ``ru_maxrss`` where that is unavailable) on CPU and ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import dataclasses
import resource
import time
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import baselines.sg2im as sg
from benchmark.batch import collate
from benchmark.nn.layout import boxes_to_grid
from benchmark.seeding import sample_generators
from benchmark.train import build_dataset, dataset_info
from benchmarks.side_by_side import alternate

BATCH = 32
SIZE = 64
_crop_bbox_batch = sg.crop_bbox_batch  # the vectorised crop, kept before the reference case patches it


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@pytest.fixture(scope="module")
def data():
    ds = build_dataset("shapes", "train", SIZE)
    return collate([ds[i] for i in range(BATCH)]), dataset_info(ds, "bench")


def _sg2im_crop_bbox_batch(feats, bbox, bbox_to_feats, HH, WW=None):
    """google/sg2im bilinear.py crop_bbox_batch_cudnn structure: a Python loop over the images."""
    WW = HH if WW is None else WW
    n, c, h, w = feats.shape
    crops, order = [], []
    for i in range(n):
        idx = (bbox_to_feats == i).nonzero().view(-1)
        if idx.numel() == 0:
            continue
        crops.append(
            _crop_bbox_batch(
                feats[i : i + 1].expand(idx.numel(), c, h, w).contiguous(),
                bbox[idx],
                torch.arange(idx.numel()),
                HH,
                WW,
            )
        )
        order.append(idx)
    out = torch.cat(crops)
    return out[torch.argsort(torch.cat(order))]


def _sg2im_generator_forward(
    self,
    objs,
    triples,
    obj_to_img,
    num_images,
    noise,
    boxes_gt=None,
    masks_gt=None,
    use_gt=None,
    need_masks=True,
):
    """google/sg2im model.py Sg2ImModel.forward structure: masks_to_layout on [O, D, M, M], dense CRN."""
    obj_vecs = self.encode(objs, triples)
    boxes_pred = self.box_net(obj_vecs)
    masks_pred = self.predict_masks(obj_vecs)
    boxes = boxes_pred if boxes_gt is None else boxes_gt
    masks = masks_pred if masks_gt is None else masks_gt
    o, d = obj_vecs.shape
    m = masks.shape[-1]
    grid = boxes_to_grid(boxes, self.image_size, self.image_size)
    sampled = F.grid_sample(
        obj_vecs.view(o, d, 1, 1) * masks.float().view(o, 1, m, m), grid, align_corners=True
    )
    idx = obj_to_img.view(o, 1, 1, 1).expand_as(sampled)
    layout = torch.zeros(num_images, *sampled.shape[1:], dtype=sampled.dtype).scatter_add(0, idx, sampled)
    layout = torch.cat([layout, noise], dim=1)
    return self.refinement_net(layout), boxes_pred, masks_pred


def _sg2im_obj_discriminator_forward(self, imgs, objs, boxes, obj_to_img):
    """google/sg2im AcCropDiscriminator.forward with its per-image crop loop."""
    crops = _sg2im_crop_bbox_batch(imgs, boxes, obj_to_img, self.object_size)
    vecs = self.fc(self.cnn(crops).mean(dim=(2, 3)))
    return self.real_classifier(vecs), F.cross_entropy(self.obj_classifier(vecs), objs)


def _method(info, reference_ops: bool, device: torch.device) -> sg.Sg2Im:
    """The full-tier model; ``reference_ops`` swaps in google/sg2im's op structure (this instance only)."""
    torch.manual_seed(0)
    cfg = sg.Sg2ImConfig()  # full tier = google/sg2im train.py defaults
    if reference_ops:
        cfg = dataclasses.replace(cfg, fast_layout=False, channels_last=False)
    m = sg.Sg2Im(cfg, info).to(device).train()
    if reference_ops:
        m.generator.forward = types.MethodType(_sg2im_generator_forward, m.generator)
        m.obj_discriminator.forward = types.MethodType(_sg2im_obj_discriminator_forward, m.obj_discriminator)
    return m


def _report(benchmark, m, seconds: list[float], device: torch.device) -> None:
    per_iter = sorted(seconds)[len(seconds) // 2]
    benchmark.extra_info.update(
        device=str(device),
        threads=torch.get_num_threads(),
        batch=BATCH,
        image_size=SIZE,
        g_params=sum(p.numel() for p in m.generator.parameters()),
        d_obj_params=sum(p.numel() for p in m.obj_discriminator.parameters()),
        d_img_params=sum(p.numel() for p in m.img_discriminator.parameters()),
        s_per_iteration_median=round(per_iter, 3),
        s_per_iteration_min=round(min(seconds), 3),
        images_per_s=round(BATCH / per_iter, 3),
    )


@pytest.mark.parametrize("reference_ops", [False, True], ids=["ours", "reference_ops"])
def test_sg2im_train_iteration_cpu(benchmark, data, reference_ops):
    batch, info = data
    device = torch.device("cpu")
    m = _method(info, reference_ops, device)
    step = iter(range(10**6))
    m.train_step(batch, next(step))  # warm-up (oneDNN primitive creation, allocator)
    reset = _reset_peak_rss()
    seconds: list[float] = []

    def one() -> None:
        t0 = time.perf_counter()
        m.train_step(batch, next(step))
        seconds.append(time.perf_counter() - t0)

    benchmark.pedantic(one, rounds=3, iterations=1)
    _report(benchmark, m, seconds, device)
    benchmark.extra_info.update(peak_rss_mib=round(_peak_rss_mib(), 1), peak_rss_reset=reset)


OUTPUT_ATOL = 1e-4  # images in [0, 1] / discriminator logits: float32 summation order differs (factored CRN)


def check_same_outputs(ours: sg.Sg2Im, ref: sg.Sg2Im, batch) -> dict[str, float]:
    """The reference op structure computes what ours computes: same weights, then the same images (predicted
    and ground-truth layout, eval mode) and the same object-discriminator scores and class losses (the crop
    loop), within ``OUTPUT_ATOL``. Returns the largest absolute differences."""
    for (k, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), f"weights differ at {k}"
    diffs = {}
    n = batch.num_images
    for layout in ("pred", "gt"):
        a = ours.sample(batch, sample_generators(0, "check", list(range(n)), 0), layout=layout)
        b = ref.sample(batch, sample_generators(0, "check", list(range(n)), 0), layout=layout)
        diffs[f"images_{layout}"] = float((a - b).abs().max())
    with torch.no_grad():
        ours.obj_discriminator.eval()
        ref.obj_discriminator.eval()
        imgs = ours.preprocess(batch.images)
        sa, la = ours.obj_discriminator(imgs, batch.objs, batch.boxes, batch.obj_to_img)
        sb, lb = ref.obj_discriminator(imgs.contiguous(), batch.objs, batch.boxes, batch.obj_to_img)
        ours.obj_discriminator.train()
        ref.obj_discriminator.train()
    diffs["d_obj_scores"] = float((sa - sb).abs().max())
    diffs["d_obj_class_loss"] = float((la - lb).abs())
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= OUTPUT_ATOL, f"reference op structure differs from ours: {diffs}"
    return diffs


def test_sg2im_train_iteration_vs_reference_ops(benchmark, data):
    """One training iteration (G + D_obj + D_img, sg2im train.py defaults, 64x64, batch 32): the reference op
    structure vs ours, alternately (:mod:`benchmarks.side_by_side`), after checking equal outputs."""
    batch, info = data
    device = torch.device("cpu")
    ours, ref = _method(info, False, device), _method(info, True, device)
    diffs = check_same_outputs(ours, ref, batch)
    step = iter(range(10**6))
    benchmark.extra_info.update(output_max_abs_diff=diffs, output_atol=OUTPUT_ATOL, batch=BATCH, image_size=SIZE)
    alternate(benchmark, "SG2Im training iteration (64 px, batch 32)", lambda: ref.train_step(batch, next(step)),
              lambda: ours.train_step(batch, next(step)), rounds=5, warmup=1,
              peer_name="google/sg2im op structure", items=BATCH)


def test_sg2im_sampling_vs_reference_ops(benchmark, data):
    """Generator inference, predicted layout, eval mode, 64x64, batch 32: reference op structure vs ours."""
    batch, info = data
    device = torch.device("cpu")
    ours, ref = _method(info, False, device), _method(info, True, device)
    diffs = check_same_outputs(ours, ref, batch)
    gens = lambda: sample_generators(0, "bench", list(range(BATCH)), 0)  # noqa: E731

    def run(m):
        with torch.inference_mode():
            m.sample(batch, gens())

    benchmark.extra_info.update(output_max_abs_diff=diffs, output_atol=OUTPUT_ATOL)
    alternate(benchmark, "SG2Im generator inference (pred layout, 64 px, batch 32)", lambda: run(ref),
              lambda: run(ours), rounds=5, warmup=1, peer_name="google/sg2im op structure", items=BATCH)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("reference_ops", [False, True], ids=["ours", "reference_ops"])
def test_sg2im_train_iteration_cuda(benchmark, data, reference_ops):
    batch, info = data
    device = torch.device("cuda")
    m = _method(info, reference_ops, device)
    batch = batch.to(device)
    step = iter(range(10**6))
    for _ in range(3):
        m.train_step(batch, next(step))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    seconds: list[float] = []

    def one() -> None:
        t0 = time.perf_counter()
        m.train_step(batch, next(step))
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)

    benchmark.pedantic(one, rounds=10, iterations=1)
    _report(benchmark, m, seconds, device)
    benchmark.extra_info.update(peak_cuda_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1))
