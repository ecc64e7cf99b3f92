"""The ``learned`` entry: no pretrained text encoder, an ``nn.Embedding`` trained with the model."""

from __future__ import annotations

from typing import ClassVar

import torch

from benchmark.interfaces import WeightProvenance
from benchmark.registry import register
from benchmark.text_encoders.base import TextEncoder


@register("text_encoder", "learned")
class LearnedEmbedding(TextEncoder):
    """No pretrained weights: a learned nn.Embedding per vocabulary entry (the SG2Im default)."""

    name: ClassVar[str] = "learned"
    dim = None  # type: ignore[assignment]  # the width is the model's: NodeEmbedding(phrases, dim)

    @classmethod
    def output_dim(cls, weights: str = "") -> int:
        raise TypeError(
            "the 'learned' encoder has no fixed width: NodeEmbedding uses nn.Embedding(len(phrases), dim)"
        )

    def encode(self, phrases: list[str]) -> torch.Tensor:
        raise TypeError(
            "the 'learned' encoder has no pretrained vectors: use benchmark.nn.embedding.NodeEmbedding"
            "(phrases, dim, encoder='learned'), which trains an nn.Embedding with the model"
        )

    def provenance(self) -> WeightProvenance:
        return WeightProvenance(
            name="text_encoder:learned", source="trained with the model", random_init=False
        )
