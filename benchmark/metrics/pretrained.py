"""Pretrained weights of the metrics that need ImageNet networks (IS Inception, LPIPS AlexNet, ResNet-101).

Nothing is downloaded. A weights file is looked up, in order, at

1. an explicit path (a metric's constructor argument),
2. an environment variable (e.g. ``SG2I_INCEPTION_IS``),
3. ``torch.hub``'s checkpoint cache, ``$TORCH_HOME/hub/checkpoints/<file name>`` (default
   ``~/.cache/torch/hub/checkpoints``), under the file names the libraries download to
   (``torch.hub.load_state_dict_from_url``'s naming: the URL's last path component); ``torch.hub`` loads
   these without a hash check.

A missing file raises :class:`MetricUnavailable` saying which file to put where. Files are read with
``torch.load(weights_only=True)`` only. The provenance records the file's SHA-256; ``torch.hub`` file names end
in the first 8 hex digits of the published file's SHA-256, so a file whose digest does not start with one of
the published prefixes is *not* the pinned network (e.g. a random-init test fixture in the same format): its
provenance says so and carries ``random_init=True``, which keeps its numbers off the leaderboard.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from benchmark.interfaces import MetricUnavailable, WeightProvenance
from benchmark.io import file_sha256


@dataclass(frozen=True)
class WeightsSpec:
    """One pretrained network: the env var, the ``torch.hub`` cache file names and the published digests."""

    what: str  # e.g. "Inception-v3 (TF 2015-12-05, 1008-way logits) for the Inception Score"
    env: str
    hub_files: tuple[str, ...]
    digests: tuple[str, ...]  # SHA-256 prefixes of the published files
    origin: str  # where the file comes from, for the message

    def hub_dir(self) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints"

    def how_to_provide(self) -> str:
        return (
            f"put {self.hub_files[0]} ({self.origin}) in {self.hub_dir()} (the torch.hub cache, set by TORCH_HOME), "
            f"or set {self.env} to its path"
        )

    def resolve(self, path: str | Path | None = None) -> Path:
        """The weights file: ``path`` > ``$env`` > the ``torch.hub`` cache; MetricUnavailable if none exists."""
        for given, origin in ((path, "the given path"), (os.environ.get(self.env) or None, self.env)):
            if given is None:
                continue
            p = Path(given).expanduser()
            if not p.is_file():
                raise MetricUnavailable(f"{self.what}: {origin} {p} is not a file; {self.how_to_provide()}")
            return p.resolve()
        for name in self.hub_files:
            p = self.hub_dir() / name
            if p.is_file():
                return p.resolve()
        raise MetricUnavailable(f"{self.what}: weights not found; {self.how_to_provide()}")

    def missing(self) -> str | None:
        """Why :meth:`resolve` would fail (None when the weights are here); for the run's preflight."""
        try:
            self.resolve()
        except MetricUnavailable as e:
            return str(e)
        return None

    def provenance(self, name: str, path: Path) -> WeightProvenance:
        """Where the weights came from; ``random_init=True`` unless the file is the published one."""
        sha = file_sha256(path)
        ok = any(sha.startswith(d) for d in self.digests)
        source = f"file:{path}"
        if not ok:
            source += (
                f" (not the published file: sha256 {sha[:8]}..., expected {' or '.join(self.digests)}...)"
            )
        return WeightProvenance(name=name, source=source, sha256=sha, random_init=not ok)


def load_state_dict(
    path: Path, what: str, expected: Mapping[str, Tensor] | Sequence[str]
) -> dict[str, Tensor]:
    """A state dict of tensors read with ``torch.load(weights_only=True)``; its keys must be ``expected``'s
    (and, for a mapping, the shapes too), else MetricUnavailable naming the file and the keys."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or it holds more than tensors
        raise MetricUnavailable(
            f"{what}: cannot read {path} as a tensor state dict ({type(e).__name__}: {e})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise MetricUnavailable(f"{what}: {path} is not a state dict of tensors")
    want = list(expected.keys()) if isinstance(expected, Mapping) else list(expected)
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in set(want)]
    if missing or extra:
        raise MetricUnavailable(
            f"{what}: {path} does not hold the expected network: missing keys {missing[:5]}, "
            f"unexpected keys {extra[:5]}"
        )
    if isinstance(expected, Mapping):
        bad = [k for k in want if tuple(state[k].shape) != tuple(expected[k].shape)]
        if bad:
            k = bad[0]
            raise MetricUnavailable(
                f"{what}: {path} field {k!r} has shape {tuple(state[k].shape)}, expected {tuple(expected[k].shape)}"
            )
    return state
