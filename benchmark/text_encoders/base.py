"""The text-encoder interface, weight resolution errors and the on-disk cache of phrase embeddings.

A :class:`TextEncoder` maps phrases to float32 ``[N, dim]`` vectors, without gradients and
deterministically (eval mode, fixed seeds for random-init models). Building one only *resolves* its weights
(locates the files and hashes them, raising :class:`WeightsUnavailable` with instructions when they are
missing); the network itself is loaded on the first :meth:`TextEncoder.encode`. All pretrained encoders
return **L2-normalised** vectors (CLIP's usual ``F.normalize(encode_text(...))``, and mean pooling + L2 for
the BERT-style encoders, which is sentence-transformers' ``encode(normalize_embeddings=True)``).

:func:`embedding_table` computes a vocabulary's table once per (encoder, weight sha256, phrases) and keeps it in
``cache_dir()/text_embeddings/<encoder>/<key>.safetensors`` (atomic write under a file lock), so the weights are
loaded only when the cache misses.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch

from benchmark.interfaces import WeightProvenance
from benchmark.io import atomic_write_bytes, file_lock, sha256_json
from benchmark.paths import cache_dir
from benchmark.registry import get

CACHE_FORMAT = "1"  # bump when pooling/normalisation changes so old cached tables are not reused
ENCODE_BATCH = 64


class WeightsUnavailable(RuntimeError):
    """The weights of a text encoder cannot be found; the message says what is missing and how to provide it."""


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value."""
    return any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@contextlib.contextmanager
def seeded_init(seed: int = 0) -> Iterator[None]:
    """Fork the CPU RNG and seed it, so random-init models are identical on every build."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors where ``attention_mask`` is 1 (sentence-transformers' ``Pooling(mean)``)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


class TextEncoder(abc.ABC):
    """A frozen phrase encoder. Subclasses register with ``@register("text_encoder", name)``.

    ``__init__(weights, device)`` resolves the weights (cheap; raises :class:`WeightsUnavailable`);
    ``encode`` loads the network on first use.
    """

    name: ClassVar[str] = ""
    dim: int

    def __init__(self, weights: str = "", device: str | torch.device = "cpu") -> None:
        self.weights = weights
        self.device = torch.device(device)

    @classmethod
    @abc.abstractmethod
    def output_dim(cls, weights: str = "") -> int:
        """The embedding width for ``weights``, from configuration files only (never loads the weights)."""

    @abc.abstractmethod
    def encode(self, phrases: list[str]) -> torch.Tensor:
        """float32 ``[N, dim]`` on the CPU, no grad, deterministic."""

    @abc.abstractmethod
    def provenance(self) -> WeightProvenance:
        """Source, sha256 of the weight file(s) and whether the weights are a random init."""

    def cache_identity(self) -> dict[str, Any]:
        """Everything besides the phrases that determines the vectors (weights, tokenizer, pooling)."""
        return {"provenance": asdict(self.provenance())}


def _encoder_class(name: str) -> type[TextEncoder]:
    cls = get("text_encoder", name)
    if not (isinstance(cls, type) and issubclass(cls, TextEncoder)):
        raise TypeError(f"text_encoder {name!r} is registered as {cls!r}, not a TextEncoder subclass")
    return cls


def build_text_encoder(name: str, weights: str = "", device: str | torch.device = "cpu") -> TextEncoder:
    """The registered text encoder ``name`` with its weights resolved (see each encoder for ``weights``)."""
    return _encoder_class(name)(weights=weights, device=device)


def encoder_dim(name: str, weights: str = "") -> int:
    """Embedding width of encoder ``name`` with ``weights``, without loading (or needing) the weights."""
    return _encoder_class(name).output_dim(weights)


def _cache_path(name: str, key: str) -> Path:
    return cache_dir() / "text_embeddings" / name / f"{key}.safetensors"


def embedding_table(
    name: str, phrases: Sequence[str], weights: str = "", device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, WeightProvenance]:
    """Vectors of ``phrases`` (float32 ``[N, dim]``, CPU) by encoder ``name``, and the weights' provenance.

    Computed once per (encoder, weight sha256, tokenizer/pooling, phrases) and cached as safetensors under
    ``cache_dir()/text_embeddings/<name>/``; later calls (any process) read the file without loading the model.
    """
    from safetensors import safe_open
    from safetensors.torch import save

    phrases = [str(p) for p in phrases]
    enc = build_text_encoder(name, weights, device)
    prov = enc.provenance()
    key = sha256_json(
        {"format": CACHE_FORMAT, "encoder": name, "id": enc.cache_identity(), "phrases": phrases}
    )
    path = _cache_path(name, key)

    def read() -> torch.Tensor | None:
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor("table")
        except Exception:  # a damaged cache file is recomputed, never trusted
            return None

    table = read()
    if table is None:
        with file_lock(path.with_suffix(".lock")):
            table = read()
            if table is None:
                table = enc.encode(phrases).detach().to("cpu", torch.float32).contiguous()
                meta = {
                    "provenance": json.dumps(asdict(prov)),
                    "phrases": json.dumps(phrases),
                    "encoder": name,
                    "format": CACHE_FORMAT,
                }
                atomic_write_bytes(path, save({"table": table}, metadata=meta))
    if table.shape != (len(phrases), enc.dim):
        raise ValueError(
            f"text encoder {name!r} returned shape {tuple(table.shape)}, expected "
            f"{(len(phrases), enc.dim)} (cache file {path})"
        )
    return table, prov


def encode_batched(fn: Any, phrases: list[str], batch: int = ENCODE_BATCH) -> torch.Tensor:
    """Apply ``fn(list[str]) -> Tensor`` to chunks of ``phrases`` under ``inference_mode``; concatenate on CPU."""
    outs = []
    with torch.inference_mode():
        for i in range(0, len(phrases), batch):
            outs.append(fn(phrases[i : i + batch]).float().cpu())
    if not outs:
        raise ValueError("encode() needs at least one phrase")
    return torch.cat(outs).clone()  # clone: a normal (non-inference) tensor
