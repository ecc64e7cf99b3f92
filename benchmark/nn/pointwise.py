"""1x1 convolutions computed as batched matrix products on CPU.

A 1x1 convolution of ``x [B, C_in, *S]`` is ``y[b] = W x[b] + bias`` with ``W [C_out, C_in]`` and ``x[b]``
read as a ``[C_in, prod(S)]`` matrix: B products that share ``W``. Here they are one ``baddbmm`` with ``W``
expanded over the batch (stride 0, no copy), and the backward is two more batched products; oneDNN's 1x1
convolution on NCHW tensors is slower on CPU. Measured on 2 cores (Intel Xeon, AVX-512), batch 32, forward +
backward, convolution -> this: 192 -> 64 channels at 32x32 px 23.9 -> 8.5 ms, 256 -> 128 at 16x16 px 5.8 ->
4.6 ms, 128 -> 384 over 256 positions (an ADM attention ``qkv``) 8.1 -> 6.4 ms. The result equals the
convolution up to float rounding (the same sums in another order).
Parameters keep the ``nn.Conv1d`` / ``nn.Conv2d`` shapes and names, so checkpoints are unchanged; inputs on
other devices, or not contiguous (e.g. channels-last), go to the convolution.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PointwiseConv1d", "PointwiseConv2d", "pointwise_conv"]


def pointwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.conv{1,2}d(x, weight, bias)`` for a 1x1 ``weight [C_out, C_in, 1(, 1)]``: ``x [B, C_in, *S]`` ->
    ``[B, C_out, *S]``, as ``bias + W x[b]`` for every ``b`` in one ``baddbmm``."""
    b, c = x.shape[:2]
    if torch.is_autocast_enabled(x.device.type):  # cast W once, not its B-fold expansion
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    xs = x.reshape(b, c, -1)
    w = weight.reshape(weight.shape[0], c).expand(b, -1, -1)
    if bias is None:
        y = torch.bmm(w, xs)
    else:
        y = torch.baddbmm(bias[None, :, None].expand(b, -1, xs.shape[2]), w, xs)
    return y.reshape(b, -1, *x.shape[2:])


class _Pointwise:
    """Kernel size 1 fixed; on CPU, contiguous inputs go through :func:`pointwise_conv`."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)  # type: ignore[call-arg]

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and x.is_contiguous():
            return pointwise_conv(x, self.weight, self.bias)  # type: ignore[attr-defined]
        return super().forward(x)  # type: ignore[misc]


class PointwiseConv1d(_Pointwise, nn.Conv1d):
    """``nn.Conv1d(in_channels, out_channels, 1)`` whose CPU forward is :func:`pointwise_conv`."""


class PointwiseConv2d(_Pointwise, nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 1)`` whose CPU forward is :func:`pointwise_conv`."""
