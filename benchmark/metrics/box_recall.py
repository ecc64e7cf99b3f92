"""Box recall of predicted layouts (SG2Im, Johnson et al. CVPR 2018, "R@0.3 / R@0.5").

For every generated image, the method's predicted box of each object (:meth:`Method.predict_boxes`, the
box ``sample(layout="pred")`` renders) is compared with the ground-truth box of the same object:

    IoU(a, b) = |a n b| / |a u b|,   box_recall@t = #{objects with IoU >= t} / #objects,

micro-averaged over all (generated image, object) pairs of the split. Objects are those with a known
ground-truth box (``has_layout``) that are not ``__image__``-like nodes (names starting with ``__``). Boxes
are ``(x0, y0, x1, y1)``; a box with ``x1 <= x0`` or ``y1 <= y0`` has zero area (IoU 0). The IoU is
``torchvision.ops.box_iou`` (the pairwise diagonal). Unavailable when the evaluation uses ground-truth
layouts or the method predicts no boxes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.interfaces import EvalInputs, Metric, MetricUnavailable
from benchmark.registry import register

THRESHOLDS = (0.3, 0.5)


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of row i of ``a`` [K, 4] with row i of ``b`` [K, 4] (degenerate boxes have zero area)."""
    from torchvision.ops import box_iou

    if a.shape[0] == 0:
        return a.new_zeros(0)
    a, b = a.double(), b.double()
    # box_iou divides by the union; clamp inverted corners to zero-area boxes first.
    a = torch.cat([a[:, :2], torch.maximum(a[:, 2:], a[:, :2])], dim=1)
    b = torch.cat([b[:, :2], torch.maximum(b[:, 2:], b[:, :2])], dim=1)
    return torch.nan_to_num(box_iou(a, b).diagonal(), nan=0.0)


def box_ious(inputs: EvalInputs) -> Tensor:
    """IoU of every evaluated (generated image, object) pair, float64 [K]."""
    assert inputs.pred_boxes is not None
    names = inputs.vocab.object_idx_to_name
    if len(inputs.pred_boxes) != len(inputs.fake_to_graph):
        raise ValueError(
            f"box_recall: {len(inputs.pred_boxes)} predicted box sets for {len(inputs.fake_to_graph)} images"
        )
    ious = []
    for pred, g in zip(inputs.pred_boxes, inputs.fake_to_graph.tolist()):
        item = inputs.graphs[g]
        if pred.shape != item.boxes.shape:
            raise ValueError(
                f"box_recall: predicted boxes {tuple(pred.shape)} for graph {item.image_id!r} with "
                f"{item.boxes.shape[0]} objects"
            )
        keep = torch.tensor([not names[o].startswith("__") for o in item.objs.tolist()], dtype=torch.bool)
        if item.has_layout is not None:
            keep &= item.has_layout.bool().cpu()
        ious.append(paired_iou(pred.cpu()[keep], item.boxes.cpu()[keep]))
    return torch.cat(ious) if ious else torch.zeros(0, dtype=torch.float64)


@register(
    "metric",
    "box_recall",
    outputs={"box_recall@0.3": True, "box_recall@0.5": True},
    mode="Fraction of objects whose predicted box has IoU >= 0.3 / 0.5 with the ground truth",
)
class BoxRecall(Metric):
    """Fraction of objects whose predicted box has IoU >= 0.3 / 0.5 with the ground truth; higher is better."""

    def __init__(self) -> None:
        super().__init__()

    def compute(self, inputs: EvalInputs) -> dict[str, float | None]:
        if inputs.layout != "pred":
            raise MetricUnavailable(
                f"box_recall scores predicted layouts; this evaluation uses {inputs.layout!r} layouts"
            )
        if inputs.pred_boxes is None:
            raise MetricUnavailable(
                "box_recall: the method predicts no boxes (Method.predict_boxes returned None)"
            )
        ious = box_ious(inputs)
        if ious.numel() == 0:
            for key in self.outputs:
                self.unavailable[key] = "no object with a known ground-truth box in the evaluated graphs"
            return dict.fromkeys(self.outputs)
        return {f"box_recall@{t}": float((ious >= t).double().mean()) for t in THRESHOLDS}
