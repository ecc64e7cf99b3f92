"""Scene layouts from object vectors, boxes and masks, as in google/sg2im ``sg2im/layout.py``.

A layout is an image-sized feature map ``[N, D, H, W]``: every object paints its vector ``v_o [D]`` over its
box (``boxes_to_layout``) or over its mask warped into its box (``masks_to_layout``), and the objects of one
image are summed (``pooling="sum"``, sg2im's default) or averaged. Boxes are ``(x0, y0, x1, y1)`` in [0, 1].

The warp is bilinear ``F.grid_sample`` with zero padding and ``align_corners=True`` (sg2im was written for
PyTorch 0.4, whose ``grid_sample`` had the ``align_corners=True`` semantics; PyTorch >= 1.3 defaults to False).

Because ``grid_sample`` is linear in its input, ``warp(v_o * m_o) = v_o (x) warp(m_o)``: we warp the one-channel
masks ``[O, 1, M, M]`` once and form the layout with one batched matrix product per image
(:func:`objects_to_layout`) instead of warping an ``[O, D, M, M]`` tensor (sg2im); the result is the same up
to float rounding, at ~D times less warping work. :func:`object_maps` exposes the per-object maps so that a
network can consume the layout in this factored form (``baselines/sg2im.py`` does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "boxes_to_grid",
    "boxes_to_layout",
    "masks_to_layout",
    "object_maps",
    "objects_to_layout",
    "pack_objects",
]


def _nonzero(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``x`` with entries of magnitude below ``eps`` replaced by ``eps``: a degenerate (zero-width) box, e.g. a
    fresh box regressor's ReLU output, then covers no pixel instead of giving 0/0 = NaN (sg2im divides as is)."""
    return torch.where(x.abs() < eps, torch.full_like(x, eps), x)


def boxes_to_grid(boxes: Tensor, H: int, W: int | None = None) -> Tensor:
    """Sampling grid ``[O, H, W, 2]`` that maps each output pixel into box-normalised coordinates in [-1, 1].

    Follows sg2im/layout.py ``_boxes_to_grid``: output pixel centres sit at ``linspace(0, 1, W)`` (x) and
    ``linspace(0, 1, H)`` (y); pixel x maps to ``u = (x - x0) / (x1 - x0)``, then to ``2u - 1`` so that the box
    edges land on -1 / +1 (the centres of the first and last source cells under ``align_corners=True``).
    Box sides shorter than 1e-6 are taken as 1e-6 (sg2im would divide by zero).
    """
    W = H if W is None else W
    o = boxes.shape[0]
    b = boxes.view(o, 4, 1, 1)
    x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]  # each [O, 1, 1]
    xs = torch.linspace(0, 1, steps=W, device=boxes.device, dtype=boxes.dtype).view(1, 1, W)
    ys = torch.linspace(0, 1, steps=H, device=boxes.device, dtype=boxes.dtype).view(1, H, 1)
    gx = ((xs - x0) / _nonzero(x1 - x0)).expand(o, H, W)
    gy = ((ys - y0) / _nonzero(y1 - y0)).expand(o, H, W)
    return torch.stack([gx, gy], dim=3).mul(2).sub(1)


def _warp(src: Tensor, boxes: Tensor, H: int, W: int) -> Tensor:
    """Warp ``src [O, C, h, w]`` into the boxes on an ``H x W`` canvas (zeros outside): ``[O, C, H, W]``."""
    grid = boxes_to_grid(boxes, H, W).to(src.dtype)
    # align_corners=True: PyTorch 0.4 semantics, which google/sg2im was written for.
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def object_maps(boxes: Tensor, masks: Tensor | None, H: int, W: int | None = None) -> Tensor:
    """Per-object weight maps ``[O, H, W]``: each mask (or an 8x8 block of ones) warped into its box.

    ``masks`` is ``[O, M, M]`` (values in [0, 1]) or None for boxes only. Without masks sg2im
    (``boxes_to_layout``) warps a constant 8x8 input, so the box is filled with 1 and its edges are
    bilinearly blurred over about one pixel ("implicit masking"); we do the same.
    """
    W = H if W is None else W
    o = boxes.shape[0]
    if masks is None:
        src = boxes.new_ones(o, 1, 8, 8)
    else:
        m = masks.shape[-1]
        if masks.shape != (o, m, m):
            raise ValueError(f"masks must be [O, M, M] with O={o}, got {tuple(masks.shape)}")
        src = masks.to(boxes.dtype).view(o, 1, m, m)
    return _warp(src, boxes, H, W).view(o, H, W)


def pack_objects(obj_to_img: Tensor, num_images: int | None = None) -> tuple[Tensor, Tensor, int, int]:
    """Slots of the objects in a dense ``[N, S]`` per-image layout: ``(img, slot, N, S)``.

    ``slot[o]`` is the rank of object ``o`` among the objects of its image (in order of appearance) and ``S``
    the largest number of objects in an image; ``obj_to_img [O]`` need not be sorted.
    """
    if obj_to_img.numel() == 0:
        return obj_to_img, obj_to_img, int(num_images or 0), 1
    n = int(obj_to_img.max().item()) + 1 if num_images is None else num_images
    counts = torch.bincount(obj_to_img, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    sorted_img, order = torch.sort(obj_to_img, stable=True)
    slot = torch.empty_like(obj_to_img)
    slot[order] = torch.arange(obj_to_img.numel(), device=obj_to_img.device) - starts[sorted_img]
    return obj_to_img, slot, n, max(1, int(counts.max().item()))


def objects_to_layout(
    vecs: Tensor, maps: Tensor, obj_to_img: Tensor, num_images: int | None = None, pooling: str = "sum"
) -> Tensor:
    """``layout[n] = sum_{o in image n} vecs[o] (x) maps[o]`` (``pooling="avg"``: divided by the object count).

    vecs ``[O, D]``, maps ``[O, H, W]``, obj_to_img ``[O]`` (sorted) -> ``[N, D, H, W]``. Follows
    sg2im/layout.py ``_pool_samples`` applied to ``vecs[o] * maps[o]``; computed as one ``bmm`` of
    ``[N, D, S] x [N, S, H W]`` with the objects packed into ``S`` slots per image.
    """
    if pooling not in ("sum", "avg"):
        raise ValueError(f"invalid pooling {pooling!r}; valid: sum, avg")
    o, d = vecs.shape
    h, w = maps.shape[-2:]
    img, slot, n, s = pack_objects(obj_to_img, num_images)
    v = vecs.new_zeros(n, s, d).index_put((img, slot), vecs)
    m = maps.new_zeros(n, s, h * w).index_put((img, slot), maps.reshape(o, h * w))
    out = torch.bmm(v.transpose(1, 2), m).view(n, d, h, w)
    if pooling == "avg":
        counts = torch.bincount(obj_to_img, minlength=n).clamp(min=1).to(out.dtype)
        out = out / counts.view(n, 1, 1, 1)
    return out


def boxes_to_layout(
    vecs: Tensor, boxes: Tensor, obj_to_img: Tensor, H: int, W: int | None = None, pooling: str = "sum"
) -> Tensor:
    """Paint each object's vector over its box: vecs ``[O, D]``, boxes ``[O, 4]`` -> ``[N, D, H, W]``.

    Follows sg2im/layout.py ``boxes_to_layout`` (a constant 8x8 source warped into the box, edges blurred by
    bilinear sampling, zero outside the box; objects of an image summed).
    """
    W = H if W is None else W
    return objects_to_layout(vecs, object_maps(boxes, None, H, W), obj_to_img, pooling=pooling)


def masks_to_layout(
    vecs: Tensor,
    boxes: Tensor,
    masks: Tensor,
    obj_to_img: Tensor,
    H: int,
    W: int | None = None,
    pooling: str = "sum",
) -> Tensor:
    """Paint each object's vector over its mask warped into its box -> ``[N, D, H, W]``.

    vecs ``[O, D]``, boxes ``[O, 4]``, masks ``[O, M, M]``. Follows sg2im/layout.py ``masks_to_layout``:
    ``layout[n] = sum_{o in image n} v_o (x) grid_sample(m_o, grid(box_o))``.
    """
    W = H if W is None else W
    return objects_to_layout(vecs, object_maps(boxes, masks, H, W), obj_to_img, pooling=pooling)
