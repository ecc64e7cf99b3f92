"""benchmark/nn/dropout.py: Bernoulli(1 - p) keep-mask from raw random bits, scaled by 1 / (1 - p)."""

import math

import pytest
import torch
import torch.utils.checkpoint
from torch import nn

from benchmark.nn.dropout import Dropout, keep_mask


def test_keeps_a_fraction_1_minus_p_scaled_and_the_backward_uses_the_same_mask():
    torch.manual_seed(0)
    p, n = 0.1, 1_000_000
    x = torch.rand(n) + 1.0  # no zeros, so a zero output means dropped
    x.requires_grad_(True)
    d = Dropout(p).train()
    y = d(x)
    kept = y != 0
    # binomial: std of the kept fraction is sqrt(p (1 - p) / n) = 3e-4; allow 5 sigma
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    torch.testing.assert_close(y[kept], x.detach()[kept] / (1 - p), rtol=1e-6, atol=0)
    # exactly nn.Dropout's kept values: x times the float32 scale
    assert torch.equal(y[kept], x.detach()[kept] * torch.tensor(1 / (1 - p), dtype=torch.float32))
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, kept.float() / (1 - p), rtol=1e-6, atol=0)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_is_bernoulli_1_minus_p_and_independent_of_position(p):
    """Kept fraction within 5 sigma overall, in each half of an odd-length mask (the two int32 halves of a
    64-bit draw) and between neighbours (no pairwise dependence)."""
    torch.manual_seed(0)
    n = 1_000_001
    k = keep_mask((n,), p).double()
    assert k.shape == (n,)
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(k.mean().item() - (1 - p)) < 5 * sd
    for half in (k[0::2], k[1::2]):
        assert abs(half.mean().item() - (1 - p)) < 5 * sd * math.sqrt(2)
    both = (k[:-1] * k[1:]).mean().item()  # P(keep, keep) = (1 - p)^2 for independent draws
    assert abs(both - (1 - p) ** 2) < 5 * math.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / n)


def test_keep_mask_edges_and_shape():
    assert keep_mask((3, 4, 5), 0.0).all() and keep_mask((3, 4, 5), 0.0).shape == (3, 4, 5)
    assert keep_mask((1000,), 1.0 - 1e-15).sum() <= 1  # p rounds to (2^32 - 1) / 2^32
    assert keep_mask((0, 3), 0.5).shape == (0, 3)


def test_bf16_input_keeps_x_times_the_scale_in_bf16():
    torch.manual_seed(0)
    x = torch.rand(10_000).add(1.0).bfloat16()
    y = Dropout(0.1).train()(x)
    assert y.dtype == torch.bfloat16
    kept = y != 0
    assert torch.equal(y[kept], x[kept] * (1 / 0.9))


def test_eval_mode_and_p0_are_the_identity_and_p1_drops_everything():
    x = torch.randn(4, 5)
    assert Dropout(0.3).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="p must be in"):
            Dropout(bad)


def test_same_seed_same_mask_and_the_state_dict_of_nn_dropout():
    x = torch.randn(3, 8, 4, 4)
    torch.manual_seed(5)
    a = Dropout(0.5).train()(x)
    torch.manual_seed(5)
    b = Dropout(0.5).train()(x)
    assert torch.equal(a, b)
    assert Dropout(0.2).state_dict() == nn.Dropout(0.2).state_dict() == {}


def test_activation_checkpointing_replays_the_mask():
    """``torch.utils.checkpoint`` restores the RNG state before recomputing, so the gradients are exact."""
    lin = nn.Linear(16, 16)
    d = Dropout(0.5).train()
    x = torch.randn(8, 16, requires_grad=True)

    def block(t):
        return d(lin(t)).tanh()

    torch.manual_seed(1)
    g_plain = torch.autograd.grad(block(x).sum(), [x, lin.weight])
    torch.manual_seed(1)
    out = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
    g_ckpt = torch.autograd.grad(out.sum(), [x, lin.weight])
    for a, b in zip(g_plain, g_ckpt, strict=True):
        assert torch.equal(a, b)


def test_compiles_into_one_graph_and_trains():
    """Under ``torch.compile`` the module takes ``F.dropout`` (``random_`` into an int32 view would break the
    graph and fail AOT autograd); ``aot_eager`` traces without a C++ compiler."""
    torch._dynamo.reset()
    net = nn.Sequential(nn.Linear(8, 8), Dropout(0.5)).train()
    x = torch.randn(4, 8)
    y = torch.compile(net, backend="aot_eager", fullgraph=True)(x)
    y.sum().backward()
    kept = y != 0
    assert 0 < kept.sum() < kept.numel() and net[0].weight.grad is not None
