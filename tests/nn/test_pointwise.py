"""benchmark/nn/pointwise.py: 1x1 convolutions as one batched matrix product."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.nn.pointwise import PointwiseConv1d, PointwiseConv2d, pointwise_conv


@pytest.mark.parametrize("spatial", [(7,), (5, 3), (1, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_the_convolution_in_float64_with_gradients(spatial, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, *spatial, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, *(1,) * len(spatial), generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    conv = F.conv1d if len(spatial) == 1 else F.conv2d
    ours, ref = pointwise_conv(x, w, b), conv(x, w, b)
    assert ours.shape == ref.shape == (3, 6, *spatial)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    inputs = [t for t in (x, w, b) if t is not None]
    up = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    for a, r in zip(torch.autograd.grad(ours, inputs, up), torch.autograd.grad(ref, inputs, up), strict=True):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("cls", "ref_cls", "shape"), [(PointwiseConv1d, nn.Conv1d, (2, 5, 9)),
                                                        (PointwiseConv2d, nn.Conv2d, (2, 5, 4, 3))])
def test_modules_are_drop_ins_for_the_1x1_convolutions(cls, ref_cls, shape):
    """Same parameter names and shapes (checkpoints load both ways), same output; a channels-last input
    takes the convolution path and gives the same result."""
    torch.manual_seed(0)
    ref = ref_cls(5, 7, 1)
    ours = cls(5, 7)
    shapes = {k: v.shape for k, v in ref.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == shapes
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)
    if len(shape) == 4:
        xc = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(ours(xc), ref(x), rtol=1e-5, atol=1e-6)
    nobias = cls(5, 7, bias=False)
    assert nobias.bias is None
    conv = F.conv1d if len(shape) == 3 else F.conv2d
    torch.testing.assert_close(nobias(x), conv(x, nobias.weight), rtol=1e-5, atol=1e-6)


def test_cpu_bf16_autocast_gives_bf16_like_the_convolution():
    torch.manual_seed(0)
    m = PointwiseConv2d(16, 8)
    x = torch.randn(2, 16, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, ref = m(x), F.conv2d(x, m.weight, m.bias)
    assert ours.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_compiles_into_one_graph_with_the_convolution_gradients():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = PointwiseConv2d(6, 4)
    x = torch.randn(2, 6, 3, 5, requires_grad=True)
    y = torch.compile(m, backend="aot_eager", fullgraph=True)(x)
    ref = F.conv2d(x, m.weight, m.bias)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    g, g_ref = torch.autograd.grad(y.sum(), [x, m.weight]), torch.autograd.grad(ref.sum(), [x, m.weight])
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
