"""Nearest-neighbour x2 upsampling followed by a 3x3 convolution, computed as one transposed convolution.

``conv3x3(upsample_nearest_x2(x))`` (the up-path of SG2Im's cascaded refinement network and of the ADM /
improved-diffusion UNet's ``Upsample``) reads each input pixel 4 times per output channel and tap row, so it
costs 36 multiply-adds per input pixel and channel pair. Output row ``2i + a`` only ever sees input rows
``(i - 1, i)`` with kernel rows ``(w0, w1 + w2)`` (a = 0) or rows ``(i, i + 1)`` with ``(w0 + w1, w2)``
(a = 1), so the same linear map is a stride-2 transposed convolution with a 4x4 kernel ``T w T^T``,
``T = [[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]]``: 16 multiply-adds per input pixel, and no upsampled
copy of the input. Equal up to float rounding (the kernel sums are formed first); the gradient with respect
to the 3x3 weight flows through ``T``, so parameters and checkpoints keep the 3x3 shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["upsample_conv_weight", "upsample_nearest_conv3x3"]


def upsample_conv_weight(w: Tensor) -> Tensor:
    """``[P, C, 3, 3]`` conv weight -> ``[C, P, 4, 4]`` transposed-conv weight with
    ``conv_transpose2d(x, ., stride=2, padding=1) == conv2d(upsample_nearest_x2(x), w, padding=1)``."""
    t = w.new_tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    if w.is_contiguous(memory_format=torch.channels_last):  # produce it channels-last strided as well
        return torch.einsum("ik,pckl,jl->cijp", t, w, t).contiguous().permute(0, 3, 1, 2)
    return torch.einsum("ik,pckl,jl->cpij", t, w, t)


def upsample_nearest_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)`` for a 3x3
    ``weight [P, C, 3, 3]``: ``x [N, C, H, W]`` -> ``[N, P, 2H, 2W]``, as one transposed convolution."""
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"upsample_nearest_conv3x3: expected a 3x3 kernel, got {tuple(weight.shape)}")
    return F.conv_transpose2d(x, upsample_conv_weight(weight), bias, stride=2, padding=1)
