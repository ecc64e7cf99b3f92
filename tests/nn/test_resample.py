"""benchmark/nn/resample.py: nearest x2 upsampling + 3x3 conv as one transposed convolution."""

import pytest
import torch
import torch.nn.functional as F

from benchmark.nn.resample import upsample_conv_weight, upsample_nearest_conv3x3


def _reference(x, w, b):
    return F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=1)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 1, 1), (3, 2, 4, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_upsample_then_conv_in_float64_with_gradients(shape, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, shape[1], 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    inputs = [t for t in (x, w, b) if t is not None]
    ours, ref = upsample_nearest_conv3x3(x, w, b), _reference(x, w, b)
    assert ours.shape == (shape[0], 5, 2 * shape[2], 2 * shape[3])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    up = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    for a, r in zip(torch.autograd.grad(ours, inputs, up), torch.autograd.grad(ref, inputs, up), strict=True):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-11)


def test_channels_last_weight_gives_a_channels_last_kernel_and_the_same_output():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 6, 6, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 4, 3, 3, generator=g)
    wcl = w.contiguous(memory_format=torch.channels_last)
    assert upsample_conv_weight(wcl).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(upsample_conv_weight(wcl), upsample_conv_weight(w))
    torch.testing.assert_close(upsample_nearest_conv3x3(x, wcl), _reference(x, w, None), rtol=1e-5, atol=1e-5)


def test_other_kernel_sizes_are_refused():
    with pytest.raises(ValueError, match="3x3 kernel"):
        upsample_nearest_conv3x3(torch.zeros(1, 2, 4, 4), torch.zeros(3, 2, 5, 5))
