"""``toy_blocks``: one or two coloured squares on grey, generated from the split name (no files to download)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.batch import SceneGraphItem
from benchmark.interfaces import SceneGraphDataset
from benchmark.registry import register
from benchmark.scene_graph import Vocab

COLORS = {"red block": (0.9, 0.1, 0.1), "blue block": (0.1, 0.2, 0.9)}
VOCAB = Vocab(("__image__", *COLORS), ("__in_image__", "left of"))
SIZES = {"train": 16, "test": 8}


@register("dataset", "toy_blocks")
class ToyBlocks(SceneGraphDataset):
    """Toy plug-in dataset: red/blue squares, 'left of' relations (8-16 images per split)."""

    name = "toy_blocks"

    def __init__(self, split: str, image_size: int) -> None:
        if split not in SIZES:
            raise ValueError(f"toy_blocks: unknown split {split!r}; valid: {', '.join(SIZES)}")
        self.vocab, self.split, self.image_size = VOCAB, split, image_size
        self.split_version = "0.1"
        self.split_sha256 = f"{sorted(SIZES).index(split):064x}"
        self.rng = np.random.default_rng(list(SIZES).index(split))
        self.items = [self._make(i) for i in range(SIZES[split])]

    @classmethod
    def build(cls, split: str, image_size: int, root: Path | None = None, **kwargs: Any) -> ToyBlocks:
        return cls(split, image_size)

    @classmethod
    def write_fixture(cls, root: Path) -> None:
        """Nothing to write: toy_blocks is generated from the split name."""

    @classmethod
    def prepare(cls, root: Path | None = None, raw: Path | None = None) -> str:
        return "toy_blocks: generated on the fly, nothing to prepare"

    def _make(self, i: int) -> SceneGraphItem:
        n, s = int(self.rng.integers(1, 3)), self.image_size
        img = torch.full((3, s, s), 0.5)
        objs, boxes = [], []
        for k in range(n):
            x0 = 0.5 * k + 0.1
            x, w = int(x0 * s), s // 4
            c = int(self.rng.integers(1, len(VOCAB.object_idx_to_name)))
            img[:, s // 3 : s // 3 + w, x : x + w] = torch.tensor(COLORS[VOCAB.object_idx_to_name[c]]).view(3, 1, 1)
            objs.append(c)
            boxes.append((x / s, 1 / 3, (x + w) / s, 1 / 3 + w / s))
        objs.append(0)  # the trailing __image__ node
        boxes.append((0.0, 0.0, 1.0, 1.0))
        triples = [(k, 0, n) for k in range(n)] + ([(0, 1, 1)] if n == 2 else [])
        return SceneGraphItem(
            image=img,
            objs=torch.tensor(objs),
            boxes=torch.tensor(boxes, dtype=torch.float32),
            triples=torch.tensor(triples, dtype=torch.long).view(-1, 3),
            image_id=f"{self.split}-{i}",
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> SceneGraphItem:
        return self.items[index]
