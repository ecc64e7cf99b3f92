"""The Gaussian-diffusion core against closed forms and direct computations (methods/diffusion.py, methods/unet.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from methods.diffusion import (
    GaussianDiffusion,
    cosine_alpha_bar,
    cosine_betas,
    discretized_gaussian_log_likelihood,
    ema_decay,
    ema_update,
    make_scheduler,
    normal_kl,
    power_timesteps,
    respaced_betas,
    sample_loop,
    space_timesteps,
)
from methods.unet import UNetModel, timestep_embedding

T = 1000


def test_cosine_schedule_matches_its_closed_form():
    betas = cosine_betas(T)
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expected = np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)])
    np.testing.assert_allclose(betas, expected, rtol=1e-10, atol=0)
    assert betas.max() == pytest.approx(0.999) and betas[-1] == pytest.approx(
        0.999
    )  # the cap binds at the end
    # alpha_bar_t = prod_{s <= t} (1 - beta_s) = f(t + 1) / f(0) wherever the cap did not bind
    abar = np.cumprod(1 - betas)
    uncapped = np.nonzero(np.cumsum(betas >= 0.999) == 0)[0]
    np.testing.assert_allclose(abar[uncapped], cosine_alpha_bar((uncapped + 1) / T), rtol=1e-9)
    assert abar[-1] < 1e-8 and 0.9999 < abar[0] < 1
    # diffusers' squaredcos_cap_v2 (used by the samplers) is the same schedule in float32
    sched = make_scheduler("ddpm", T, 10)
    np.testing.assert_allclose(sched.betas.double().numpy(), betas, rtol=1e-5, atol=1e-7)


def test_q_sample_and_posterior_agree_with_a_direct_computation():
    d = GaussianDiffusion(T)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 4, 4, generator=g) * 2 - 1
    xt_noise = torch.randn(6, 3, 4, 4, generator=g)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    betas = cosine_betas(T)
    abar = np.cumprod(1 - betas)
    ab = torch.tensor(abar[t.numpy()]).view(-1, 1, 1, 1)
    x_t = d.q_sample(x0, t, xt_noise)
    direct = ab.sqrt() * x0.double() + (1 - ab).sqrt() * xt_noise.double()
    torch.testing.assert_close(x_t.double(), direct, rtol=1e-5, atol=1e-6)

    # Posterior by Bayes' rule: precision = alpha_t / beta_t + 1 / (1 - abar_{t-1}),
    # mean = var (sqrt(alpha_t) x_t / beta_t + sqrt(abar_{t-1}) x_0 / (1 - abar_{t-1})).
    mean, var, logvar = d.q_posterior_mean_variance(x0, x_t, t)
    for i, ti in enumerate(t.tolist()):
        if ti == 0:  # q(x_{-1} | x_0, x_0) is a point mass at x_0: coef1 = 1, coef2 = 0
            torch.testing.assert_close(mean[i], x0[i], rtol=1e-5, atol=1e-5)
            continue
        b, a, ab_prev = betas[ti], 1 - betas[ti], abar[ti - 1]
        v = 1.0 / (a / b + 1.0 / (1 - ab_prev))
        m = v * (math.sqrt(a) * x_t[i].double() / b + math.sqrt(ab_prev) * x0[i].double() / (1 - ab_prev))
        torch.testing.assert_close(mean[i].double(), m, rtol=1e-4, atol=1e-5)
        assert float(var[i]) == pytest.approx(v, rel=1e-5)
        assert float(logvar[i]) == pytest.approx(math.log(v), rel=1e-5)
    # log beta_tilde is clipped at t = 0 to its t = 1 value
    assert float(d.posterior_log_variance_clipped[0]) == float(d.posterior_log_variance_clipped[1])


def test_learned_range_variance_interpolates_in_log_space():
    d = GaussianDiffusion(T)
    x_t = torch.randn(3, 3, 2, 2)
    t = torch.tensor([5, 5, 5])
    v = torch.stack([torch.full((3, 2, 2), x) for x in (-1.0, 0.0, 1.0)])
    out = d.p_mean_variance(torch.cat([torch.zeros_like(x_t), v], dim=1), x_t, t)
    lo, hi = math.log(float(d.posterior_variance[5])), math.log(float(d.betas[5]))
    got = out["log_variance"][:, 0, 0, 0].double()
    torch.testing.assert_close(
        got, torch.tensor([lo, (lo + hi) / 2, hi], dtype=torch.float64), rtol=1e-5, atol=1e-5
    )


def test_kl_and_decoder_nll_basics():
    m, lv = torch.randn(10), torch.randn(10)
    torch.testing.assert_close(normal_kl(m, lv, m, lv), torch.zeros(10))
    assert bool((normal_kl(m, lv, m + 1, lv) > 0).all())
    # a very narrow Gaussian centred on the data puts ~all mass in its bin: log p ~ 0
    x = torch.tensor([-1.0, 0.0, 1.0])
    ll = discretized_gaussian_log_likelihood(x, x, torch.full((3,), -10.0))
    assert bool((ll > -1e-3).all())


def test_hybrid_loss_pixel_weight_is_a_weighted_mean():
    """mse with pixel_weight w is sum(w err^2) / sum(w) per image; a constant w gives the unweighted mse."""
    d = GaussianDiffusion(1000)
    g = torch.Generator().manual_seed(0)
    x0, noise, out = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(3))
    out = torch.cat([out, torch.randn(2, 3, 8, 8, generator=g)], 1)
    t = torch.tensor([10, 500])
    x_t = d.q_sample(x0, t, noise)
    plain = d.hybrid_loss(out, x0, x_t, t, noise)
    const = d.hybrid_loss(out, x0, x_t, t, noise, torch.full((2, 1, 8, 8), 3.0))
    torch.testing.assert_close(const["mse"], plain["mse"])
    torch.testing.assert_close(const["vb"], plain["vb"])
    w = torch.rand(2, 1, 8, 8, generator=g) + 0.5
    err = (noise - out[:, :3]) ** 2
    expect = (w * err).sum((1, 2, 3)) / (3 * w.sum((1, 2, 3)))
    torch.testing.assert_close(d.hybrid_loss(out, x0, x_t, t, noise, w)["mse"], expect)


def test_hybrid_loss_is_finite_and_falls_when_overfitting():
    torch.manual_seed(0)
    d = GaussianDiffusion(T)
    net = UNetModel(3, 16, 6, 1, (2,), channel_mult=(1, 2), num_head_channels=16)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    t = torch.tensor([0, 30, 300, 900])
    noise = torch.randn_like(x0)
    x_t = d.q_sample(x0, t, noise)
    losses, vbs = [], []
    for _ in range(40):
        out = d.hybrid_loss(net(x_t, t), x0, x_t, t, noise)
        assert all(bool(torch.isfinite(v).all()) for v in out.values())
        opt.zero_grad()
        out["loss"].mean().backward()
        opt.step()
        losses.append(float(out["loss"].mean().detach()))
        vbs.append(float(out["vb"].mean().detach()))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert np.mean(vbs[-5:]) < np.mean(vbs[:5])


def test_vlb_term_does_not_train_the_mean():
    d = GaussianDiffusion(T)
    x0, noise = torch.rand(2, 3, 4, 4) * 2 - 1, torch.randn(2, 3, 4, 4)
    t = torch.tensor([3, 400])
    x_t = d.q_sample(x0, t, noise)
    out = torch.zeros(2, 6, 4, 4, requires_grad=True)
    d.hybrid_loss(out, x0, x_t, t, noise)["vb"].sum().backward()
    assert float(out.grad[:, :3].abs().max()) == 0.0 and float(out.grad[:, 3:].abs().max()) > 0


def test_space_timesteps_follows_respace_py():
    assert space_timesteps(1000, [10]) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(100, "10,5") == [0, 5, 11, 16, 22, 27, 33, 38, 44, 49, 50, 62, 74, 87, 99]
    assert space_timesteps(T, [T]) == list(range(T))
    abar = np.cumprod(1 - cosine_betas(T))
    kept = space_timesteps(T, [T])
    np.testing.assert_allclose(respaced_betas(abar, kept), cosine_betas(T), rtol=1e-9)


def _toy_model(x: torch.Tensor, t: torch.Tensor, v: float = -1.0) -> torch.Tensor:
    """A deterministic eps-model (smooth in x and t) with a constant variance output ``v``."""
    eps = torch.tanh(0.7 * x + 0.3 * torch.sin(t.float() / 97.0).view(-1, 1, 1, 1))
    return torch.cat([eps, torch.full_like(x, v)], dim=1)


@pytest.mark.parametrize("spacing", [1.0, 2.0])
def test_respaced_ddpm_step_is_the_respaced_learned_variance_posterior(spacing):
    """diffusers' DDPMScheduler with custom timesteps == iDDPM respace.py + p_mean_variance(LEARNED_RANGE), for
    the even respacing and for DDIM's quadratic one (respace.py takes any kept set)."""
    steps = space_timesteps(T, [25])[::-1] if spacing == 1.0 else power_timesteps(T, 25, spacing)
    sched = make_scheduler("ddpm", T, 25, spacing=spacing)
    assert sched.timesteps.tolist() == steps
    abar = np.cumprod(1 - cosine_betas(T))
    b_resp = respaced_betas(abar, steps)[::-1]  # aligned with the descending timesteps
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    for i, t in enumerate(steps[:-1]):
        out = _toy_model(x, torch.full((2,), t), v=0.3)
        gens = [torch.Generator().manual_seed(10 + i), torch.Generator().manual_seed(20 + i)]
        got = sched.step(out, t, x, generator=gens).prev_sample
        # reference, float64: x0 clipped, posterior of the respaced process, learned-range log variance
        ab, ab_prev, beta = abar[t], abar[steps[i + 1]], b_resp[i]
        x64, eps = x.double(), out[:, :3].double()
        x0 = ((x64 - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-1, 1)
        mean = (
            beta * math.sqrt(ab_prev) / (1 - ab) * x0 + (1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab) * x64
        )
        beta_tilde = beta * (1 - ab_prev) / (1 - ab)
        frac = (0.3 + 1) / 2
        logvar = frac * math.log(beta) + (1 - frac) * math.log(beta_tilde)
        z = torch.cat(
            [torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(s + i)) for s in (10, 20)]
        )
        torch.testing.assert_close(
            got.double(), mean + math.exp(0.5 * logvar) * z.double(), rtol=1e-4, atol=1e-4
        )
        x = got


def test_power_timesteps_crowd_towards_t0():
    """round((T - 1) (i / N)^p), i = 0..N, merged: p = 2 is DDIM's quad skip; N steps where no two i round alike."""
    quad = power_timesteps(1000, 50, 2.0)
    assert len(quad) == 50 and quad[0] == 999 and quad[-1] == 0 and quad == sorted(set(quad), reverse=True)
    assert quad[-6:] == [14, 10, 6, 4, 2, 0]  # i = 1 rounds to 0 and merges with i = 0
    assert sum(t < 100 for t in quad) == 3 * sum(t < 100 for t in space_timesteps(1000, [50])) == 15
    assert power_timesteps(1000, 9, 1.0) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    with pytest.raises(ValueError, match="sample_spacing"):
        make_scheduler("ddim", T, 10, spacing=2.0)


def test_ddim_eta1_all_steps_follows_the_ddpm_path():
    """With all T steps, eta = 1 and the same noise, DDIM is ancestral sampling with beta_tilde (v = -1)."""

    def gens():
        return [torch.Generator().manual_seed(s) for s in (3, 4)]

    ddpm = sample_loop(lambda x, t: _toy_model(x, t, -1.0), (3, 4, 4), gens(), "ddpm", T, T)
    ddim = sample_loop(lambda x, t: _toy_model(x, t, -1.0), (3, 4, 4), gens(), "ddim", T, T, eta=1.0)
    torch.testing.assert_close(ddim, ddpm, rtol=0, atol=2e-3)
    ddim0 = sample_loop(lambda x, t: _toy_model(x, t, -1.0), (3, 4, 4), gens(), "ddim", T, T, eta=0.0)
    assert float((ddim0 - ddpm).abs().max()) > 1e-2  # eta = 0 is a different (deterministic) path


@pytest.mark.parametrize("sampler,steps", [("ddpm", 10), ("ddim", 10), ("dpmsolver++", 10)])
def test_samplers_use_only_the_per_image_generators(sampler, steps):
    def run(seeds):
        return sample_loop(
            _toy_model,
            (3, 4, 4),
            [torch.Generator().manual_seed(s) for s in seeds],
            sampler,
            steps,
            T,
            eta=1.0,
        )

    both = run([7, 8])
    assert both.shape == (2, 3, 4, 4) and float(both.abs().max()) <= 1
    torch.manual_seed(123)  # the global RNG must not matter
    torch.testing.assert_close(run([8])[0], both[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(run([7, 8]), both, rtol=0, atol=0)


def test_ema_update_and_warmup():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = a.weight.detach().clone()
    ema_update(a, b, 0.9)
    torch.testing.assert_close(a.weight, 0.9 * before + 0.1 * b.weight.detach())
    assert ema_decay(0, 0.9999) == pytest.approx(0.1)
    assert ema_decay(10**7, 0.9999) == 0.9999


def test_timestep_embedding_and_unet_shapes():
    e = timestep_embedding(torch.tensor([0.0, 10.0]), 7)
    assert e.shape == (2, 7) and float(e[0, 0]) == 1.0
    net = UNetModel(
        5, 16, 6, 1, (2,), channel_mult=(1, 2), num_head_channels=16, cond_dim=8, encoder_channels=12
    )
    x, t = torch.randn(2, 5, 8, 8), torch.tensor([1, 500])
    tokens, mask = torch.randn(2, 3, 12), torch.tensor([[True, False, True], [True, True, True]])
    out = net(x, t, torch.randn(2, 8), tokens, mask)
    assert out.shape == (2, 6, 8, 8)
    # a masked-out token has no influence; an unmasked one has (attention and output layers are zero-initialised
    # as in ADM, so give every weight a random value first)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.1)
        ref = net(x, t, None, tokens, mask)
        masked, unmasked = tokens.clone(), tokens.clone()
        masked[0, 1] += 100
        unmasked[0, 0] += 100
        torch.testing.assert_close(net(x, t, None, masked, mask), ref)
        assert float((net(x, t, None, unmasked, mask)[0] - ref[0]).abs().max()) > 1e-3


def test_unet_upsample_is_adm_nearest_x2_then_conv():
    """``Upsample`` (one transposed convolution) is ADM's ``F.interpolate(x, 2, "nearest")`` then the 3x3 conv,
    output and gradients, in float64; without the conv it is the interpolation alone."""
    import torch.nn.functional as F

    from methods.unet import Upsample

    torch.manual_seed(0)
    up = Upsample(4, True, 6).double()
    x = torch.randn(2, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    ref = up.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
    ours = up(x)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    params = [x, up.conv.weight, up.conv.bias]
    for a, r in zip(torch.autograd.grad(ours, params, g), torch.autograd.grad(ref, params, g), strict=True):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-11)
    assert torch.equal(Upsample(4, False)(x), F.interpolate(x, scale_factor=2, mode="nearest"))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("affine", [True, False])
def test_scale_shift_group_norm_is_adm_adagn(layout, affine):
    """``scale_shift_group_norm`` (one per-sample-affine group norm) is ADM's ``GN(h) * (1 + scale) + shift``,
    output and gradients (h, scale, shift, gamma, beta), in float64."""
    from methods.unet import scale_shift_group_norm

    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 12, affine=affine).double()
    if affine:
        with torch.no_grad():
            norm.weight.normal_()
            norm.bias.normal_()
    h = torch.randn(3, 12, 5, 4, dtype=torch.float64)
    if layout == "channels_last":
        h = h.contiguous(memory_format=torch.channels_last)
    h.requires_grad_()
    scale, shift = (torch.randn(3, 12, 1, 1, dtype=torch.float64, requires_grad=True) for _ in range(2))
    ref = norm(h) * (1 + scale) + shift
    ours = scale_shift_group_norm(norm, h, scale, shift)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    inputs = [h, scale, shift, *norm.parameters()]
    for a, r in zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(ref, inputs, g), strict=True):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-11)


@pytest.mark.parametrize(
    ("channels", "groups"), [(32, 32), (64, 32), (128, 32), (192, 32), (256, 32), (16, 4), (48, 12), (8, 2), (3, 1)]
)
def test_norm_groups_is_adm_32_for_multiples_of_32_and_a_fallback_only_below(channels, groups):
    from methods.unet import norm_groups, normalization

    assert norm_groups(channels) == groups
    gn = normalization(channels)
    assert (gn.num_groups, gn.num_channels) == (groups, channels)


def test_named_schedules_follow_adm_and_ldm():
    from methods.diffusion import named_betas

    T = 1000
    lin = named_betas("linear", T)  # improved_diffusion get_named_beta_schedule("linear")
    assert lin[0] == pytest.approx(1e-4) and lin[-1] == pytest.approx(0.02) and np.all(np.diff(lin) > 0)
    assert named_betas("linear", 250)[-1] == pytest.approx(0.08)  # scaled by 1000 / T
    ldm = named_betas("ldm_linear", T)  # ldm make_beta_schedule("linear", 0.0015, 0.0195)
    assert ldm[0] == pytest.approx(0.0015) and ldm[-1] == pytest.approx(0.0195)
    assert np.allclose(np.sqrt(ldm), np.linspace(0.0015**0.5, 0.0195**0.5, T))
    with pytest.raises(ValueError, match="noise schedule"):
        named_betas("quadratic", T)


@pytest.mark.parametrize("schedule", ["linear", "ldm_linear"])
def test_samplers_and_diffusion_share_a_non_cosine_schedule(schedule):
    from methods.diffusion import named_betas

    T = 50
    d = GaussianDiffusion(T, schedule=schedule)
    assert np.allclose(d.alphas_cumprod.numpy(), np.cumprod(1 - named_betas(schedule, T)))
    for sampler in ("ddpm", "ddim", "dpmsolver++"):
        sched = make_scheduler(sampler, T, 10, schedule)
        assert np.allclose(sched.alphas_cumprod.double().numpy(), d.alphas_cumprod.numpy(), rtol=1e-5)
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        x = sample_loop(lambda x, t: _toy_model(x, t, -1.0), (3, 4, 4), gens, sampler, 10, T, schedule=schedule)
        assert x.shape == (2, 3, 4, 4) and torch.isfinite(x).all()
