"""Graph convolution and layout construction (benchmark/nn/graph.py, benchmark/nn/layout.py) against sg2im."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.nn.graph import GraphTripleConv, GraphTripleConvNet, build_mlp
from benchmark.nn.layout import boxes_to_grid, boxes_to_layout, masks_to_layout, object_maps, pack_objects


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is as fast and immune to OpenMP spin-waits on a shared, busy CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _pixel_centres(n: int) -> torch.Tensor:
    return torch.linspace(0, 1, n)  # sg2im's output pixel positions


def _outside(box: list[float], H: int, cells: int = 0) -> torch.Tensor:
    """[H, H] bool: pixels whose position (linspace(0, 1, H)) lies outside the box.

    With ``cells = M`` the box is first widened by one source cell, ``side / (M - 1)``, on each side: sg2im's
    bilinear warp (align_corners=True, zero padding) blurs a non-zero source border over that margin.
    """
    xs, ys = _pixel_centres(H).view(1, H), _pixel_centres(H).view(H, 1)
    x0, y0, x1, y1 = box
    if not cells:
        return (xs < x0) | (xs > x1) | (ys < y0) | (ys > y1)
    mx, my = (x1 - x0) / (cells - 1), (y1 - y0) / (cells - 1)
    return (xs <= x0 - mx) | (xs >= x1 + mx) | (ys <= y0 - my) | (ys >= y1 + my)


def test_build_mlp_matches_sg2im_structure():
    mlp = build_mlp([6, 5, 4])
    kinds = [type(m) for m in mlp]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]  # final_nonlinearity=True by default (sg2im)
    assert [type(m) for m in build_mlp([6, 5, 4], final_nonlinearity=False)] == [
        nn.Linear,
        nn.ReLU,
        nn.Linear,
    ]
    bn = build_mlp([6, 5], batch_norm="batch")
    assert [type(m) for m in bn] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]


def test_graph_conv_averages_over_a_nodes_triples():
    torch.manual_seed(0)
    din, h, dout = 4, 6, 5
    conv = GraphTripleConv(din, output_dim=dout, hidden_dim=h, pooling="avg")
    obj = torch.randn(4, din)
    pred = torch.randn(3, din)
    # object 0 is subject of triples 0 and 1 and object of triple 2; object 3 is in no triple
    edges = torch.tensor([[0, 1], [0, 2], [1, 0]])
    new_obj, new_pred = conv(obj, pred, edges)

    t = [conv.net1(torch.cat([obj[s], pred[k], obj[o]])) for k, (s, o) in enumerate(edges.tolist())]
    s_cand = [v[:h] for v in t]
    p_new = [v[h : h + dout] for v in t]
    o_cand = [v[h + dout :] for v in t]
    pooled = [
        (s_cand[0] + s_cand[1] + o_cand[2]) / 3,  # object 0: 2 x subject + 1 x object
        (o_cand[0] + s_cand[2]) / 2,  # object 1
        o_cand[1] / 1,  # object 2
        torch.zeros(h),  # object 3: no triple -> 0 before net2 (count clamped to 1)
    ]
    expected = torch.stack([conv.net2(p) for p in pooled])
    torch.testing.assert_close(new_obj, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(new_pred, torch.stack(p_new), rtol=1e-5, atol=1e-6)

    summed = GraphTripleConv(din, output_dim=dout, hidden_dim=h, pooling="sum")
    summed.load_state_dict(conv.state_dict())
    sum_obj, _ = summed(obj, pred, edges)
    torch.testing.assert_close(sum_obj[0], conv.net2(s_cand[0] + s_cand[1] + o_cand[2]), rtol=1e-5, atol=1e-6)


def test_graph_conv_net_stacks_layers():
    torch.manual_seed(0)
    net = GraphTripleConvNet(8, num_layers=3, hidden_dim=16)
    obj, pred, edges = torch.randn(5, 8), torch.randn(4, 8), torch.tensor([[0, 1], [1, 2], [3, 4], [4, 0]])
    o, p = obj, pred
    for g in net.gconvs:
        o, p = g(o, p, edges)
    o2, p2 = net(obj, pred, edges)
    assert torch.equal(o, o2) and torch.equal(p, p2) and len(net.gconvs) == 3


def test_masks_to_layout_places_mask_inside_its_box():
    H, box = 32, [0.25, 0.125, 0.75, 0.625]
    vec = torch.tensor([[2.0, -1.0, 0.5]])
    mask = torch.zeros(1, 16, 16)
    mask[0, 4:12, 2:14] = 1
    out = masks_to_layout(vec, torch.tensor([box]), mask, torch.zeros(1, dtype=torch.long), H)
    assert out.shape == (1, 3, H, H)
    outside = _outside(box, H)
    assert out[0][:, outside].abs().max() == 0
    # inside: the layout is vec * (warped mask) with the mask's support strictly inside the box
    inside_vals = out[0, 0][~outside]
    assert inside_vals.max() == 2.0 and (inside_vals == 0).any()
    torch.testing.assert_close(out[0, 1], -0.5 * out[0, 0])
    # an all-ones mask covers the box exactly: the layout is vec on every pixel of the box
    full = masks_to_layout(
        vec, torch.tensor([box]), torch.ones(1, 16, 16), torch.zeros(1, dtype=torch.long), H
    )
    torch.testing.assert_close(full[0, 0][~outside], torch.full_like(full[0, 0][~outside], 2.0))
    # ... and, its border being non-zero, leaks at most one source cell beyond the box (sg2im's blur)
    assert full[0][:, _outside(box, H, cells=16)].abs().max() == 0


def test_boxes_to_layout_places_vector_inside_its_box_and_sums_objects():
    H = 16
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    vecs = torch.tensor([[1.0], [10.0], [100.0]])
    o2i = torch.tensor([0, 0, 1])
    out = boxes_to_layout(vecs, boxes, o2i, H)
    assert out.shape == (2, 1, H, H)
    # zero outside both boxes (each widened by one cell of the 8x8 constant source sg2im warps)
    far = _outside(boxes[0].tolist(), H, cells=8) & _outside(boxes[1].tolist(), H, cells=8)
    assert far.any() and out[0, 0][far].abs().max() == 0
    assert out[0, 0, 0, 0] == 1.0 and out[0, 0, -1, -1] == 10.0
    assert out[0, 0, 6, 6] == 11.0  # inside both boxes of image 0: summed (pooling="sum")
    torch.testing.assert_close(out[1, 0], torch.full((H, H), 100.0))


def _sg2im_masks_to_layout(vecs, boxes, masks, obj_to_img, H):
    """sg2im/layout.py masks_to_layout verbatim (O x D grid_sample, scatter_add), align_corners=True (torch 0.4)."""
    o, d = vecs.shape
    m = masks.shape[1]
    grid = _sg2im_boxes_to_grid(boxes, H, H)
    sampled = F.grid_sample(vecs.view(o, d, 1, 1) * masks.view(o, 1, m, m), grid, align_corners=True)
    n = int(obj_to_img.max()) + 1
    idx = obj_to_img.view(o, 1, 1, 1).expand(o, d, H, H)
    return torch.zeros(n, d, H, H).scatter_add(0, idx, sampled)


def _sg2im_boxes_to_grid(boxes, H, W):
    """sg2im/layout.py _boxes_to_grid verbatim."""
    o = boxes.size(0)
    boxes = boxes.view(o, 4, 1, 1)
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    X = (torch.linspace(0, 1, steps=W).view(1, 1, W) - x0) / (x1 - x0)
    Y = (torch.linspace(0, 1, steps=H).view(1, H, 1) - y0) / (y1 - y0)
    return torch.stack([X.expand(o, H, W), Y.expand(o, H, W)], dim=3).mul(2).sub(1)


def test_layout_equals_sg2im_formulation():
    g = torch.Generator().manual_seed(0)
    n_obj, d, H = 9, 6, 24
    xy = torch.rand(n_obj, 2, generator=g) * 0.6
    boxes = torch.cat([xy, xy + 0.1 + 0.3 * torch.rand(n_obj, 2, generator=g)], 1)
    masks = (torch.rand(n_obj, 16, 16, generator=g) > 0.4).float()
    vecs = torch.randn(n_obj, d, generator=g)
    o2i = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    torch.testing.assert_close(boxes_to_grid(boxes, H, H), _sg2im_boxes_to_grid(boxes, H, H))
    torch.testing.assert_close(
        masks_to_layout(vecs, boxes, masks, o2i, H), _sg2im_masks_to_layout(vecs, boxes, masks, o2i, H)
    )
    assert object_maps(boxes, masks, H).shape == (n_obj, H, H)


def test_pack_objects_slots():
    img, slot, n, s = pack_objects(torch.tensor([0, 0, 1, 2, 2, 2]))
    assert slot.tolist() == [0, 1, 0, 0, 1, 2] and n == 3 and s == 3
    _, slot, _, _ = pack_objects(torch.tensor([1, 0, 1, 0]))  # unsorted input
    assert slot.tolist() == [0, 0, 1, 1]
