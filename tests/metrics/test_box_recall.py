"""Box recall: IoU arithmetic, the metric, and the methods' ``predict_boxes`` (= the boxes they render)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmark import registry
from benchmark.batch import collate
from benchmark.config import build_run_config
from benchmark.data.shapes import ShapesDataset
from benchmark.evaluate import predict_boxes_split
from benchmark.interfaces import EvalInputs, MetricUnavailable
from benchmark.metrics.box_recall import box_ious, paired_iou
from benchmark.protocol import load_protocol
from benchmark.seeding import sample_generators
from benchmark.train import build_dataset, dataset_info


def test_paired_iou_by_hand() -> None:
    a = torch.tensor(
        [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0.5, 0.5], [0.2, 0.2, 0.6, 0.6], [0.5, 0.5, 0.4, 0.9]]
    )
    b = torch.tensor(
        [[0, 0, 1, 1], [0, 0, 0.5, 1], [0.5, 0.5, 1, 1], [0.4, 0.4, 0.8, 0.8], [0.4, 0.4, 0.6, 0.6]]
    )
    # identical; half; touching corners; 0.04 / (0.16 + 0.16 - 0.04); inverted x (zero area)
    want = torch.tensor([1.0, 0.5, 0.0, 0.04 / 0.28, 0.0], dtype=torch.float64)
    assert torch.allclose(paired_iou(a, b), want, atol=1e-12)


def _inputs(layout: str = "pred", pred: list | None = None, samples: int = 2) -> EvalInputs:
    ds = ShapesDataset.build("val", 32)
    items = [ds[i] for i in range(6)]
    owners = torch.arange(6).repeat(samples)
    fake = torch.zeros(len(owners), 3, 32, 32, dtype=torch.uint8)
    return EvalInputs("shapes", "val", 32, ds.vocab, fake[:6], fake, owners, items, torch.device("cpu"),
                      lambda s: ShapesDataset.build(s, 32), pred_boxes=pred, layout=layout)  # fmt: skip


def test_metric_on_known_boxes() -> None:
    inputs = _inputs()
    metric = registry.get("metric", "box_recall")()
    assert metric.outputs == {"box_recall@0.3": True, "box_recall@0.5": True}
    inputs.pred_boxes = [inputs.graphs[g].boxes.clone() for g in inputs.fake_to_graph.tolist()]
    assert metric.compute(inputs) == {"box_recall@0.3": 1.0, "box_recall@0.5": 1.0}
    # Sample 0 exact; sample 1 shrunk about its centre to 60% of the side: IoU 0.36 (>= 0.3, < 0.5).
    shrunk = []
    for k, g in enumerate(inputs.fake_to_graph.tolist()):
        b = inputs.graphs[g].boxes.clone()
        if k >= 6:
            c, half = (b[:, :2] + b[:, 2:]) / 2, 0.3 * (b[:, 2:] - b[:, :2])
            b = torch.cat([c - half, c + half], dim=1)
        shrunk.append(b)
    inputs.pred_boxes = shrunk
    ious = box_ious(inputs)
    n_obj = sum(len(it.objs) - 1 for it in inputs.graphs)  # the __image__ node is not scored
    assert ious.shape == (2 * n_obj,)
    assert torch.allclose(ious[ious < 1], torch.full((n_obj,), 0.36, dtype=torch.float64), atol=1e-5)
    assert metric.compute(inputs) == {"box_recall@0.3": 1.0, "box_recall@0.5": 0.5}


def test_unavailable_without_predicted_layouts() -> None:
    metric = registry.get("metric", "box_recall")()
    with pytest.raises(MetricUnavailable, match="predicts no boxes"):
        metric.compute(_inputs(pred=None))
    with pytest.raises(MetricUnavailable, match="'gt' layouts"):
        metric.compute(_inputs(layout="gt", pred=[torch.zeros(1, 4)]))


def _smoke(name: str):  # noqa: ANN202
    cfg = build_run_config(
        name, "shapes", tier="smoke", seed=0, device="cpu", sets={"eval.samples_per_graph": 2}
    )
    ds = build_dataset("shapes", "train", cfg.image_size)
    torch.manual_seed(0)
    m = registry.get("method", name)(cfg.method_cfg, dataset_info(ds, load_protocol("shapes")["version"]))
    m.setup(ds)
    return m.eval(), cfg, [ds[i] for i in range(5)]


def test_sg2im_predicted_boxes_are_the_rendered_ones() -> None:
    m, _, items = _smoke("sg2im")
    batch = collate(items)
    boxes = m.predict_boxes(batch, sample_generators(0, "test", list(range(5)), 0))
    assert boxes.shape == batch.boxes.shape
    # Rendering with these boxes (and the predicted masks) as ground truth gives the predicted-layout image.
    _, masks = m.predict_layout(batch)
    noise = m._noise(5, sample_generators(0, "test", list(range(5)), 0), torch.device("cpu"))
    with torch.no_grad():
        pred_img, boxes_pred, _ = m.generator(batch.objs, batch.triples, batch.obj_to_img, 5, noise)
        gt_img, _, _ = m.generator(
            batch.objs, batch.triples, batch.obj_to_img, 5, noise, boxes_gt=boxes, masks_gt=masks
        )
    assert torch.equal(boxes, boxes_pred)
    assert torch.allclose(pred_img, gt_img, atol=1e-6)


def test_sg_diffusion_predicted_boxes_are_the_rendered_ones() -> None:
    m, _, items = _smoke("learned_ddpm")
    batch = collate(items)
    boxes = m.predict_boxes(batch, sample_generators(0, "test", list(range(5)), 0))
    assert boxes.shape == batch.boxes.shape and bool(((boxes >= 0) & (boxes <= 1)).all())
    cond = m.ema.cond
    with torch.no_grad():
        pred = cond(batch, layout="pred")
        masks = torch.sigmoid(pred.mask_logits)
        masks[batch.objs == cond.image_obj] = 1.0
        as_gt = cond(dataclasses.replace(batch, boxes=boxes, masks=masks), layout="gt")
    assert torch.equal(pred.layout, as_gt.layout) and torch.equal(pred.tokens, as_gt.tokens)


@pytest.mark.parametrize("name", ["sg2im", "learned_ddpm", "retrieval"])
def test_predict_boxes_split_per_generated_image(name: str) -> None:
    m, cfg, items = _smoke(name)
    owners = torch.arange(5).repeat(2)
    out = predict_boxes_split(m, items, owners, cfg, "test", torch.device("cpu"))
    if name == "retrieval":
        assert out is None  # no layout
        return
    assert out is not None and len(out) == 10
    direct = m.predict_boxes(collate(items), sample_generators(cfg.seed, "test", list(range(5)), 1))
    for g in range(5):
        assert torch.equal(out[5 + g], direct[collate(items).obj_to_img == g].float())
    gt_cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, layout="gt"))
    assert predict_boxes_split(m, items, owners, gt_cfg, "test", torch.device("cpu")) is None
