"""The GPU path's switches, resolved per device from ``train.*`` and applied by the trainer to any method.

Each switch is a :class:`~benchmark.config.TrainConfig` field; ``None`` means "by device" (on for CUDA where it
is safe, off on CPU) and :func:`resolve` turns the fields into the effective :class:`Accel` that the result
records (``environment.accel``), with a note for every fallback taken on this device:

- ``precision``: autocast dtype. ``bf16`` (Micikevicius et al. 2018, mixed precision; bf16 needs no loss
  scaling) is the CUDA default and also runs on CPU (torch's CPU autocast); ``fp16`` adds a
  ``torch.amp.GradScaler`` (dynamic loss scaling) and falls back to fp32 on CPU; ``fp32`` is off.
- ``channels_last``: NHWC weights and images (cuDNN / oneDNN convolution layouts; numerically the same maths).
- ``fused_optimizer``: ``fused=True`` Adam/AdamW kernels (CUDA only; a no-op elsewhere).
- ``compile``: ``torch.compile`` of the submodules a method declares in ``compile_targets``.
- ``grad_accum``: ``k`` micro-batches per optimiser step, keeping the global batch ``train.batch_size``
  (methods declaring ``supports_grad_accum``).
- ``num_workers`` / ``pin_memory`` / ``persistent_workers`` / ``non_blocking``: the DataLoader and the
  host-to-device copies.

Methods own their optimisers, so the loss scaling reaches them through :func:`backward` and :func:`step`
(plain ``loss.backward()`` / ``opt.step()`` when no scaler is active).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CUDA_WORKERS = 4  # DataLoader workers by default on CUDA (the CPU tiers load in the main process)


@dataclass(frozen=True)
class Accel:
    """The effective switches of one run on one device (what the result records)."""

    device: str
    precision: str  # fp32 | bf16 | fp16
    grad_scaler: bool
    channels_last: bool
    fused_optimizer: bool
    compile: bool
    grad_accum: int
    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    non_blocking: bool
    notes: tuple[str, ...] = ()  # fallbacks taken on this device

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _DTYPES.get(self.precision)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve(train: Any, device: torch.device | str) -> Accel:
    """Effective switches of ``train`` (a TrainConfig) on ``device``; bad values stop naming the field."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    notes: list[str] = []
    precision = train.precision
    if precision not in PRECISIONS:
        raise ValueError(f"--set train.precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        precision = "bf16" if cuda else "fp32"
    if precision == "fp16" and not cuda:
        notes.append("train.precision=fp16 needs CUDA (fp16 CPU kernels are slow or missing): fp32 on CPU")
        precision = "fp32"
    if train.grad_accum < 1:
        raise ValueError(f"--set train.grad_accum: expected an integer >= 1, got {train.grad_accum}")
    if train.batch_size % train.grad_accum:
        raise ValueError(
            f"--set train.grad_accum={train.grad_accum}: train.batch_size={train.batch_size} (the global batch) "
            "must be a multiple of it"
        )
    fused = bool(train.fused_optimizer) and cuda  # fused Adam/AdamW kernels are CUDA-only here
    workers = train.num_workers if train.num_workers is not None else (CUDA_WORKERS if cuda else 0)
    if workers < 0:
        raise ValueError(f"--set train.num_workers: expected an integer >= 0, got {workers}")
    return Accel(
        device=dev.type,
        precision=precision,
        grad_scaler=precision == "fp16",
        channels_last=cuda if train.channels_last is None else bool(train.channels_last),
        fused_optimizer=fused,
        compile=bool(train.compile),
        grad_accum=int(train.grad_accum),
        num_workers=int(workers),
        pin_memory=cuda if train.pin_memory is None else bool(train.pin_memory) and cuda,
        persistent_workers=bool(train.persistent_workers) and workers > 0,
        non_blocking=bool(train.non_blocking) and cuda,
        notes=tuple(notes),
    )


def prepare_method(method: Any, accel: Accel) -> None:
    """Apply the model-side switches to a freshly built method on its device (before any optimiser step)."""
    if accel.grad_accum > 1 and not getattr(method, "supports_grad_accum", False):
        raise ValueError(
            f"--set train.grad_accum={accel.grad_accum}: method {type(method).__name__} does not support "
            "gradient accumulation (it declares supports_grad_accum = False)"
        )
    method.grad_accum = accel.grad_accum
    if accel.channels_last:
        method.to(memory_format=torch.channels_last)  # 4-D weights only; the rest is unchanged
    if accel.fused_optimizer:
        for name, opt in list(vars(method).items()):
            if isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)) and not opt.state:
                drop = ("foreach", "fused")
                groups = [{k: v for k, v in g.items() if k not in drop} for g in opt.param_groups]
                defaults = {k: v for k, v in opt.defaults.items() if k not in drop}
                setattr(method, name, type(opt)(groups, **defaults, fused=True))
    if accel.compile:
        for path in getattr(method, "compile_targets", ()):
            try:
                module = method.get_submodule(path)
            except AttributeError:  # an optional part this configuration does not build
                continue
            module.compile()  # in place: parameter names and state_dict keys unchanged


def prepare_batch(batch: Any, accel: Accel, device: torch.device) -> Any:
    """Host-to-device copy (non-blocking from pinned memory) and the images' memory format."""
    batch = batch.to(device)  # SceneGraphBatch.to copies with non_blocking=True (synchronous unless pinned)
    if device.type == "cuda" and not accel.non_blocking:
        torch.cuda.current_stream(device).synchronize()
    images = getattr(batch, "images", None)
    if accel.channels_last and isinstance(images, Tensor) and images.dim() == 4:
        batch = dataclasses.replace(batch, images=images.contiguous(memory_format=torch.channels_last))
    return batch


_SCALER: list[torch.amp.GradScaler] = []


@contextlib.contextmanager
def train_step_context(accel: Accel, scaler: torch.amp.GradScaler | None = None) -> Iterator[None]:
    """Autocast for one ``train_step``; with ``scaler`` (fp16) :func:`backward` and :func:`step` scale the
    loss and unscale the gradients, and the scale is updated once when the step ends."""
    dtype = accel.autocast_dtype
    if scaler is not None:
        _SCALER.append(scaler)
    try:
        with torch.autocast(accel.device, dtype=dtype or torch.float32, enabled=dtype is not None):
            yield
    finally:
        if scaler is not None:
            _SCALER.pop()
            scaler.update()


def backward(loss: Tensor) -> None:
    """``loss.backward()``, scaled by the active fp16 GradScaler if any."""
    (_SCALER[-1].scale(loss) if _SCALER else loss).backward()


def unscale(opt: torch.optim.Optimizer) -> None:
    """Unscale ``opt``'s gradients before clipping them (no-op without a GradScaler)."""
    if _SCALER:
        _SCALER[-1].unscale_(opt)


def step(opt: torch.optim.Optimizer) -> None:
    """``opt.step()``; under an fp16 GradScaler it is skipped when the gradients are not finite."""
    if _SCALER:
        _SCALER[-1].step(opt)
    else:
        opt.step()
