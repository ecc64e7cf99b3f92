"""The layout-to-image baselines' box sources: the sg2im box predictor, checkpoints as box sources, gt/pred rule."""

from __future__ import annotations

import pytest
import torch

from benchmark.batch import collate
from benchmark.config import build_run_config
from benchmark.nn.layout_predictor import GraphBoxPredictor, layout_boxes, load_box_source, usable_boxes
from benchmark.seeding import sample_generators
from benchmark.train import build_dataset, dataset_info, train


@pytest.fixture(scope="module")
def shapes_batch():
    ds = build_dataset("shapes", "train", 32)
    return ds, collate([ds[i] for i in range(8)])


def test_predictor_learns_the_boxes(shapes_batch):
    ds, batch = shapes_batch
    torch.manual_seed(0)
    obj_phrases, pred_phrases = ds.phrases()
    net = GraphBoxPredictor(obj_phrases, pred_phrases, embed_dim=16, gconv_dim=16, hidden_dim=32, layers=2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = net.loss(batch, net(batch))
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert net(batch).shape == (batch.objs.shape[0], 4)
    assert float(loss.detach()) < 0.25 * first
    # __image__ rows are not in the loss: moving them changes nothing
    known = net.known(batch)
    assert not bool(known[batch.objs == net.image_obj].any())


def test_loss_is_the_mse_over_known_objects(shapes_batch):
    ds, batch = shapes_batch
    obj_phrases, pred_phrases = ds.phrases()
    net = GraphBoxPredictor(obj_phrases, pred_phrases, embed_dim=8, gconv_dim=8, hidden_dim=8, layers=1)
    pred = torch.rand(batch.objs.shape[0], 4)
    known = net.known(batch)
    expected = ((pred[known] - batch.boxes[known]) ** 2).mean()
    assert torch.allclose(net.loss(batch, pred), expected)


def test_layout_boxes_keeps_gt_where_known(shapes_batch):
    _, batch = shapes_batch
    pred = torch.full_like(batch.boxes, 0.5)
    assert torch.equal(layout_boxes(batch, pred, "pred"), pred)
    assert torch.equal(layout_boxes(batch, pred, "gt"), batch.boxes)
    batch.has_layout = torch.ones(batch.objs.shape[0], dtype=torch.bool)
    batch.has_layout[1] = False
    out = layout_boxes(batch, pred, "gt")
    assert torch.equal(out[1], pred[1]) and torch.equal(out[0], batch.boxes[0])
    with pytest.raises(ValueError, match="layout"):
        layout_boxes(batch, pred, "both")


def test_usable_boxes_are_ordered_and_wide_enough():
    raw = torch.tensor([[0.6, 0.7, 0.2, 0.1], [0.5, 0.5, 0.5, 0.5], [-0.2, 1.3, 0.99, 0.98]])
    out = usable_boxes(raw, min_side=0.1)
    assert (out[:, 2] - out[:, 0] >= 0.1 - 1e-6).all() and (out[:, 3] - out[:, 1] >= 0.1 - 1e-6).all()
    assert out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out[0], torch.tensor([0.2, 0.1, 0.6, 0.7]))


def test_checkpoint_box_source_gives_the_methods_boxes(tmp_path):
    cfg = build_run_config("sg2im", "shapes", tier="smoke", seed=0, device="cpu")
    out = train(cfg, tmp_path / "run", progress=False)
    src = load_box_source(out.checkpoint)
    ds = build_dataset("shapes", "test", cfg.image_size)
    src.check(dataset_info(ds, "x"))
    batch = collate([ds[i] for i in range(3)])
    gens = sample_generators(0, "test", [0, 1, 2], 0)
    boxes = src(batch, gens)
    assert torch.equal(boxes, out.method.predict_boxes(batch, sample_generators(0, "test", [0, 1, 2], 0)))
    assert src.provenance.sha256 and src.provenance.source.startswith("checkpoint:sg2im:")
    other = dataset_info(ds, "x")
    other = type(other)(**{**other.__dict__, "name": "vg"})
    with pytest.raises(ValueError, match="field 'dataset'"):
        src.check(other)


def test_a_method_without_boxes_is_refused(tmp_path):
    cfg = build_run_config("retrieval", "shapes", tier="smoke", seed=0, device="cpu")
    out = train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="predicts no boxes"):
        load_box_source(out.checkpoint)
