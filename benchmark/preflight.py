"""Checks before a run spends time: everything it will need, every missing piece listed in one message.

Three kinds of need, all checked before training:

- the dataset's files for the training split and the evaluation splits (a dataset may declare
  ``requirements(splits, root)`` returning every missing file with where to get it and each split's
  (found, expected) size; otherwise its splits are built, which also fills its caches);
- pretrained weights the method needs (its text encoder: CLIP, data2vec, ...); weights of the metrics only
  inform, since a metric without weights is recorded as unavailable;
- the installed distributions the package declares (``importlib.metadata``).

A dataset whose split sizes differ from the protocol's runs only with ``allow_partial_data``; the result then
records the sizes (``RunResult.partial_data``) and stays off the ranked leaderboard. Random text-encoder
weights are used only when asked for by name (``method.text_encoder_weights=random``) and announced.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from benchmark import registry
from benchmark.config import RunConfig

DISTRIBUTION = "sg2i-bench"
PRETRAINED_ENCODERS = ("clip", "data2vec")  # encoders whose weights the user must provide (no download offline)


class PreflightError(RuntimeError):
    """What a run lacks, all of it, in one message."""


@dataclass
class Preflight:
    missing: list[str] = field(default_factory=list)  # stops the run
    notes: list[str] = field(default_factory=list)  # informs (announced on stderr)
    partial_data: dict[str, list[int]] | None = None  # split -> [found, expected] where they differ

    def raise_if_missing(self, what: str) -> None:
        if self.missing:
            info = ["Also (informs only):", *(f"  {n}" for n in self.notes)] if self.notes else []
            raise PreflightError(
                "\n".join([f"{what}: cannot start; nothing was trained. Missing:", *self.missing, *info])
            )


def method_needs_pretrained_encoder(method: str) -> bool:
    """True when the method's default config uses a text encoder whose weights the user provides."""
    cfg = registry.get("method", method).Config()
    return getattr(cfg, "text_encoder", "") in PRETRAINED_ENCODERS


def random_weights_if_needed(method: str) -> dict[str, str]:
    """``{"method.text_encoder_weights": "random"}`` for a method whose encoder weights must be provided, else
    ``{}``: what a plumbing test or a weightless smoke run asks for by name."""
    return {"method.text_encoder_weights": "random"} if method_needs_pretrained_encoder(method) else {}


def _dependencies() -> list[str]:
    try:
        reqs = md.requires(DISTRIBUTION) or []
    except md.PackageNotFoundError:  # run from a source tree without installing: nothing to compare with
        return []
    out = []
    for req in reqs:
        if "extra ==" in req:
            continue
        name = re.split(r"[\s;<>=!~\[(@]", req.strip(), maxsplit=1)[0]
        try:
            md.version(name)
        except md.PackageNotFoundError:
            out.append(f"  dependency {req!r} is not installed: pip install -e . (from the repository root)")
    return out


def _dataset(cfg: RunConfig, pre: Preflight, train: bool) -> None:
    ds_cls = registry.get("dataset", cfg.dataset)
    splits = list(dict.fromkeys(["train", *cfg.eval.splits] if train else cfg.eval.splits))
    requirements = getattr(ds_cls, "requirements", None)
    if requirements is not None:
        missing, sizes = requirements(splits)
        pre.missing += missing
        differ = {s: [n, want] for s, (n, want) in sizes.items() if n != want}
        if differ:
            pre.partial_data = differ
        return
    from benchmark.train import build_dataset

    for split in splits:
        try:
            build_dataset(cfg.dataset, split, cfg.image_size)
        except FileNotFoundError as e:
            pre.missing += [f"  {line}" for line in str(e).splitlines()]
            break  # one split's message already names the dataset's files


def _encoder_weights(cfg: RunConfig, pre: Preflight) -> None:
    mcfg: Any = cfg.method_cfg
    name, weights = getattr(mcfg, "text_encoder", ""), getattr(mcfg, "text_encoder_weights", "")
    if not name or name == "learned":
        return
    if str(weights).startswith("random"):
        pre.notes.append(
            f"{cfg.method}: text encoder {name} with RANDOM weights ({weights}), as asked: plumbing only; the "
            "result is marked random_init and kept off the leaderboard"
        )
        return
    from benchmark.text_encoders.base import WeightsUnavailable, build_text_encoder

    try:
        build_text_encoder(name, weights)  # resolves (locates and hashes) the weights; loads nothing
    except WeightsUnavailable as e:
        pre.missing.append(f"  {name} weights for {cfg.method}: {e}")


def _metric_weights(cfg: RunConfig, pre: Preflight) -> None:
    for name in cfg.eval.metrics:
        cls = registry.get("metric", name)
        check = getattr(cls, "weights_missing", None)
        reason = check() if check is not None else None
        if reason:
            pre.notes.append(f"metric {name} will be recorded as unavailable: {reason}")


def check_run(cfg: RunConfig, allow_partial_data: bool = False, train: bool = True) -> Preflight:
    """Everything ``cfg`` needs (``train=False``: only to evaluate); raises :class:`PreflightError` listing every
    missing piece at once."""
    pre = Preflight()
    pre.missing += _dependencies()
    _dataset(cfg, pre, train)
    _encoder_weights(cfg, pre)
    _metric_weights(cfg, pre)
    if pre.partial_data and not allow_partial_data:
        sizes = ", ".join(f"{s} {n:,} of {want:,}" for s, (n, want) in pre.partial_data.items())
        pre.missing.append(
            f"  {cfg.dataset}: split sizes differ from the protocol's ({sizes}); complete the files, or pass "
            "--allow-partial-data to run anyway (the result is marked partial_data and never ranked)"
        )
    pre.raise_if_missing(f"{'run' if train else 'eval'} {cfg.method} on {cfg.dataset}")
    return pre


def announce(pre: Preflight) -> None:
    for note in pre.notes:
        print(f"note: {note}", file=sys.stderr)
    if pre.partial_data:
        sizes = ", ".join(f"{s} {n:,} of {want:,}" for s, (n, want) in pre.partial_data.items())
        print(f"note: PARTIAL DATA ({sizes}): the result is marked partial_data and never ranked", file=sys.stderr)
