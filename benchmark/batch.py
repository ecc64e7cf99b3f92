"""The one scene-graph batch type shared by every dataset and method.

Follows the packed layout of sg2im's ``coco_collate_fn`` / ``vg_collate_fn`` (google/sg2im,
``sg2im/data/vg.py``): the objects and triples of all images are concatenated, and ``obj_to_img`` /
``triple_to_img`` say which image each row belongs to. Triple subject/object indices are global (already
offset into the concatenated object list).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor


@dataclass
class SceneGraphItem:
    """One image and its scene graph, as a dataset's ``__getitem__`` returns it.

    Shapes (O objects including the trailing ``__image__`` node, T triples, M mask size):
        image: float32 [3, H, W] in [0, 1] (or None for graphs without an image).
        objs: int64 [O]; boxes: float32 [O, 4] as (x0, y0, x1, y1) in [0, 1];
        masks: float32 [O, M, M] in {0, 1}, or None; triples: int64 [T, 3] as (s, p, o), local indices.
        has_layout: bool [O], False where the box/mask is unknown (e.g. 4D-OR frames without segmentation).
    """

    image: Tensor | None
    objs: Tensor
    boxes: Tensor
    triples: Tensor
    masks: Tensor | None = None
    has_layout: Tensor | None = None
    image_id: str = ""


@dataclass
class SceneGraphBatch:
    """A packed batch of B scene graphs.

    Shapes:
        images: float32 [B, 3, H, W] in [0, 1], or None when only graphs are given (``generate``).
        objs: int64 [O], object (vocabulary) indices of all B graphs, concatenated.
        boxes: float32 [O, 4], (x0, y0, x1, y1) normalised to [0, 1].
        masks: float32 [O, M, M] binary masks within each box (sg2im: M = 16), or None.
        triples: int64 [T, 3], (subject, predicate, object); subject/object index into ``objs``.
        obj_to_img: int64 [O], image index in [0, B) of each object.
        triple_to_img: int64 [T], image index of each triple.
        has_layout: bool [O], whether the ground-truth box/mask of the object is known.
        image_ids: B identifiers from the split file.
    """

    objs: Tensor
    boxes: Tensor
    triples: Tensor
    obj_to_img: Tensor
    triple_to_img: Tensor
    images: Tensor | None = None
    masks: Tensor | None = None
    has_layout: Tensor | None = None
    image_ids: list[str] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        if self.images is not None:
            return int(self.images.shape[0])
        return len(self.image_ids) if self.image_ids else int(self.obj_to_img.max().item()) + 1

    def to(self, device: torch.device | str) -> SceneGraphBatch:
        moved: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            moved[f.name] = v.to(device, non_blocking=True) if isinstance(v, Tensor) else v
        return replace(self, **moved)

    def pin_memory(self) -> SceneGraphBatch:
        """Page-locked copies of the tensors (``DataLoader(pin_memory=True)`` calls this in its pin thread)."""
        return replace(self, **{f.name: getattr(self, f.name).pin_memory() for f in fields(self)
                                if isinstance(getattr(self, f.name), Tensor)})

    def split(self) -> list[SceneGraphItem]:
        """Unpack into per-image items with local triple indices (inverse of :func:`collate`)."""
        items = []
        for i in range(self.num_images):
            om = self.obj_to_img == i
            idx = om.nonzero().flatten()
            offset = int(idx[0]) if len(idx) else 0
            tr = self.triples[self.triple_to_img == i].clone()
            tr[:, 0] -= offset
            tr[:, 2] -= offset
            items.append(
                SceneGraphItem(
                    image=None if self.images is None else self.images[i],
                    objs=self.objs[om],
                    boxes=self.boxes[om],
                    triples=tr,
                    masks=None if self.masks is None else self.masks[om],
                    has_layout=None if self.has_layout is None else self.has_layout[om],
                    image_id=self.image_ids[i] if self.image_ids else str(i),
                )
            )
        return items


def collate(items: Sequence[SceneGraphItem]) -> SceneGraphBatch:
    """Pack items into a :class:`SceneGraphBatch` (sg2im ``vg_collate_fn``: offset triple indices)."""
    objs, boxes, masks, triples, o2i, t2i, has_layout, images = [], [], [], [], [], [], [], []
    offset = 0
    use_masks = all(it.masks is not None for it in items)
    use_images = all(it.image is not None for it in items)
    for i, it in enumerate(items):
        n, t = it.objs.shape[0], it.triples.shape[0]
        objs.append(it.objs)
        boxes.append(it.boxes)
        if use_masks:
            masks.append(it.masks)
        tr = it.triples.clone().reshape(-1, 3)
        tr[:, 0] += offset
        tr[:, 2] += offset
        triples.append(tr)
        o2i.append(torch.full((n,), i, dtype=torch.long))
        t2i.append(torch.full((t,), i, dtype=torch.long))
        has_layout.append(it.has_layout if it.has_layout is not None else torch.ones(n, dtype=torch.bool))
        if use_images:
            images.append(it.image)
        offset += n
    return SceneGraphBatch(
        objs=torch.cat(objs).long(),
        boxes=torch.cat(boxes).float(),
        triples=torch.cat(triples).long() if triples else torch.zeros(0, 3, dtype=torch.long),
        obj_to_img=torch.cat(o2i),
        triple_to_img=torch.cat(t2i),
        images=torch.stack(images).float() if use_images and images else None,
        masks=torch.cat(masks).float() if use_masks and masks else None,
        has_layout=torch.cat(has_layout).bool(),
        image_ids=[it.image_id for it in items],
    )
