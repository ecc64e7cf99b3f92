"""The ADM UNet (Dhariwal & Nichol 2021), conditioned on a global vector and on cross-attention tokens.

Follows ``openai/guided-diffusion`` ``guided_diffusion/unet.py`` (``UNetModel``, ``ResBlock`` with
``use_scale_shift_norm`` and ``resblock_updown``, ``AttentionBlock`` with ``num_head_channels``,
``timestep_embedding`` from ``nn.py``); the cross-attention follows GLIDE (``openai/glide-text2im``
``glide_text2im/unet.py``: ``AttentionBlock(encoder_channels=...)`` projects the condition tokens to extra
keys/values that the pixels attend to *together with* the self-attention keys). Changes, each for a reason:

- ``GroupNorm32(32, C)`` whenever C is a multiple of 32, fewer groups only for the CPU tiers' other widths
  (see :func:`norm_groups`);
- attention through ``F.scaled_dot_product_attention`` with a key mask, so graphs with different numbers of
  objects can share a batch (GLIDE's text tokens have a fixed length);
- ``Upsample``'s nearest x2 + 3x3 conv as one transposed convolution of the same 3x3 weight (the same map;
  forward + backward 1.5x / 2.2x / 2.6x faster for 8 / 16 / 32 px outputs, 128 channels, batch 32, on 2 CPU
  cores; :mod:`benchmark.nn.resample`);
- dropout's CPU mask drawn from raw random bits and applied as one float multiply
  (:mod:`benchmark.nn.dropout`: the same distribution, forward + backward about 40 % of the cost of
  ``nn.Dropout``);
- the 1x1 convolutions (residual skips, attention ``qkv`` / ``proj_out`` / ``encoder_kv``) as one batched
  matrix product on CPU (:mod:`benchmark.nn.pointwise`: the same parameters and map, 1.3-2.8x faster than
  oneDNN's NCHW 1x1 convolution, forward + backward);
- AdaGN's ``GN(h) (1 + scale) + shift`` as one ``group_norm`` call with a per-sample affine
  (:func:`scale_shift_group_norm`: the same map; in a profile of the 9.9M UNet's training step on 2 CPU
  cores, the elementwise multiply / add / sum time fell from 85 to 57 ms);
- no fp16 switch (autocast is the trainer's business); ``use_checkpoint`` recomputes each block's
  activations in the backward pass (``torch.utils.checkpoint``, non-reentrant, RNG state restored: the same
  gradients) instead of ADM's hand-written ``checkpoint``.
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from benchmark.nn.dropout import Dropout
from benchmark.nn.pointwise import PointwiseConv1d, PointwiseConv2d
from benchmark.nn.resample import upsample_nearest_conv3x3


def timestep_embedding(timesteps: Tensor, dim: int, max_period: int = 10000) -> Tensor:
    """Sinusoidal embedding ``[B] -> [B, dim]``: ``[cos(t w_k), sin(t w_k)]``, ``w_k = max_period^{-k / (dim/2)}``.

    ``guided_diffusion/nn.py`` ``timestep_embedding``; ``t`` may be fractional.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def norm_groups(channels: int, min_per_group: int = 4) -> int:
    """ADM's 32 groups (``GroupNorm32(32, C)``) whenever C is a multiple of 32; for the other, narrow CPU-tier
    widths (16, 48, ...) the most groups that divide C and keep >= ``min_per_group`` channels each.

    Why the fallback: 32 groups do not divide such widths, and GroupNorm removes each group's spatial mean, so
    with one channel per group the output layer cannot express an image's mean colour, which at high noise
    turns into whole-image colour casts (x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) amplifies the eps mean).
    """
    if channels % 32 == 0:
        return 32
    best = 1
    for g in range(1, 33):
        if channels % g == 0 and channels // g >= min_per_group:
            best = g
    return best


def normalization(channels: int) -> nn.GroupNorm:
    """ADM's ``GroupNorm32(32, C)`` for wide layers, fewer groups for narrow ones (see :func:`norm_groups`)."""
    return nn.GroupNorm(norm_groups(channels), channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero the parameters of ``module`` (ADM initialises every residual branch's last layer to 0)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def scale_shift_group_norm(norm: nn.GroupNorm, h: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """ADM's AdaGN ``norm(h) (1 + scale) + shift`` for ``h [B, C, H, W]`` and ``scale, shift [B, C, 1, 1]``.

    ``norm(h) = h_hat gamma + beta`` (``h_hat`` normalised over each sample's channel groups), so the whole map is
    ``h_hat (gamma (1 + scale)) + (beta (1 + scale) + shift)``: a group norm whose affine differs per sample.
    Seen as one sample ``[1, B C, H, W]`` with ``B G`` groups, each group still holds one sample's channels, and
    ``group_norm`` applies a ``[B C]`` affine itself, so the two elementwise passes of the product and the sum
    (and their backward) disappear. Equal up to float rounding. Other layouts (channels-last, which would
    need a copy to merge B and C) take the plain expression.
    """
    if not h.is_contiguous():
        return norm(h) * (1 + scale) + shift
    b, c = h.shape[:2]
    s1 = (1 + scale).reshape(b, c)
    sh = shift.reshape(b, c)
    weight = s1 if norm.weight is None else norm.weight * s1
    bias = sh if norm.bias is None else torch.addcmul(sh, norm.bias, s1)
    out = F.group_norm(
        h.reshape(1, b * c, *h.shape[2:]), b * norm.num_groups, weight.reshape(-1), bias.reshape(-1), norm.eps
    )
    return out.view(h.shape)


class TimestepBlock(nn.Module, abc.ABC):
    """A module whose ``forward`` takes the embedding ``emb [B, E]`` and the condition tokens."""

    @abc.abstractmethod
    def forward(
        self, x: Tensor, emb: Tensor, tokens: Tensor | None = None, token_mask: Tensor | None = None
    ) -> Tensor: ...


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands ``emb`` to residual blocks and the tokens to attention blocks."""

    def forward(  # type: ignore[override]
        self, x: Tensor, emb: Tensor, tokens: Tensor | None = None, token_mask: Tensor | None = None
    ) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, AttentionBlock):
                x = layer(x, tokens, token_mask)
            else:
                x = layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour x2, then an optional 3x3 conv; with the conv, both run as one stride-2 transposed
    convolution of the same weight (:mod:`benchmark.nn.resample`: the same map, 16 instead of 36
    multiply-adds per input pixel, no upsampled copy)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is not None:
            return upsample_nearest_conv3x3(x, self.conv.weight, self.conv.bias)
        return F.interpolate(x, scale_factor=2, mode="nearest")


class Downsample(nn.Module):
    """A stride-2 3x3 conv, or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.op: nn.Module = (
            nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
            if use_conv
            else nn.AvgPool2d(2, stride=2)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """ADM residual block with adaptive group norm ("scale-shift norm", AdaGN):

        h = conv3x3(SiLU(GN(x)))                       [B, C_out, H, W]  (resampled first if up/down)
        scale, shift = Linear(SiLU(emb)).chunk(2)      [B, C_out] each
        h = conv3x3_0(Dropout(SiLU(GN(h) (1 + scale) + shift)))
        out = skip(x) + h

    (``use_scale_shift_norm=False``: ``h + Linear(SiLU(emb))`` before the second norm.) ``up``/``down`` are
    BigGAN-style resampling inside the block (``resblock_updown``); the last conv is zero-initialised.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = True,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, self.out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd: nn.Module = Upsample(channels, False)
            self.x_upd: nn.Module = Upsample(channels, False)
        elif down:
            self.h_upd = Downsample(channels, False)
            self.x_upd = Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels),
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            Dropout(p=dropout),
            zero_module(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if self.out_channels == channels else PointwiseConv2d(channels, self.out_channels)
        )

    def forward(
        self, x: Tensor, emb: Tensor, tokens: Tensor | None = None, token_mask: Tensor | None = None
    ) -> Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = scale_shift_group_norm(self.out_layers[0], h, scale, shift)
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H x W positions, plus cross-attention to condition tokens (GLIDE).

    With ``q, k, v = W_qkv GN(x)`` ([B, 3C, HW]) and token keys/values ``k_e, v_e = W_kv tokens`` ([B, 2C, L]):

        out = x + W_o softmax(q^T [k_e, k] / sqrt(d)) [v_e, v]^T      (per head, d = C / heads)

    where ``token_mask [B, L]`` (True = real token) hides padded tokens. ``encoder_channels=None``: plain ADM
    self-attention. ``W_o`` is zero-initialised.

    Inside :func:`record_cross_attention` the block also appends the attention probabilities of the token keys,
    ``softmax(q^T [k_e, k] / sqrt(d))[..., :L]`` as ``[B, heads, H, W, L]`` (differentiable; the output is still
    computed by SDPA, so it is unchanged); outside it, ``record`` is None and nothing extra runs.
    """

    record: list[Tensor] | None = None
    attends_to_tokens = False  # subclasses whose keys include tokens without ``encoder_kv`` set this

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        encoder_channels: int | None = None,
    ) -> None:
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(
                    f"channels {channels} not divisible by num_head_channels {num_head_channels}"
                )
            self.num_heads = channels // num_head_channels
        self.norm = normalization(channels)
        self.qkv = PointwiseConv1d(channels, channels * 3)
        self.encoder_kv = PointwiseConv1d(encoder_channels, channels * 2) if encoder_channels else None
        self.proj_out = zero_module(PointwiseConv1d(channels, channels))

    def forward(self, x: Tensor, tokens: Tensor | None = None, token_mask: Tensor | None = None) -> Tensor:
        b, c, *spatial = x.shape
        heads, d = self.num_heads, c // self.num_heads
        qkv = self.qkv(self.norm(x).reshape(b, c, -1))  # [B, 3C, HW]
        # [3, B, heads, HW, d], contiguous: the CPU SDPA kernels are several times slower on strided inputs.
        q, k, v = qkv.reshape(b, 3, heads, d, -1).permute(1, 0, 2, 4, 3).contiguous().unbind(0)
        mask = None
        if self.encoder_kv is not None and tokens is not None:
            ekv = self.encoder_kv(tokens.transpose(1, 2).to(x.dtype))  # [B, 2C, L]
            ek, ev = ekv.reshape(b, 2, heads, d, -1).permute(1, 0, 2, 4, 3).unbind(0)
            k, v = torch.cat([ek, k], dim=2), torch.cat([ev, v], dim=2)
            if token_mask is not None:
                # Additive float mask (a finite minimum, not -inf): the fast path of the CPU kernel.
                pad = torch.zeros(b, token_mask.shape[1], dtype=q.dtype, device=q.device)
                pad = pad.masked_fill(~token_mask.bool(), torch.finfo(q.dtype).min)
                mask = torch.cat([pad, pad.new_zeros(b, q.shape[2])], dim=1)[:, None, None, :]  # [B,1,1,L+HW]
        if self.record is not None and self.encoder_kv is not None and tokens is not None:
            logits = q @ k.transpose(-1, -2) * d**-0.5  # [B, heads, HW, L + HW]
            if mask is not None:
                logits = logits + mask
            n_tok = tokens.shape[1]
            self.record.append(logits.softmax(-1)[..., :n_tok].reshape(b, heads, *spatial, n_tok))
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, heads, HW, d]
        h = h.permute(0, 1, 3, 2).reshape(b, c, -1)  # [B, C, HW]
        return x + self.proj_out(h).reshape(b, c, *spatial)


@contextlib.contextmanager
def record_cross_attention(module: nn.Module) -> Iterator[list[Tensor]]:
    """Collect the token attention maps ``[B, heads, H, W, L]`` of every cross-attention block of ``module``
    during the forward passes inside the ``with`` (in call order) into the list it yields."""
    blocks = [
        m for m in module.modules()
        if isinstance(m, AttentionBlock) and (m.encoder_kv is not None or m.attends_to_tokens)
    ]  # fmt: skip
    store: list[Tensor] = []
    for m in blocks:
        m.record = store
    try:
        yield store
    finally:
        for m in blocks:
            m.record = None


class UNetModel(nn.Module):
    """ADM's UNet: ``(x_t [B, C_in, H, W], t [B], cond [B, D_c], tokens [B, L, D_e]) -> [B, C_out, H, W]``.

    ``emb = MLP(timestep_embedding(t)) + Linear(cond)`` drives every residual block's AdaGN; attention
    blocks (at the downsampling rates ``attention_resolutions``, e.g. (2, 4, 8) for 32/16/8 px at 64 px)
    attend to the tokens. ``channel_mult`` sets the width per level; ``num_res_blocks`` blocks per level on
    the way down, ``num_res_blocks + 1`` on the way up (with the skip concatenations).
    """

    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = False,
        cond_dim: int | None = None,
        encoder_channels: int | None = None,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.model_channels = model_channels
        self.use_checkpoint = use_checkpoint
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.cond_embed = nn.Linear(cond_dim, emb_dim) if cond_dim else None
        attn = dict(
            num_heads=num_heads, num_head_channels=num_head_channels, encoder_channels=encoder_channels
        )
        res = dict(emb_channels=emb_dim, dropout=dropout, use_scale_shift_norm=use_scale_shift_norm)

        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, out_channels=int(mult * model_channels), **res)]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, **attn))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                down = (
                    ResBlock(ch, out_channels=ch, down=True, **res)
                    if resblock_updown
                    else Downsample(ch, conv_resample)
                )
                self.input_blocks.append(TimestepEmbedSequential(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, **res), AttentionBlock(ch, **attn), ResBlock(ch, **res)
        )
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), out_channels=int(model_channels * mult), **res)]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, **attn))
                if level and i == num_res_blocks:
                    layers.append(
                        ResBlock(ch, out_channels=ch, up=True, **res)
                        if resblock_updown
                        else Upsample(ch, conv_resample)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, out_channels, 3, padding=1))
        )

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor,
        cond: Tensor | None = None,
        tokens: Tensor | None = None,
        token_mask: Tensor | None = None,
    ) -> Tensor:
        """x [B, C_in, H, W], timesteps [B], cond [B, D_c], tokens [B, L, D_e], token_mask [B, L] -> [B, C_out, H, W]."""
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.cond_embed is not None and cond is not None:
            emb = emb + self.cond_embed(cond)
        run = self._checkpointed if self.use_checkpoint and self.training and torch.is_grad_enabled() else _call
        hs, h = [], x
        for block in self.input_blocks:
            h = run(block, h, emb, tokens, token_mask)
            hs.append(h)
        h = run(self.middle_block, h, emb, tokens, token_mask)
        for block in self.output_blocks:
            h = run(block, torch.cat([h, hs.pop()], dim=1), emb, tokens, token_mask)
        return self.out(h)

    @staticmethod
    def _checkpointed(block: nn.Module, *args: Tensor | None) -> Tensor:
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)


def _call(block: nn.Module, *args: Tensor | None) -> Tensor:
    return block(*args)
