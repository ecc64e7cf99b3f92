"""``toy_paint``: paints each object's box with a colour learned per object class (a plug-in method)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmark.batch import SceneGraphBatch
from benchmark.interfaces import DatasetInfo, Method
from benchmark.registry import register
from benchmark.seeding import randn


@dataclass(frozen=True)
class ToyPaintConfig:
    learning_rate: float = 0.1
    noise: float = 0.01  # per-pixel noise of a sample, drawn from the sample's generator


@register("method", "toy_paint")
class ToyPaint(Method):
    """Toy plug-in method: one learned RGB colour per object class, painted into the ground-truth boxes."""

    Config = ToyPaintConfig
    tier_overrides = {"smoke": {"method.learning_rate": 0.5}}

    def __init__(self, cfg: ToyPaintConfig, info: DatasetInfo) -> None:
        super().__init__(cfg, info)
        self.colors = nn.Parameter(torch.full((info.vocab.num_objects, 3), 0.5))
        self.optimizer = torch.optim.SGD(self.parameters(), lr=cfg.learning_rate)

    def _paint(self, batch: SceneGraphBatch) -> Tensor:
        s = self.info.image_size
        out = self.colors[0].view(1, 3, 1, 1).expand(batch.num_images, 3, s, s).clone()
        for o in range(len(batch.objs)):
            x0, y0, x1, y1 = (batch.boxes[o] * s).round().long().tolist()
            out[batch.obj_to_img[o], :, y0:y1, x0:x1] = self.colors[batch.objs[o]].view(3, 1, 1)
        return out

    def train_step(self, batch: SceneGraphBatch, step: int) -> dict[str, float]:
        loss = (self._paint(batch) - batch.images).pow(2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def sample(self, batch: SceneGraphBatch, generator: list[torch.Generator], layout: str = "pred") -> Tensor:
        with torch.no_grad():
            s = self.info.image_size
            noise = randn(generator, (3, s, s), batch.objs.device) * self.cfg.noise
            return (self._paint(batch) + noise).clamp(0, 1).float()
