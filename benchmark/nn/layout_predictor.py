"""Boxes from a scene graph, for the layout-to-image baselines' predicted-layout mode.

Layout-to-image models (LostGAN-V2, LayoutDiffusion) take boxes. The scene-graph-to-image literature runs them
twice: on the ground-truth layout (their published protocol) and on a layout predicted from the graph, so the
gap between the two measures how much the layout predictor costs. Two sources of predicted boxes:

- :class:`GraphBoxPredictor`: sg2im's layout path (Johnson et al., CVPR 2018; google/sg2im ``sg2im/model.py``:
  ``obj_embeddings`` -> ``GraphTripleConv`` stack -> ``box_net``), trained by the baseline with sg2im's box loss
  ``MSE(b_pred, b_gt)`` beside its generator;
- :func:`load_box_source`: the box head of a trained suite checkpoint of any method that implements
  ``Method.predict_boxes`` (``sg2im*``, ``*_ddpm``), so the baseline sees exactly the boxes that method renders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.batch import SceneGraphBatch
from benchmark.interfaces import DatasetInfo, Method, WeightProvenance
from benchmark.nn.embedding import NodeEmbedding
from benchmark.nn.graph import GraphTripleConv, GraphTripleConvNet, build_mlp
from benchmark.scene_graph import IMAGE_TOKEN


class GraphBoxPredictor(nn.Module):
    """sg2im's box predictor: learned embeddings ``[O, E]``, ``[T, E]`` -> ``GraphTripleConv(E -> G)`` +
    ``GraphTripleConvNet(G, layers - 1)`` -> ``box_net = MLP(G -> hidden -> 4)`` -> boxes ``[O, 4]`` as
    ``(x0, y0, x1, y1)`` in image-normalised coordinates (sg2im's ``box_net`` has no final activation on
    this path; the defaults are sg2im ``train.py``'s widths).
    """

    def __init__(
        self,
        obj_phrases: Sequence[str],
        pred_phrases: Sequence[str],
        embed_dim: int = 128,
        gconv_dim: int = 128,
        hidden_dim: int = 512,
        layers: int = 5,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"GraphBoxPredictor needs at least one graph-convolution layer, got {layers}")
        self.obj_embed = NodeEmbedding(obj_phrases, embed_dim)
        self.pred_embed = NodeEmbedding(pred_phrases, embed_dim)
        self.image_obj = list(obj_phrases).index(IMAGE_TOKEN) if IMAGE_TOKEN in obj_phrases else -1
        self.gconv = GraphTripleConv(embed_dim, output_dim=gconv_dim, hidden_dim=hidden_dim)
        self.gconv_net = GraphTripleConvNet(gconv_dim, num_layers=layers - 1, hidden_dim=hidden_dim) if layers > 1 else None
        self.box_net = build_mlp([gconv_dim, hidden_dim, 4], final_nonlinearity=False)

    def forward(self, batch: SceneGraphBatch) -> Tensor:
        """Boxes ``[O, 4]`` for the objects of ``batch`` (its order)."""
        obj = self.obj_embed(batch.objs)
        pred = self.pred_embed(batch.triples[:, 1])
        edges = batch.triples[:, [0, 2]]
        obj, pred = self.gconv(obj, pred, edges)
        if self.gconv_net is not None:
            obj, pred = self.gconv_net(obj, pred, edges)
        return self.box_net(obj)

    @torch.no_grad()
    def predict(self, batch: SceneGraphBatch) -> Tensor:
        """Boxes ``[O, 4]`` in eval mode, without autograd (the module's train/eval mode is restored)."""
        was = self.training
        self.eval()
        try:
            return self(batch)
        finally:
            self.train(was)

    def known(self, batch: SceneGraphBatch) -> Tensor:
        """Objects ``[O]`` (bool) with a ground-truth box, ``__image__`` excluded: the rows of the loss."""
        known = batch.objs != self.image_obj
        if batch.has_layout is not None:
            known &= batch.has_layout.bool()
        return known

    def loss(self, batch: SceneGraphBatch, boxes: Tensor) -> Tensor:
        """sg2im's ``bbox_pred`` loss: mean squared error over the known objects (0 when there are none)."""
        known = self.known(batch)
        if not bool(known.any()):
            return boxes.sum() * 0.0
        return F.mse_loss(boxes[known].float(), batch.boxes[known].float())


def usable_boxes(boxes: Tensor, min_side: float = 1.0 / 32) -> Tensor:
    """Predicted boxes made drawable: corners ordered, clamped to [0, 1], each side at least ``min_side``."""
    x0, y0, x1, y1 = boxes.float().clamp(0, 1).unbind(1)
    lo_x, hi_x = torch.minimum(x0, x1), torch.maximum(x0, x1)
    lo_y, hi_y = torch.minimum(y0, y1), torch.maximum(y0, y1)
    hi_x = torch.maximum(hi_x, (lo_x + min_side).clamp(max=1.0))
    hi_y = torch.maximum(hi_y, (lo_y + min_side).clamp(max=1.0))
    lo_x = torch.minimum(lo_x, hi_x - min_side)
    lo_y = torch.minimum(lo_y, hi_y - min_side)
    return torch.stack([lo_x, lo_y, hi_x, hi_y], dim=1)


def layout_boxes(batch: SceneGraphBatch, pred: Tensor, layout: str) -> Tensor:
    """The boxes a layout-conditioned generator draws, ``[O, 4]``.

    ``"gt"``: ``batch.boxes`` where the ground truth is known (``has_layout``), the prediction elsewhere (the rule
    of SG2Im's ``use_gt``: 4D-OR objects without segmentation keep a predicted box); ``"pred"``: ``pred``.
    """
    if layout == "pred":
        return pred
    if layout != "gt":
        raise ValueError(f"layout must be 'pred' or 'gt', got {layout!r}")
    if batch.has_layout is None:
        return batch.boxes.to(pred.dtype)
    keep = batch.has_layout.bool().view(-1, 1)
    return torch.where(keep, batch.boxes.to(pred.dtype), pred)


@dataclass
class BoxSource:
    """The box head of a trained suite checkpoint: ``source(batch, generators) -> [O, 4]``."""

    method: Method
    path: Path
    provenance: WeightProvenance

    def check(self, info: DatasetInfo) -> None:
        """Stop when the checkpoint was trained on another dataset or vocabulary than ``info``'s."""
        mine = self.method.info
        if mine.name != info.name:
            raise ValueError(f"{self.path}: field 'dataset' is {mine.name!r}, this run's dataset is {info.name!r}")
        if mine.vocab.to_json() != info.vocab.to_json():
            raise ValueError(f"{self.path}: field 'vocab' differs from dataset {info.name!r}'s vocabulary")

    @torch.no_grad()
    def __call__(self, batch: SceneGraphBatch, generator: list[torch.Generator]) -> Tensor:
        boxes = self.method.predict_boxes(batch, generator)
        if boxes is None:
            raise ValueError(f"{self.path}: method {type(self.method).__name__} predicts no boxes")
        return boxes.float()


def load_box_source(path: str | Path, device: str | torch.device = "cpu") -> BoxSource:
    """Load a suite checkpoint (``checkpoint.safetensors`` of an ``sg2im*`` or ``*_ddpm`` run) as a box source.

    The checkpoint describes itself (``benchmark.train.load_method``); a method without ``predict_boxes`` stops
    with one line naming the file.
    """
    from benchmark.io import sha256_file
    from benchmark.train import load_method

    path = Path(path)
    method, meta = load_method(path, device)
    if type(method).predict_boxes is Method.predict_boxes:
        raise ValueError(f"{path}: field 'method' is {meta.get('method')!r}, which predicts no boxes")
    method.requires_grad_(False)
    prov = WeightProvenance("layout_from", f"checkpoint:{meta.get('method')}:{path.name}", sha256_file(path))
    return BoxSource(method, path, prov)
