"""Explicit randomness: per-library seeds and per-sample generators.

Evaluation noise comes from one ``torch.Generator`` per generated sample, seeded from
(run seed, split, graph index, sample index), so a sample's pixels do not depend on the batch size
or on how the evaluation set is sharded across processes.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts (stable across processes and Python versions)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def sample_generators(seed: int, split: str, graph_indices: list[int], sample_index: int) -> list[torch.Generator]:
    """One CPU generator per graph of a batch, for the ``sample_index``-th sample of each graph."""
    return [torch.Generator().manual_seed(derive_seed(seed, split, g, sample_index)) for g in graph_indices]


def randn(generators: list[torch.Generator], shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal noise [len(generators), *shape], each row from its own generator (drawn on CPU)."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)
