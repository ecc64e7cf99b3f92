"""``toy_chars``: a text encoder that counts letters (a plug-in text encoder; no weights)."""

from __future__ import annotations

from typing import ClassVar

import torch

from benchmark.interfaces import WeightProvenance
from benchmark.registry import register
from benchmark.text_encoders.base import TextEncoder


@register("text_encoder", "toy_chars")
class ToyChars(TextEncoder):
    """Toy plug-in text encoder: letter counts a-z of each phrase, L2-normalised."""

    name: ClassVar[str] = "toy_chars"
    dim = 26

    @classmethod
    def output_dim(cls, weights: str = "") -> int:
        return cls.dim

    def encode(self, phrases: list[str]) -> torch.Tensor:
        out = torch.zeros(len(phrases), 26)
        for i, p in enumerate(phrases):
            for ch in p.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return torch.nn.functional.normalize(out, dim=1)

    def provenance(self) -> WeightProvenance:
        return WeightProvenance(name="text_encoder:toy_chars", source="no weights (letter counts)")
