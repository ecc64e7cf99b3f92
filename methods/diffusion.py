"""Gaussian diffusion with the improved-DDPM recipe: cosine schedule, learned-range variance, hybrid loss.

Follows ``openai/improved-diffusion`` ``improved_diffusion/gaussian_diffusion.py`` (the process, the VLB terms,
``training_losses`` with ``LossType.RESCALED_MSE`` + ``ModelVarType.LEARNED_RANGE``) and ``respace.py``
(``space_timesteps``). The reverse-process *samplers* are diffusers' schedulers, configured so that they
compute the same updates; this module writes only what diffusers lacks:

- the schedule's float64 coefficients, ``q_sample`` and the posterior: diffusers keeps float32 buffers, and
  the VLB needs ``log(beta_tilde)`` near ``t = 0`` where float32 ``1 - alpha_bar`` loses 3 digits;
- the learned-range variance *for training* and the hybrid loss ``L_simple + lambda L_vlb`` (with
  ``normal_kl`` and the discretized-Gaussian decoder NLL): diffusers has no training losses at all;
- ``space_timesteps``: DDPMScheduler accepts custom timesteps but has no iDDPM section-count spacing;
- the sampling loop and EMA: the loop feeds the per-image generators and classifier-free guidance, and
  diffusers' ``EMAModel`` keeps its shadow weights outside the module, so they would not travel in the
  method's ``state_dict`` (the suite's safetensors checkpoint).

Which diffusers scheduler does what (``make_scheduler``):

- ``"ddpm"``: ``DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range")`` with the
  iDDPM respaced timesteps as ``custom timesteps``. Its ``step`` takes ``prev_t`` from the timestep list and
  uses ``beta_i = 1 - alpha_bar_{S_i} / alpha_bar_{S_{i-1}}`` and the matching ``beta_tilde_i``, i.e. exactly
  the respaced process of ``respace.py`` (learned variances interpolate between the *respaced* bounds).
- ``"ddim"``: ``DDIMScheduler`` with ``"trailing"`` spacing (starts at ``t = T - 1``, so ``x_T ~ N(0, I)``
  matches the forward process) and ``use_clipped_model_output=True`` (eps re-derived from the clipped
  ``x_0``, as iDDPM's ``ddim_sample``). It ignores the variance channels.
- DDPM and DDIM get the float64 ``alpha_bar`` of :func:`cosine_betas` in place of diffusers' float32 buffer:
  in float32, DDIM's ``sqrt(1 - alpha_bar_prev - sigma^2)`` is NaN at ``eta = 1`` on the capped last step.
- ``"dpmsolver++"``: ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)`` with
  ``lambda_min_clipped=-5.1`` (needed for the cosine schedule's capped last steps) and ``thresholding=True,
  sample_max_value=1.0``, which is plain ``x_0`` clipping to [-1, 1] (iDDPM's ``clip_denoised``). Only the
  eps channels are passed, so its hard-coded ``model_output[:, :3]`` slice is never relied on.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

SAMPLERS = ("ddpm", "ddim", "dpmsolver++")
COSINE_S = 0.008
MAX_BETA = 0.999
DPM_LAMBDA_MIN_CLIPPED = -5.1  # diffusers' documented value for squaredcos_cap_v2

ModelFn = Callable[[Tensor, Tensor], Tensor]


# ---------------------------------------------------------------------------------------------------------
# Schedule


def cosine_alpha_bar(t: np.ndarray | float, s: float = COSINE_S) -> np.ndarray:
    """The continuous cosine schedule ``alpha_bar(t) = f(t) / f(0)``, ``f(t) = cos^2((t + s) / (1 + s) * pi / 2)``.

    ``t`` in [0, 1] (iDDPM eq. 17). ``f(0)`` cancels in every ratio, so ``betas_for_alpha_bar`` uses ``f``.
    """
    f = lambda u: np.cos((np.asarray(u, dtype=np.float64) + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(0.0)


def cosine_betas(num_timesteps: int, max_beta: float = MAX_BETA) -> np.ndarray:
    """``beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta)``, i = 0..T-1, float64 [T].

    As ``improved_diffusion/gaussian_diffusion.py`` ``get_named_beta_schedule("cosine")`` /
    ``betas_for_alpha_bar``; diffusers' ``squaredcos_cap_v2`` is the same formula in float32.
    """
    i = np.arange(num_timesteps, dtype=np.float64)
    ratio = cosine_alpha_bar((i + 1) / num_timesteps) / cosine_alpha_bar(i / num_timesteps)
    return np.minimum(1.0 - ratio, max_beta)


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> list[int]:
    """The timesteps kept by respacing, ascending (``improved_diffusion/respace.py`` ``space_timesteps``).

    ``section_counts`` splits [0, T) into equal sections with that many evenly spaced steps each, with a
    fractional stride so the first and last step of each section are kept (``[10]`` on T = 1000 keeps
    0, 111, ..., 999). ``"ddimN"`` keeps ``range(0, T, T // N)`` (DDIM's integer stride).
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(
                f"cannot create exactly {desired} steps with an integer stride from T={num_timesteps}"
            )
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps: list[int] = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f"cannot divide section of {size} steps into {section_count}")
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return sorted(set(all_steps))


def respaced_betas(alphas_cumprod: np.ndarray, use_timesteps: Sequence[int]) -> np.ndarray:
    """Betas of the respaced process: ``beta_i = 1 - alpha_bar_{S_i} / alpha_bar_{S_{i-1}}`` (``alpha_bar_{S_{-1}} = 1``).

    ``respace.py`` ``SpacedDiffusion.__init__``; the spaced process has the same ``alpha_bar`` at the kept
    steps, so ``q(x_{S_i} | x_0)`` is unchanged and only the reverse steps get longer.
    """
    last, out = 1.0, []
    for t in sorted(use_timesteps):
        out.append(1.0 - alphas_cumprod[t] / last)
        last = alphas_cumprod[t]
    return np.asarray(out, dtype=np.float64)


def _extract(arr: Tensor, t: Tensor, ndim: int) -> Tensor:
    """``arr[t]`` (float64 [T] -> float32 [B, 1, ..., 1]) broadcastable against a ``[B, ...]`` tensor of ``ndim`` dims."""
    out = arr.to(t.device)[t].float()
    return out.view(-1, *([1] * (ndim - 1)))


def mean_flat(x: Tensor) -> Tensor:
    """Mean over all dimensions but the batch: ``[B, ...] -> [B]``."""
    return x.mean(dim=tuple(range(1, x.dim())))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """``KL(N(mean1, e^logvar1) || N(mean2, e^logvar2))`` elementwise, in nats.

    ``0.5 (-1 + logvar2 - logvar1 + e^{logvar1 - logvar2} + (mean1 - mean2)^2 e^{-logvar2})``.
    """
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """Fast approximation of the standard normal CDF: ``0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Log-likelihood of 8-bit data ``x`` in [-1, 1] under ``N(means, e^{2 log_scales})`` discretized to bins of 2/255.

    ``log P(x) = log(CDF((x - mu + 1/255) / sigma) - CDF((x - mu - 1/255) / sigma))``, with the edge bins
    extended to -inf / +inf (``x < -0.999`` / ``x > 0.999``). Elementwise, in nats (DDPM's decoder L_0).
    """
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


SCHEDULES = ("cosine", "linear", "ldm_linear")


def named_betas(schedule: str, num_timesteps: int) -> np.ndarray:
    """The betas of a named noise schedule, float64 [T].

    - ``cosine``: :func:`cosine_betas` (iDDPM; the suite's default).
    - ``linear``: ADM's linear schedule, ``linspace(1e-4 s, 0.02 s, T)`` with ``s = 1000 / T``
      (``improved_diffusion/gaussian_diffusion.py`` ``get_named_beta_schedule("linear")``; LayoutDiffusion).
    - ``ldm_linear``: latent diffusion's "linear", ``linspace(sqrt(0.0015), sqrt(0.0195), T) ** 2``
      (CompVis ``ldm/modules/diffusionmodules/util.py`` ``make_beta_schedule`` with the ``linear_start`` /
      ``linear_end`` of the f8 first-stage configs; SGDiff); diffusers calls it ``scaled_linear``.
    """
    if schedule == "cosine":
        return cosine_betas(num_timesteps)
    if schedule == "linear":
        scale = 1000 / num_timesteps
        return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)
    if schedule == "ldm_linear":
        return np.linspace(0.0015**0.5, 0.0195**0.5, num_timesteps, dtype=np.float64) ** 2
    raise ValueError(f"unknown noise schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


class GaussianDiffusion:
    """The forward process and the improved-DDPM training objective for an eps + learned-range-variance model.

    The model output is ``[B, 2C, H, W]``: ``eps_theta`` (first C channels) and ``v`` in [-1, 1] (last C), with

        log Sigma_theta(x_t, t) = frac log beta_t + (1 - frac) log beta_tilde_t,  frac = (v + 1) / 2

    (iDDPM eq. 15; ``beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t``, its log clipped at
    ``t = 0`` to ``log beta_tilde_1``). All coefficients are float64 [T], as in ``gaussian_diffusion.py``.
    """

    def __init__(self, num_timesteps: int = 1000, schedule: str = "cosine") -> None:
        if num_timesteps < 2:
            raise ValueError(f"diffusion_steps must be >= 2, got {num_timesteps}")
        self.num_timesteps = T = int(num_timesteps)
        self.schedule = schedule
        betas = named_betas(schedule, T)
        alphas_cumprod = np.cumprod(1.0 - betas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        self.betas_np, self.alphas_cumprod_np = betas, alphas_cumprod
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))  # noqa: E731
        self.betas = as_t(betas)
        self.alphas_cumprod = as_t(alphas_cumprod)
        self.alphas_cumprod_prev = as_t(alphas_cumprod_prev)
        self.sqrt_alphas_cumprod = as_t(np.sqrt(alphas_cumprod))
        self.sqrt_one_minus_alphas_cumprod = as_t(np.sqrt(1.0 - alphas_cumprod))
        self.sqrt_recip_alphas_cumprod = as_t(np.sqrt(1.0 / alphas_cumprod))
        self.sqrt_recipm1_alphas_cumprod = as_t(np.sqrt(1.0 / alphas_cumprod - 1))
        self.posterior_variance = as_t(posterior_variance)
        # beta_tilde_0 = 0: clip its log to log beta_tilde_1 (the t = 0 term is the decoder NLL anyway).
        self.posterior_log_variance_clipped = as_t(
            np.log(np.append(posterior_variance[1], posterior_variance[1:]))
        )
        self.posterior_mean_coef1 = as_t(betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod))
        self.posterior_mean_coef2 = as_t(
            (1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod)
        )
        self.log_betas = as_t(np.log(betas))

    # -- forward process ---------------------------------------------------------------------------------

    def q_sample(self, x_start: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``: a draw of ``q(x_t | x_0)``, [B, C, H, W]."""
        n = x_start.dim()
        return (
            _extract(self.sqrt_alphas_cumprod, t, n) * x_start
            + _extract(self.sqrt_one_minus_alphas_cumprod, t, n) * noise
        )

    def q_posterior_mean_variance(
        self, x_start: Tensor, x_t: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of ``q(x_{t-1} | x_t, x_0)`` (DDPM eq. 6-7).

        ``mu_tilde = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t) x_0
        + (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t) x_t``, variance ``beta_tilde_t`` ([B, 1, 1, 1]).
        """
        n = x_t.dim()
        mean = (
            _extract(self.posterior_mean_coef1, t, n) * x_start
            + _extract(self.posterior_mean_coef2, t, n) * x_t
        )
        return (
            mean,
            _extract(self.posterior_variance, t, n),
            _extract(self.posterior_log_variance_clipped, t, n),
        )

    def predict_xstart_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """``x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)``."""
        n = x_t.dim()
        return (
            _extract(self.sqrt_recip_alphas_cumprod, t, n) * x_t
            - _extract(self.sqrt_recipm1_alphas_cumprod, t, n) * eps
        )

    # -- reverse process (used by the loss; sampling goes through diffusers) -------------------------------

    def p_mean_variance(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool = True
    ) -> dict[str, Tensor]:
        """``p_theta(x_{t-1} | x_t)`` from a ``[B, 2C, H, W]`` eps + v output (``LEARNED_RANGE``, ``EPSILON``).

        Returns ``mean``, ``variance``, ``log_variance`` and ``pred_xstart`` (each [B, C, H, W]); the mean is
        the posterior mean at ``pred_xstart`` (clipped to [-1, 1] when ``clip_denoised``).
        """
        c = x_t.shape[1]
        if model_output.shape[1] != 2 * c:
            raise ValueError(f"model output has {model_output.shape[1]} channels, expected 2 x {c} (eps, v)")
        eps, v = model_output[:, :c], model_output[:, c:]
        n = x_t.dim()
        min_log = _extract(self.posterior_log_variance_clipped, t, n)
        max_log = _extract(self.log_betas, t, n)
        frac = (v + 1) / 2
        log_variance = frac * max_log + (1 - frac) * min_log
        pred_xstart = self.predict_xstart_from_eps(x_t, t, eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {
            "mean": mean,
            "variance": torch.exp(log_variance),
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
        }

    def vb_terms_bpd(
        self, model_output: Tensor, x_start: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool = False
    ) -> Tensor:
        """The VLB term ``L_t`` per image in bits/dim, [B] (``_vb_terms_bpd``).

        ``L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))`` for t > 0 and the decoder NLL
        ``L_0 = -log p_theta(x_0 | x_1)`` (discretized Gaussian) at t = 0; averaged over C x H x W, / log 2.
        """
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def hybrid_loss(
        self,
        model_output: Tensor,
        x_start: Tensor,
        x_t: Tensor,
        t: Tensor,
        noise: Tensor,
        pixel_weight: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """iDDPM's ``L_hybrid = L_simple + lambda L_vlb`` per image ([B] each; ``training_losses``, RESCALED_MSE).

        ``mse = mean_flat((eps - eps_theta)^2)``; ``vb = L_t(frozen mean, learned variance) * T / 1000``, where
        the VLB term sees ``eps_theta.detach()`` (stop-gradient on the mean: L_vlb trains only Sigma_theta) and
        the T / 1000 rescaling makes the per-step weight ``lambda = 0.001`` of the full ``L_vlb = T E_t[L_t]``.
        ``pixel_weight [B, 1, H, W]`` (None = iDDPM) makes ``mse`` the weighted mean
        ``sum(w (eps - eps_theta)^2) / sum(w)`` per image, so a uniform weight leaves it unchanged.
        """
        c = x_start.shape[1]
        eps = model_output[:, :c]
        frozen = torch.cat([eps.detach(), model_output[:, c:]], dim=1)
        vb = self.vb_terms_bpd(frozen, x_start, x_t, t, clip_denoised=False) * (self.num_timesteps / 1000.0)
        if pixel_weight is None:
            mse = mean_flat((noise - eps) ** 2)
        else:
            mse = mean_flat(pixel_weight * (noise - eps) ** 2) / mean_flat(pixel_weight)
        return {"loss": mse + vb, "mse": mse, "vb": vb}


# ---------------------------------------------------------------------------------------------------------
# Sampling with diffusers' schedulers


def power_timesteps(num_timesteps: int, steps: int, power: float) -> list[int]:
    """Respaced timesteps ``round((T - 1) (i / N)^power)``, ``i = 0..N``, duplicates merged, descending.

    ``power = 2`` is DDIM's "quad" skip (Song et al. 2021, ermongroup/ddim ``runners/diffusion.py``
    ``skip_type == "quad"``): the steps crowd towards t = 0, where the sample's fine detail is decided (the
    same idea as Karras et al. 2022's rho-spaced noise levels). For ``N = 50``, ``T = 1000`` it gives 50 steps.
    """
    ts = {int(round((num_timesteps - 1) * (i / steps) ** power)) for i in range(steps + 1)}
    return sorted(ts, reverse=True)


def make_scheduler(
    sampler: str, num_timesteps: int, steps: int, schedule: str = "cosine", spacing: float = 1.0
):  # -> diffusers SchedulerMixin
    """A diffusers scheduler for ``sampler`` with the named noise schedule (:func:`named_betas`) of
    ``num_timesteps``, set to ``steps`` steps; ``spacing != 1`` (``ddpm`` only) spaces them by
    :func:`power_timesteps` instead of iDDPM's even ``space_timesteps``."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"sample_steps must be in [1, {num_timesteps}], got {steps}")
    if spacing != 1.0 and sampler != "ddpm":
        raise ValueError(f"sample_spacing={spacing} needs the ddpm sampler, got {sampler!r}")
    betas = named_betas(schedule, num_timesteps)
    common: dict = {"num_train_timesteps": num_timesteps, "prediction_type": "epsilon"}
    if schedule == "cosine":
        common["beta_schedule"] = "squaredcos_cap_v2"
    else:  # diffusers takes the exact betas (its own "linear" is not scaled by 1000 / T)
        common["trained_betas"] = betas.tolist()
    if sampler == "ddpm":
        sched = DDPMScheduler(
            **common, variance_type="learned_range", clip_sample=True, clip_sample_range=1.0
        )
        if spacing == 1.0:
            sched.set_timesteps(timesteps=space_timesteps(num_timesteps, [steps])[::-1])
        else:
            sched.set_timesteps(timesteps=power_timesteps(num_timesteps, steps, spacing))
    elif sampler == "ddim":
        sched = DDIMScheduler(**common, clip_sample=True, set_alpha_to_one=True, timestep_spacing="trailing")
        sched.set_timesteps(steps)
    elif sampler == "dpmsolver++":
        sched = DPMSolverMultistepScheduler(
            **common,
            algorithm_type="dpmsolver++",
            solver_order=2,
            thresholding=True,
            sample_max_value=1.0,  # threshold s = clamp(quantile, 1, 1) = 1: plain clipping of x_0 to [-1, 1]
            lambda_min_clipped=DPM_LAMBDA_MIN_CLIPPED if schedule == "cosine" else -float("inf"),
            timestep_spacing="linspace",
        )
        with warnings.catch_warnings():  # diffusers 0.42 calls np.array(tensor) in a way numpy 2 deprecates
            warnings.simplefilter("ignore", DeprecationWarning)
            sched.set_timesteps(steps)
    else:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    if sampler in ("ddpm", "ddim"):
        # float64 alpha_bar (iDDPM keeps float64; diffusers float32): with float32, DDIM's
        # sqrt(1 - alpha_bar_prev - sigma^2) is a square root of a rounding-negative number (NaN) at eta = 1
        # on the cosine schedule's capped last step (alpha_bar_999 ~ 2e-9). Only 0-dim coefficients change
        # dtype; the samples stay float32.
        sched.alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - betas))
        sched.one = sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return sched


def sample_loop(
    model_fn: ModelFn,
    shape: tuple[int, ...],
    generator: list[torch.Generator],
    sampler: str,
    steps: int,
    num_timesteps: int,
    device: torch.device | str = "cpu",
    eta: float = 1.0,
    schedule: str = "cosine",
    spacing: float = 1.0,
) -> Tensor:
    """Run the reverse process from ``x_T ~ N(0, I)`` and return ``x_0`` in [-1, 1], ``[B, *shape]``.

    ``model_fn(x_t [B, C, H, W], t [B] int64, original timesteps) -> [B, 2C, H, W]`` (eps, v). All noise
    (``x_T`` and the per-step noise of DDPM / DDIM with ``eta > 0``) is drawn image by image from
    ``generator[i]`` (diffusers' ``randn_tensor`` with a generator list), so image i does not depend on the
    other images of the batch. ``eta`` is DDIM's (0 = deterministic DDIM, 1 = DDPM-like fixed-small variance);
    ``spacing`` is :func:`make_scheduler`'s.
    """
    from diffusers.utils.torch_utils import randn_tensor

    b = len(generator)
    sched = make_scheduler(sampler, num_timesteps, steps, schedule, spacing)
    x = randn_tensor((b, *shape), generator=generator, device=torch.device(device), dtype=torch.float32)
    x = x * sched.init_noise_sigma
    c = shape[0]
    for t in sched.timesteps:
        tt = torch.full((b,), int(t), device=x.device, dtype=torch.long)
        out = model_fn(x, tt)
        if sampler == "ddpm":
            x = sched.step(out, t, x, generator=generator).prev_sample
        elif sampler == "ddim":
            x = sched.step(
                out[:, :c], t, x, eta=eta, use_clipped_model_output=True, generator=generator
            ).prev_sample
        else:
            x = sched.step(out[:, :c], t, x).prev_sample
    return x.clamp(-1, 1)


# ---------------------------------------------------------------------------------------------------------
# EMA


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """``theta_ema <- decay theta_ema + (1 - decay) theta`` for every parameter; buffers are copied.

    ``improved_diffusion/nn.py`` ``update_ema``. Parameters are matched by name, so ``target`` must be a
    structural copy of ``source``.
    """
    src = dict(source.named_parameters())
    for name, p in target.named_parameters():
        p.lerp_(src[name].detach(), 1.0 - decay)
    src_b = dict(source.named_buffers())
    for name, buf in target.named_buffers():
        if name in src_b and src_b[name].shape == buf.shape:
            buf.copy_(src_b[name])


def ema_decay(step: int, decay: float) -> float:
    """Warm-up of the EMA rate, ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates.

    diffusers' ``EMAModel.get_decay`` without ``use_ema_warmup``; iDDPM uses the fixed rate, which with
    0.9999 makes the EMA useless for short runs (the quick tier trains 2,000 steps).
    """
    return min(decay, (1.0 + step) / (10.0 + step))
