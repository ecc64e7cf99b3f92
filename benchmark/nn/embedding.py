"""Node embeddings for scene-graph objects and predicates: learned, or frozen text vectors + projection.

``NodeEmbedding(phrases, dim, encoder="learned")`` is the SG2Im default (``nn.Embedding`` of the vocabulary,
as in google/sg2im ``Sg2ImModel.obj_embeddings``). With ``encoder="clip" | "data2vec" | "minilm"`` the
vocabulary's natural phrases are embedded once by a frozen text encoder
(:func:`benchmark.text_encoders.base.embedding_table`, cached on disk), kept in a registered buffer
``table`` (so a checkpoint carries the vectors) and followed by a learned ``nn.Linear`` to the model width.

The table is *lazy*: the constructor never runs the text encoder. It is filled on the first ``forward``,
``provenance()``, ``state_dict()`` or explicit :meth:`NodeEmbedding.materialize` call, unless
``load_state_dict`` filled it first. Loading a checkpoint therefore needs neither the encoder weights nor
any flag. The weight provenance (source, sha256, random_init) travels in the state dict as the uint8
buffer ``provenance_json`` (UTF-8 JSON), because the suite's safetensors checkpoints hold tensors only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from benchmark.interfaces import WeightProvenance


def _encode_provenance(prov: WeightProvenance) -> torch.Tensor:
    data = json.dumps(asdict(prov), sort_keys=True).encode("utf-8")
    return torch.tensor(list(data), dtype=torch.uint8)


def _decode_provenance(buf: torch.Tensor) -> WeightProvenance:
    d = json.loads(bytes(buf.detach().cpu().tolist()).decode("utf-8"))
    return WeightProvenance(**d)


class NodeEmbedding(nn.Module):
    """Embeds object or predicate indices: a learned table (SG2Im default), or frozen text-encoder vectors of
    the vocabulary's natural phrases followed by a learned linear projection to the model width.

    Args:
        phrases: one natural phrase per vocabulary index (``DatasetInfo.phrases`` / ``pred_phrases``).
        dim: output width.
        encoder: a registered text-encoder name (``python -m benchmark ls``); ``"learned"`` = ``nn.Embedding``.
        weights: where the encoder's weights come from (see each encoder; ``""`` = its default).
    """

    def __init__(self, phrases: Sequence[str], dim: int, encoder: str = "learned", weights: str = "") -> None:
        super().__init__()
        if not phrases:
            raise ValueError("NodeEmbedding needs at least one phrase (one per vocabulary index)")
        self.phrases = tuple(str(p) for p in phrases)
        self.dim = int(dim)
        self.encoder = encoder
        self.weights = weights
        self.frozen = encoder != "learned"
        if not self.frozen:
            self.embedding = nn.Embedding(len(self.phrases), self.dim)
            return
        from benchmark.text_encoders.base import encoder_dim

        enc_dim = encoder_dim(encoder, weights)  # cheap: from configs, never loads the weights
        self.register_buffer("table", torch.zeros(len(self.phrases), enc_dim), persistent=True)
        self.register_buffer("provenance_json", torch.zeros(0, dtype=torch.uint8), persistent=True)
        self.proj = nn.Linear(enc_dim, self.dim)

    @property
    def materialized(self) -> bool:
        """True once the frozen table holds the encoder's vectors (computed, or loaded from a checkpoint)."""
        return not self.frozen or self.provenance_json.numel() > 0

    def materialize(self) -> None:
        """Fill the frozen table now (no-op for ``learned`` or when already filled).

        Raises :class:`benchmark.text_encoders.base.WeightsUnavailable` when the encoder weights are missing.
        Call it in ``Method.setup`` to fail before training rather than at the first step.
        """
        if self.materialized:
            return
        from benchmark.text_encoders.base import embedding_table

        table, prov = embedding_table(self.encoder, list(self.phrases), self.weights)
        with torch.inference_mode(False), torch.no_grad():
            if table.shape != self.table.shape:
                # The cheap width guess was wrong (e.g. an unusual local checkpoint): resize in place, keeping
                # the projection Parameter object (optimizers built before stay valid, their state is empty).
                self._resize(table.shape[1])
            self.table.copy_(table.to(self.table.device, self.table.dtype))
            self.provenance_json = _encode_provenance(prov).to(self.table.device)

    def _resize(self, enc_dim: int) -> None:
        dev, dtype = self.table.device, self.table.dtype
        self.table = torch.zeros(len(self.phrases), enc_dim, device=dev, dtype=dtype)
        fresh = nn.Linear(enc_dim, self.dim).to(device=dev, dtype=self.proj.weight.dtype)
        self.proj.weight.data = fresh.weight.data
        self.proj.bias.data = fresh.bias.data
        self.proj.in_features = enc_dim

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """``idx`` int64 [...] of vocabulary indices -> float [..., dim]."""
        if not self.frozen:
            return self.embedding(idx)
        self.materialize()
        return self.proj(self.table[idx])

    def provenance(self) -> list[WeightProvenance]:
        """The pretrained weights behind the frozen table; ``[]`` for ``learned``."""
        if not self.frozen:
            return []
        self.materialize()
        return [_decode_provenance(self.provenance_json)]

    # A checkpoint always carries the computed table: saving materializes it first.
    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        if self.frozen:
            self.materialize()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        if self.frozen:
            table = state_dict.get(prefix + "table")
            prov = state_dict.get(prefix + "provenance_json")
            if isinstance(prov, torch.Tensor) and prov.shape != self.provenance_json.shape:
                self.provenance_json = torch.zeros_like(prov, device=self.provenance_json.device)
            if (
                isinstance(table, torch.Tensor)
                and table.dim() == 2
                and table.shape[0] == self.table.shape[0]
                and table.shape[1] != self.table.shape[1]
            ):
                self._resize(table.shape[1])
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"{len(self.phrases)} phrases, dim={self.dim}, encoder={self.encoder!r}"
