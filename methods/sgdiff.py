"""SGDiff (Yang et al., "Diffusion-Based Scene Graph to Image Generation with Masked Contrastive Pre-Training",
NeurIPS 2022; code ``YangLing0818/SGDiff``) as a multi-stage method: graph encoder pre-training, then latent
diffusion conditioned on the frozen encoder.

Stage ``cgip`` (CGIP, ``sg_image_pretraining/``): a scene-graph encoder, learned object/predicate embeddings
(``E``-d) -> one ``GraphTripleConv`` -> a ``GraphTripleConvNet`` of ``gconv_layers`` layers (hidden ``gconv_width``;
``sgCLIP/model.py`` ``encode_graph_local_global``; released 5 layers, width 512, embed 512), gives

- local tokens: per triple ``[o_s, p, o_o]`` (3E-d), the first ``max_triples`` (15) of each image, zero-padded;
- a global vector ``g = W [mean_i o_i, mean_t p_t]`` (``graph_projection``).

It is trained against a *frozen* image encoder ``phi`` (local features ``phi_l(x) [B, N, C]``, global ``phi_g(x)``)
with the two released losses (``training/train_mim.py``):

- contrastive (``sgCLIP/contrastive_losses.py`` ``ClipLoss``): with ``u_i = phi_g(x_i)/|.|``, ``v_i = g_i/|g_i|``,
  ``s = exp(logit_scale)`` (init ``1/0.07``, clamped to ``[1, 100]`` after each step),
  ``L_c = (CE(s U V^T, I) + CE(s V U^T, I)) / 2`` over the batch;
- masked autoencoding (``sgCLIP/generative_loss.py`` ``ReconstractMaskedImageFromSceneGraphLoss``): each object's
  box is blacked out with probability 0.8 (``utils.py`` ``boxes_to_mask``, threshold 0.2), giving ``x_m``;
  a transformer block (self-attention over the image tokens, cross-attention to the local graph tokens,
  GEGLU feed-forward; 8 heads x 64) maps ``phi_l(x_m)`` to ``phi_l(x)``: ``L_m = mean((T(phi_l(x_m), tokens) -
  phi_l(x))^2)``. As released, the block is *not* trained (it is built inside ``train_one_epoch`` and is not
  in the optimizer), so only the graph encoder learns from ``L_m``; ``mim_train_block=True`` trains it.

AdamW (lr 5e-4, betas 0.9/0.999, eps 1e-8, weight decay 0.2 except gains/biases/logit_scale), cosine learning
rate with linear warm-up (``training/scheduler.py``), loss ``L_c + L_m``.

Stage ``ldm`` (``ldm/models/diffusion/ddpm.py`` ``LatentDiffusion``, ``config_vg.yaml``): eps-prediction diffusion on
latents ``z = s E(x)`` of a frozen first-stage autoencoder, ``beta_t`` linear in ``sqrt`` space from 0.0015 to
0.0195 (LDM's ``"linear"`` schedule: ``beta = linspace(sqrt(b0), sqrt(b1), T)^2``), T = 1000, loss
``L = E_{t, eps} mean((eps - eps_theta(z_t, t, c))^2)`` (``l_simple``, logvar 0, no VLB term). The condition ``c``
is the frozen CGIP encoder's output (``cond_stage_trainable: false``): tokens ``[W_l local ; g]`` (``context_local_mlp``
1536 -> 512, then the global vector as one more token; ``openaimodel.py`` ``UNetModel.forward``) that every
attention block of the UNet attends to. UNet: ``model_channels`` 256, ``channel_mult`` (1, 2, 4), 2 res-blocks,
attention at downsampling rates 4/2/1, 32 channels per head; AdamW at ``1e-6 x batch 16 = 1.6e-5``
(``scale_lr``), EMA 0.9999 used for sampling (``ema_scope``). Sampling (``testset_ddim_sampler.py``): DDIM,
200 steps, eta = 1 (``ldm/models/diffusion/ddim.py``: timesteps ``1, 6, ..., 996``, i.e. diffusers' ``leading``
spacing with ``steps_offset=1`` and ``alpha_bar_prev = alpha_bar_0`` at the last step), no classifier-free
guidance, latents decoded by the first stage.

First stage: at the ``full`` tier the released VQ-f8 (``n_embed`` 16384, 256 px -> 4 x 32 x 32, scale factor 1),
loaded from the user's file by ``methods.vq_f8.load_vq_f8`` and not stored in the suite's checkpoint (its
provenance is recorded). At the CPU tiers, stage ``autoencoder`` trains a small convolutional autoencoder on the
dataset first (plan ``autoencoder -> cgip -> ldm``; ``full``: ``cgip -> ldm``).

Deviations, each with its reason:

- CPU tiers: the suite's own autoencoder (L1 reconstruction only, no perceptual/GAN/VQ terms; downsampling 4 so
  that a 32 px image keeps an 8 x 8 latent) instead of VQ-f8, which is not obtainable offline and is built for
  256 px; its latents are scaled by ``1 / std`` of the first LDM batch (LDM's ``scale_by_std``) since they are
  not regularised to unit scale.
- CGIP's image side: the released code uses frozen CLIP ViT-B/32 (global: ``encode_image``; local: the output
  of the last ``nn.Linear`` of the visual tower, i.e. the last residual block's MLP ``c_proj``, 50 x 768). The
  ``full`` tier does the same through open_clip with the user's CLIP weights (``method.clip_weights``, as the
  ``clip`` text encoder); the CPU tiers use the frozen suite-trained autoencoder's last hidden feature map as
  ``phi_l`` (its positions as tokens) and its spatial mean as ``phi_g``, since no CLIP weights are available
  offline. The released code builds a fresh random MIM block every epoch; here it is built once.
- ``__image__`` (the whole-image node) is never blacked out in the MIM mask (in the release its box, the whole
  image, is blacked out with probability 0.8, which leaves nothing to reconstruct from), nor are objects
  without a known layout.
- Cross-attention: the suite's ADM ``UNetModel`` (``methods/unet.py``) is reused, whose attention blocks attend to
  the condition tokens *together with* the pixels (GLIDE style) instead of LDM's ``SpatialTransformer``
  (self-attention, then cross-attention, then a feed-forward); padded triple slots are masked out rather than
  attended to as zero vectors (so the samples do not depend on ``max_triples`` padding). ResBlocks use
  ``use_scale_shift_norm=False`` as LDM's default.
- One global batch size (``train.batch_size``) for all stages (released: 64 per GPU for CGIP, 16 for the LDM).
- CPU tiers only (budget, not method): narrower encoder/UNet, learning rate 1e-3 for the LDM, EMA 0.999,
  50 DDIM steps, a short warm-up; CGIP's global vector has the autoencoder feature width (``graph_projection``
  maps to the image side's global width, 512 = ``embed_dim`` with CLIP as released), and so has the LDM's
  token width (released ``context_dim`` 512 = the global vector's width).
- ``train.steps`` is the LDM stage's length (as for every other generator); the first stages' lengths are
  ``method.autoencoder_steps`` and ``method.cgip_steps``.

SceneGenie guidance (``--set method.guidance=scenegenie``, :mod:`methods.guidance`) applies to the latent sampler:
SGDiff predicts no boxes, so ``method.guidance_boxes_from`` names a layout predictor's checkpoint (as SceneGenie's
released pipeline reads SG2Im-CLIP boxes); the box term reads each object's first triple token's attention, the
CLIP term the decoded ``x0``. Not in the released SGDiff (an addition for the guidance ablation, off by default).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark import accel
from benchmark.batch import SceneGraphBatch
from benchmark.interfaces import DatasetInfo, Method, SceneGraphDataset, WeightProvenance
from benchmark.nn.graph import GraphTripleConv, GraphTripleConvNet
from benchmark.registry import register
from benchmark.scene_graph import IMAGE_TOKEN
from methods.diffusion import ema_decay, ema_update, mean_flat
from methods.guidance import GuidanceConfig, GuidanceInputs, SceneGenieGuidance, graph_captions
from methods.unet import UNetModel, normalization, record_cross_attention

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP preprocessing
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class SGDiffConfig(GuidanceConfig):
    """Defaults are the ``full`` tier (``config_vg.yaml`` and the CGIP defaults of ``training/configs.py``);
    SceneGenie's sampling-time guidance fields (``guidance*``, off) from :class:`methods.guidance.GuidanceConfig`."""

    # CGIP scene-graph encoder
    embed_dim: int = 512
    gconv_width: int = 512
    gconv_layers: int = 5  # graph_net layers (after the one leading graph_conv, as released)
    max_triples: int = 15  # local tokens per image (max_sample_per_img)
    cgip_steps: int = 100_000  # about 100 epochs of VG at batch 64 (released: 100 epochs)
    cgip_lr: float = 5e-4
    cgip_weight_decay: float = 0.2
    cgip_warmup: int = 10_000
    mask_threshold: float = 0.2  # an object's box is blacked out when rand > threshold (P = 0.8)
    mim_heads: int = 8
    mim_head_dim: int = 64
    mim_train_block: bool = False  # released: the MIM block is not in the optimizer
    image_encoder: str = "clip"  # CGIP's frozen image side: clip (ViT-B/32, full) | autoencoder (CPU tiers)
    clip_weights: str = ""  # as the clip text encoder's weights ("" = SG2I_CLIP_WEIGHTS / open_clip cache)
    # first stage
    first_stage: str = "vq_f8"  # vq_f8 (released, user file) | autoencoder (trained by the suite)
    first_stage_weights: str = ""  # the VQ-f8 checkpoint (vq-f8-model.ckpt)
    autoencoder_steps: int = 0
    ae_channels: int = 32
    ae_latent_channels: int = 4
    ae_downsample: int = 2  # number of 2x downsamplings (2: 32 px -> 8 x 8 latents)
    ae_lr: float = 1e-3
    scale_by_std: bool = False  # latents * 1/std(first LDM batch) (LDM's scale_by_std); VQ-f8: factor 1
    # latent diffusion (config_vg.yaml unet_config)
    model_channels: int = 256
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)  # downsampling rates
    num_head_channels: int = 32
    dropout: float = 0.0
    linear_start: float = 0.0015
    linear_end: float = 0.0195
    diffusion_steps: int = 1000
    learning_rate: float = 1.6e-5  # base_learning_rate 1e-6 x batch 16 (scale_lr)
    ema_decay: float = 0.9999
    sample_steps: int = 200  # DDIM (testset_ddim_sampler.py)
    ddim_eta: float = 1.0
    # SceneGenie guidance needs boxes, which SGDiff does not predict: as SceneGenie's released pipeline (boxes from
    # an SG2Im-CLIP layout predictor), they come from a suite checkpoint with predict_boxes (sg2im*, *_ddpm).
    guidance_boxes_from: str = ""


def ldm_betas(num_timesteps: int, start: float, end: float) -> np.ndarray:
    """LDM's ``"linear"`` schedule (``ldm/modules/diffusionmodules/util.py`` ``make_beta_schedule``):
    ``beta = linspace(sqrt(start), sqrt(end), T)^2``, float64 [T] (diffusers' ``scaled_linear``)."""
    return np.linspace(start**0.5, end**0.5, num_timesteps, dtype=np.float64) ** 2


def clip_loss(img: Tensor, graph: Tensor, logit_scale: Tensor) -> Tensor:
    """``(CE(s U V^T, I) + CE(s V U^T, I)) / 2`` for L2-normalised ``img``/``graph`` [B, D] and ``s = logit_scale``
    (``sgCLIP/contrastive_losses.py`` ``ClipLoss`` on one process)."""
    logits = logit_scale * img @ graph.T
    labels = torch.arange(img.shape[0], device=img.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def box_keep_mask(boxes: Tensor, obj_to_img: Tensor, selected: Tensor, n: int, h: int, w: int) -> Tensor:
    """``1 - union of the selected boxes`` per image, float [n, 1, h, w] (``utils.py`` ``boxes_to_mask``).

    A pixel centre ``((j + 0.5) / w, (i + 0.5) / h)`` is covered by box ``(x0, y0, x1, y1)`` when
    ``x0 <= x < x1`` and ``y0 <= y < y1`` (the release grid-samples a patch of ones into the box).
    """
    ys = (torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5) / h
    xs = (torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5) / w
    b = boxes[selected]
    inx = (xs[None] >= b[:, 0:1]) & (xs[None] < b[:, 2:3])  # [S, w]
    iny = (ys[None] >= b[:, 1:2]) & (ys[None] < b[:, 3:4])  # [S, h]
    cover = (iny[:, :, None] & inx[:, None, :]).to(boxes.dtype)  # [S, h, w]
    union = boxes.new_zeros(n, h, w).index_add(0, obj_to_img[selected], cover).clamp(max=1)
    return (1 - union)[:, None]


class Attention(nn.Module):
    """Multi-head attention ``softmax(q k^T / sqrt(d)) v`` with bias-free q/k/v (LDM ``CrossAttention``)."""

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: Tensor, context: Tensor, key_mask: Tensor | None = None) -> Tensor:
        b, n, _ = x.shape
        split = lambda t: t.view(b, t.shape[1], self.heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        mask = None if key_mask is None else key_mask[:, None, None, :]
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(h.transpose(1, 2).reshape(b, n, -1))


class MIMBlock(nn.Module):
    """LDM's ``BasicTransformerBlock`` (``sgCLIP/mm_transformer_module.py``): ``x += SA(LN x)``,
    ``x += CA(LN x, context)``, ``x += FF(LN x)`` with a GEGLU feed-forward (x4)."""

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.attn1 = Attention(dim, dim, heads, head_dim)
        self.attn2 = Attention(dim, context_dim, heads, head_dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff_in = nn.Linear(dim, dim * 4 * 2)
        self.ff_out = nn.Linear(dim * 4, dim)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn1(h, h)
        x = x + self.attn2(self.norm2(x), context, context_mask)
        a, gate = self.ff_in(self.norm3(x)).chunk(2, dim=-1)
        return x + self.ff_out(a * F.gelu(gate))


def mim_loss(block: MIMBlock, masked_feats: Tensor, gt_feats: Tensor, tokens: Tensor, token_mask: Tensor) -> Tensor:
    """``mean((T(phi_l(x_m), tokens) - phi_l(x))^2)`` over all tokens and channels (``nn.MSELoss()``)."""
    return F.mse_loss(block(masked_feats, tokens, token_mask), gt_feats)


def ldm_loss(eps_pred: Tensor, noise: Tensor) -> Tensor:
    """LDM's ``l_simple``: ``mean_b mean_{c,h,w} (eps - eps_theta)^2`` (``p_losses``, l2, logvar 0)."""
    return mean_flat((noise - eps_pred) ** 2).mean()


class GraphEncoder(nn.Module):
    """CGIP's graph tower (``ldm/modules/cgip/cgip.py`` ``CGIPModel``): -> local triple tokens and a global vector."""

    def __init__(self, cfg: SGDiffConfig, info: DatasetInfo, global_dim: int) -> None:
        super().__init__()
        e = cfg.embed_dim
        self.max_triples = cfg.max_triples
        self.obj_embeddings = nn.Embedding(len(info.vocab.object_idx_to_name) + 1, e)
        self.pred_embeddings = nn.Embedding(len(info.vocab.pred_idx_to_name), e)
        self.graph_conv = GraphTripleConv(e, output_dim=e, hidden_dim=cfg.gconv_width)
        self.graph_net = GraphTripleConvNet(e, num_layers=cfg.gconv_layers, hidden_dim=cfg.gconv_width)
        self.graph_projection = nn.Linear(2 * e, global_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, batch: SceneGraphBatch) -> tuple[Tensor, Tensor, Tensor]:
        """-> local tokens [B, max_triples, 3E] (zero-padded), their mask bool [B, max_triples] (slot 0 always
        True, so an image without triples still has a key), global [B, G]."""
        n = batch.num_images
        obj = self.obj_embeddings(batch.objs)
        s, p, o = batch.triples.unbind(1)
        pred = self.pred_embeddings(p)
        edges = torch.stack([s, o], dim=1)
        obj, pred = self.graph_conv(obj, pred, edges)
        obj, pred = self.graph_net(obj, pred, edges)

        def pool(x: Tensor, to_img: Tensor) -> Tensor:
            cnt = torch.bincount(to_img, minlength=n).clamp(min=1).to(x.dtype)[:, None]
            return x.new_zeros(n, x.shape[1]).index_add(0, to_img, x) / cnt

        glob = self.graph_projection(torch.cat([pool(obj, batch.obj_to_img), pool(pred, batch.triple_to_img)], 1))
        trip = torch.cat([obj[s], pred, obj[o]], dim=1)  # [T, 3E]
        # slot of each triple within its image (triples are grouped by image, in order)
        first = torch.zeros(n + 1, dtype=torch.long, device=trip.device)
        first[1:] = torch.bincount(batch.triple_to_img, minlength=n).cumsum(0)
        slot = torch.arange(trip.shape[0], device=trip.device) - first[batch.triple_to_img]
        keep = slot < self.max_triples
        local = trip.new_zeros(n, self.max_triples, trip.shape[1])
        local[batch.triple_to_img[keep], slot[keep]] = trip[keep]
        mask = torch.zeros(n, self.max_triples, dtype=torch.bool, device=trip.device)
        mask[batch.triple_to_img[keep], slot[keep]] = True
        mask[:, 0] = True
        return local, mask, glob


class SmallAutoencoder(nn.Module):
    """The CPU tiers' first stage: conv encoder ``x [-1, 1] -> z [B, C_z, H / 2^k, W / 2^k]`` and decoder.

    ``features(x)`` is the encoder's last hidden map [B, C, h, w] (CGIP's image side at the CPU tiers).
    """

    def __init__(self, cfg: SGDiffConfig) -> None:
        super().__init__()
        c, k = cfg.ae_channels, cfg.ae_downsample
        enc: list[nn.Module] = [nn.Conv2d(3, c, 3, padding=1)]
        for i in range(k):
            enc += [normalization(c * 2**i), nn.SiLU(), nn.Conv2d(c * 2**i, c * 2 ** (i + 1), 4, stride=2, padding=1)]
        self.width = c * 2**k
        enc += [normalization(self.width), nn.SiLU(), nn.Conv2d(self.width, self.width, 3, padding=1)]
        self.enc = nn.Sequential(*enc)
        self.to_z = nn.Sequential(normalization(self.width), nn.SiLU(), nn.Conv2d(self.width, cfg.ae_latent_channels, 1))
        dec: list[nn.Module] = [nn.Conv2d(cfg.ae_latent_channels, self.width, 3, padding=1)]
        for i in range(k, 0, -1):
            dec += [normalization(c * 2**i), nn.SiLU(), nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(c * 2**i, c * 2 ** (i - 1), 3, padding=1)]  # fmt: skip
        dec += [normalization(c), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1)]
        self.dec = nn.Sequential(*dec)

    def features(self, x: Tensor) -> Tensor:
        return self.enc(x)

    def encode(self, x: Tensor) -> Tensor:
        return self.to_z(self.enc(x))

    def decode(self, z: Tensor) -> Tensor:
        return self.dec(z)


class ClipImageSide:
    """Frozen open_clip visual tower: global ``encode_image`` and the last residual block's MLP output as local
    tokens (the released ``get_linear_feas_by_hook(...)[-1]``). Not an ``nn.Module`` attribute: its weights come
    from the user's file, not from the suite's checkpoint."""

    def __init__(self, weights: str, device: torch.device) -> None:
        import open_clip

        from benchmark.text_encoders.base import seeded_init
        from benchmark.text_encoders.clip import ClipEncoder, register_tiny_config

        enc = ClipEncoder(weights)  # resolves the spec and names the missing file (WeightsUnavailable)
        self.prov = enc.provenance()
        register_tiny_config()
        if enc.kind == "random":
            with seeded_init(0):
                model = open_clip.create_model(enc.model_name, pretrained=None, device="cpu")
        else:
            model = open_clip.create_model(enc.model_name, pretrained=str(enc.checkpoint), device="cpu",
                                           force_quick_gelu=enc.quick_gelu, require_pretrained=True)  # fmt: skip
        self.visual = model.visual.to(device).eval().requires_grad_(False)
        self.size = int(self.visual.image_size[0] if isinstance(self.visual.image_size, tuple) else self.visual.image_size)
        last = [m for m in self.visual.modules() if isinstance(m, nn.Linear)][-1]
        self._local: Tensor | None = None
        last.register_forward_hook(lambda _m, _i, out: setattr(self, "_local", out))
        self.batch_first = getattr(self.visual.transformer, "batch_first", True)
        self.global_dim = int(model.embed_dim) if hasattr(model, "embed_dim") else int(self.visual.output_dim)
        self.local_dim = int(last.out_features)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, 3, H, W] in [-1, 1] -> (local [B, N, C], global [B, D])."""
        x = F.interpolate((x + 1) / 2, size=(self.size, self.size), mode="bicubic", align_corners=False)
        x = (x - x.new_tensor(CLIP_MEAN)[:, None, None]) / x.new_tensor(CLIP_STD)[:, None, None]
        g = self.visual(x)
        loc = self._local
        assert loc is not None
        if not self.batch_first and loc.shape[0] != x.shape[0]:
            loc = loc.transpose(0, 1)
        return loc.float(), g.float()


# ---------------------------------------------------------------------------------------------------------
# Tiers. CPU tiers: the suite's autoencoder as first stage and CGIP's image side (see the module docstring).

_CPU = {"method.first_stage": "autoencoder", "method.image_encoder": "autoencoder", "method.scale_by_std": True}
_SMOKE = {
    **_CPU,
    "method.embed_dim": 16,
    "method.gconv_width": 32,
    "method.gconv_layers": 1,
    "method.cgip_steps": 2,
    "method.cgip_warmup": 1,
    "method.mim_heads": 2,
    "method.mim_head_dim": 8,
    "method.autoencoder_steps": 2,
    "method.ae_channels": 8,
    "method.model_channels": 16,
    "method.channel_mult": (1, 2),
    "method.num_res_blocks": 1,
    "method.attention_resolutions": (2,),
    "method.num_head_channels": 16,
    "method.learning_rate": 1e-3,
    "method.ema_decay": 0.99,
    "method.sample_steps": 4,
}
# quick: sized from benchmarks/test_bench_sgdiff.py (one train_step per stage at batch 32, 32 px shapes; 50-step
# DDIM for 64 images), OMP_NUM_THREADS=1 on the shared 2-core machine at load average ~3: autoencoder 0.072 s/step,
# CGIP 0.055 s/step, LDM 0.105 s/step (UNet 1.2M parameters on 8 x 8 x 4 latents), sampling 2.6 s per 64 images.
# 400 + 300 + 2,400 steps ~ 29 + 17 + 252 s = 5.0 minutes, and 512 samples ~ 21 s. (At load ~6 every figure was
# ~3x larger; with 2 threads on the busy machine the LDM step took 9 s: thread oversubscription, not the model.)
# Learning curves over 300 autoencoder steps: L1 0.12 -> 0.067; over 60 CGIP steps: contrastive 3.48 (ln 32) -> 3.08.
_QUICK = {
    **_CPU,
    "method.embed_dim": 64,
    "method.gconv_width": 128,
    "method.gconv_layers": 3,
    "method.cgip_steps": 300,
    "method.cgip_warmup": 30,
    "method.mim_heads": 4,
    "method.mim_head_dim": 16,
    "method.autoencoder_steps": 400,
    "method.ae_channels": 16,
    "method.model_channels": 32,
    "method.channel_mult": (1, 2, 2),
    "method.num_res_blocks": 1,
    "method.attention_resolutions": (2, 4),
    "method.num_head_channels": 32,
    "method.learning_rate": 1e-3,
    "method.ema_decay": 0.999,
    "method.sample_steps": 50,
    "train.steps": 2400,
}


@register("method", "sgdiff")
class SGDiff(Method):
    """SGDiff (Yang et al. 2022): CGIP graph encoder (masked + contrastive pre-training), then latent diffusion."""

    Config = SGDiffConfig
    tier_overrides = {"smoke": _SMOKE, "quick": _QUICK, "full": {}}

    def __init__(self, cfg: SGDiffConfig, info: DatasetInfo) -> None:
        super().__init__(cfg, info)
        if cfg.first_stage not in ("vq_f8", "autoencoder"):
            raise ValueError(f"method.first_stage must be vq_f8 or autoencoder, got {cfg.first_stage!r}")
        if cfg.image_encoder not in ("clip", "autoencoder"):
            raise ValueError(f"method.image_encoder must be clip or autoencoder, got {cfg.image_encoder!r}")
        if cfg.image_encoder == "autoencoder" and cfg.first_stage != "autoencoder":
            raise ValueError("method.image_encoder=autoencoder needs method.first_stage=autoencoder")
        if not 1 <= cfg.sample_steps <= cfg.diffusion_steps:
            raise ValueError(f"method.sample_steps must be in [1, {cfg.diffusion_steps}], got {cfg.sample_steps}")
        self.autoencoder = SmallAutoencoder(cfg) if cfg.first_stage == "autoencoder" else None
        # The user's frozen VQ-f8, kept in a dict so that nn.Module does not register it: it is not in the suite's
        # checkpoint (read from the user's file again when the checkpoint is loaded).
        self._external: dict[str, Any] = {}
        self._clip: ClipImageSide | None = None
        if cfg.image_encoder == "autoencoder":
            assert self.autoencoder is not None
            img_local = img_global = self.autoencoder.width
        else:
            from benchmark.text_encoders.clip import TINY_CONFIG, ClipEncoder

            random_tiny = cfg.clip_weights in ("random", "random:sg2i-tiny-clip")
            # ViT-B/32: 768-d tokens, 512-d global; the tests' tiny CLIP: 32-d tokens, 32-d global
            img_global = TINY_CONFIG["embed_dim"] if random_tiny else ClipEncoder.output_dim(cfg.clip_weights)
            img_local = TINY_CONFIG["vision_cfg"]["width"] if random_tiny else 768
        self.encoder = GraphEncoder(cfg, info, img_global)
        self.mim = MIMBlock(img_local, 3 * cfg.embed_dim, cfg.mim_heads, cfg.mim_head_dim)
        # LDM: tokens [W_l local ; g] of width G = the global vector's (context_dim 512 as released)
        z_ch = cfg.ae_latent_channels if self.autoencoder is not None else 4
        self.context_local = nn.Linear(3 * cfg.embed_dim, img_global)
        self.unet = UNetModel(
            in_channels=z_ch, model_channels=cfg.model_channels, out_channels=z_ch,
            num_res_blocks=cfg.num_res_blocks, attention_resolutions=tuple(cfg.attention_resolutions),
            dropout=cfg.dropout, channel_mult=tuple(cfg.channel_mult), num_head_channels=cfg.num_head_channels,
            use_scale_shift_norm=False, encoder_channels=img_global,
        )  # fmt: skip
        self.ema = copy.deepcopy(nn.ModuleDict({"unet": self.unet, "context_local": self.context_local}))
        self.ema.requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("latent_scale", torch.zeros(()))  # 0 = not set yet (scale_by_std), else the factor
        abar = np.cumprod(1.0 - ldm_betas(cfg.diffusion_steps, cfg.linear_start, cfg.linear_end))
        self.register_buffer("sqrt_abar", torch.from_numpy(np.sqrt(abar)), persistent=False)
        self.register_buffer("sqrt_1m_abar", torch.from_numpy(np.sqrt(1.0 - abar)), persistent=False)
        self.image_obj = info.vocab.object_name_to_idx.get(IMAGE_TOKEN, -1)
        self.stage: str | None = None
        self.scenegenie = SceneGenieGuidance.from_config(cfg)
        if self.scenegenie is not None and not cfg.guidance_boxes_from:
            raise ValueError(
                "method.guidance_boxes_from: SceneGenie guidance of sgdiff needs the boxes of a layout predictor "
                "(a suite checkpoint of sg2im*/*_ddpm, as SceneGenie's SG2Im-CLIP boxes); sgdiff predicts none"
            )
        if self.scenegenie is not None and not Path(cfg.guidance_boxes_from).is_file():
            raise ValueError(f"method.guidance_boxes_from: {cfg.guidance_boxes_from} is not a file")
        self._guide_boxes: Any = None

    # -- stages ----------------------------------------------------------------------------------------------

    def stage_plan(self, train_steps: int) -> list[tuple[str, int]]:
        """CPU tiers: ``autoencoder -> cgip -> ldm``; full: ``cgip -> ldm``. ``train.steps`` is the LDM's."""
        plan = [("cgip", self.cfg.cgip_steps), ("ldm", train_steps)]
        return ([("autoencoder", self.cfg.autoencoder_steps)] if self.autoencoder is not None else []) + plan

    def begin_stage(self, name: str, resumed: bool = False) -> None:
        cfg = self.cfg
        self.stage = name
        if name == "autoencoder":
            assert self.autoencoder is not None
            self.opt = torch.optim.Adam(self.autoencoder.parameters(), lr=cfg.ae_lr)
        elif name == "cgip":
            decay = [p for n, p in self.encoder.named_parameters() if p.ndim >= 2]
            no_decay = [p for n, p in self.encoder.named_parameters() if p.ndim < 2]  # gains, biases, logit_scale
            groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": cfg.cgip_weight_decay}]
            if cfg.mim_train_block:
                groups.append({"params": list(self.mim.parameters()), "weight_decay": 0.0})
            self.opt = torch.optim.AdamW(groups, lr=cfg.cgip_lr, betas=(0.9, 0.999), eps=1e-8)
        elif name == "ldm":
            params = list(self.unet.parameters()) + list(self.context_local.parameters())
            self.opt = torch.optim.AdamW(params, lr=cfg.learning_rate)
        else:
            raise ValueError(f"sgdiff: unknown stage {name!r}")

    def setup(self, train_set: SceneGraphDataset) -> None:
        # Fail before training when the user's weights are missing, not at the first step of their stage.
        if self.cfg.first_stage == "vq_f8":
            self._first_stage()
        if self.cfg.image_encoder == "clip" and self.cfg.cgip_steps > 0:
            self._clip_side()

    def _first_stage(self) -> Any:
        if self.autoencoder is not None:
            return self.autoencoder
        if "vq" not in self._external:
            from methods.vq_f8 import VQ_F8_URL, load_vq_f8

            if not self.cfg.first_stage_weights:
                from benchmark.text_encoders.base import WeightsUnavailable

                raise WeightsUnavailable(
                    f"sgdiff: method.first_stage_weights is empty; this tier runs in the latent space of CompVis "
                    f"latent-diffusion's VQ-f8 ({VQ_F8_URL}, unzip to model.ckpt): "
                    "--set method.first_stage_weights=/path/to/model.ckpt"
                )
            self._external["vq"] = load_vq_f8(
                self.cfg.first_stage_weights, self.sqrt_abar.device, field="method.first_stage_weights"
            )
        return self._external["vq"]

    def _clip_side(self) -> ClipImageSide:
        if self._clip is None:
            side = ClipImageSide(self.cfg.clip_weights, self.sqrt_abar.device)
            want = (self.mim.attn1.to_q.in_features, self.encoder.graph_projection.out_features)
            if (side.local_dim, side.global_dim) != want:
                raise ValueError(
                    f"method.clip_weights={self.cfg.clip_weights!r}: its visual tower gives {side.local_dim}-d tokens "
                    f"and a {side.global_dim}-d global vector; sgdiff is built for ViT-B/32's {want[0]} and {want[1]}"
                )
            self._clip = side
        return self._clip

    def guide_boxes(self) -> Any:
        """The box source of SceneGenie guidance (``method.guidance_boxes_from``), loaded once."""
        if self._guide_boxes is None:
            from benchmark.nn.layout_predictor import load_box_source

            self._guide_boxes = load_box_source(self.cfg.guidance_boxes_from)
            self._guide_boxes.check(self.info)
        return self._guide_boxes

    def guidance_inputs(self, batch: SceneGraphBatch, generator: list[torch.Generator]) -> GuidanceInputs:
        """SceneGenie's targets for sgdiff. Boxes from ``guidance_boxes_from``; an object's attention column is
        its first triple token (the local tokens are ``[s, p, o]`` triples, so that token carries the object's
        vector): objects in no kept triple are not guided by the box term."""
        from benchmark.nn.layout_predictor import usable_boxes

        boxes = usable_boxes(self.guide_boxes()(batch, [torch.Generator().manual_seed(g.initial_seed())
                                                        for g in generator]).to(batch.objs.device))  # fmt: skip
        n, cap = batch.num_images, self.cfg.max_triples
        first = torch.zeros(n + 1, dtype=torch.long, device=batch.objs.device)
        first[1:] = torch.bincount(batch.triple_to_img, minlength=n).cumsum(0)
        slot = torch.arange(batch.triples.shape[0], device=batch.objs.device) - first[batch.triple_to_img]
        token_index = torch.full_like(batch.objs, -1)
        for (s_, _, o_), k in zip(batch.triples.tolist(), slot.tolist()):
            for obj in (s_, o_):
                if k < cap and token_index[obj] < 0:
                    token_index[obj] = k
        include = (token_index >= 0) & (batch.objs != self.image_obj)
        obj_ph = self.info.phrases or self.info.vocab.object_idx_to_name
        pred_ph = self.info.pred_phrases or self.info.vocab.pred_idx_to_name
        return GuidanceInputs(
            boxes=boxes.float(), obj_to_img=batch.obj_to_img, token_index=token_index.clamp(min=0), include=include,
            captions=graph_captions(batch, obj_ph, pred_ph, self.image_obj),
            phrases=[obj_ph[i] for i in batch.objs.tolist()], generators=list(generator),
        )  # fmt: skip

    def weight_provenance(self) -> list[WeightProvenance]:
        out: list[WeightProvenance] = []
        if self.scenegenie is not None:
            out += [self.guide_boxes().provenance, *self.scenegenie.provenance()]
        if self.cfg.first_stage == "vq_f8":
            out.append(self._first_stage().provenance)
        if self.cfg.image_encoder == "clip":
            if self._clip is not None:
                out.append(self._clip.prov)
            else:
                out.append(WeightProvenance("cgip_image_side:clip", f"file:{self.cfg.clip_weights}",
                                            random_init=self.cfg.clip_weights.startswith("random")))  # fmt: skip
        return out

    # -- pieces ----------------------------------------------------------------------------------------------

    def image_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """CGIP's frozen image side: (local [B, N, C], global [B, D]) of images in [-1, 1]."""
        if self.cfg.image_encoder == "clip":
            return self._clip_side()(x)
        assert self.autoencoder is not None
        with torch.no_grad():
            f = self.autoencoder.features(x)
        return f.flatten(2).transpose(1, 2), f.mean(dim=(2, 3))

    def mim_selection(self, batch: SceneGraphBatch) -> Tensor:
        """Objects [O] bool whose box is blacked out: ``rand > threshold``, never ``__image__`` or unknown boxes."""
        sel = torch.rand(batch.objs.shape[0], device=batch.objs.device) > self.cfg.mask_threshold
        sel &= batch.objs != self.image_obj
        if batch.has_layout is not None:
            sel &= batch.has_layout.bool()
        return sel

    def condition(self, batch: SceneGraphBatch, modules: nn.ModuleDict | None = None) -> tuple[Tensor, Tensor]:
        """The LDM's tokens [B, max_triples + 1, G] and mask, from the frozen graph encoder."""
        with torch.no_grad():
            local, mask, glob = self.encoder(batch)
        ctx = (modules["context_local"] if modules is not None else self.context_local)(local)
        tokens = torch.cat([ctx, glob[:, None].to(ctx.dtype)], dim=1)
        return tokens, torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)

    def encode_latents(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            z = self._first_stage().encode(x).float()
        if self.cfg.scale_by_std:
            if float(self.latent_scale) == 0.0:  # LDM on_train_batch_start: 1 / std of the first batch's latents
                self.latent_scale.fill_(1.0 / float(z.flatten().std().clamp(min=1e-8)))
            return z * self.latent_scale
        return z

    def decode_latents(self, z: Tensor) -> Tensor:
        scale = float(self.latent_scale) if self.cfg.scale_by_std and float(self.latent_scale) > 0 else 1.0
        return self._first_stage().decode(z / scale).float()

    def cgip_lr(self, k: int) -> float:
        """``training/scheduler.py`` ``cosine_lr``: linear warm-up over ``warmup`` steps, then cosine to 0."""
        cfg, w = self.cfg, self.cfg.cgip_warmup
        if k < w:
            return cfg.cgip_lr * (k + 1) / w
        e, n = k - w, max(1, cfg.cgip_steps - w)
        return 0.5 * (1 + math.cos(math.pi * e / n)) * cfg.cgip_lr

    # -- training --------------------------------------------------------------------------------------------

    def train_step(self, batch: SceneGraphBatch, step: int) -> dict[str, float]:
        if batch.images is None:
            raise ValueError("sgdiff.train_step needs images")
        if self.stage is None:
            self.begin_stage(next(n for n, k in self.stage_plan(1) if k > 0))
        x = batch.images * 2 - 1
        self.opt.zero_grad(set_to_none=True)
        if self.stage == "autoencoder":
            assert self.autoencoder is not None
            rec = F.l1_loss(self.autoencoder.decode(self.autoencoder.encode(x)), x)
            accel.backward(rec)
            accel.step(self.opt)
            return {"loss": float(rec.detach()), "ae_l1": float(rec.detach())}
        if self.stage == "cgip":
            k = step - (self.cfg.autoencoder_steps if self.autoencoder is not None else 0)
            for g in self.opt.param_groups:
                g["lr"] = self.cgip_lr(k)
            local, mask, glob = self.encoder(batch)
            img_local, img_global = self.image_features(x)
            keep = box_keep_mask(batch.boxes, batch.obj_to_img, self.mim_selection(batch), x.shape[0], *x.shape[2:])
            masked_local, _ = self.image_features(x * keep)
            lc = clip_loss(F.normalize(img_global, dim=-1), F.normalize(glob, dim=-1), self.encoder.logit_scale.exp())
            lm = mim_loss(self.mim, masked_local, img_local, local, mask)
            loss = lc + lm
            accel.backward(loss)
            accel.step(self.opt)
            with torch.no_grad():
                self.encoder.logit_scale.clamp_(0, math.log(100))
            return {"loss": float(loss.detach()), "contrastive": float(lc.detach()), "mim": float(lm.detach())}
        # ldm
        z = self.encode_latents(x)
        t = torch.randint(0, self.cfg.diffusion_steps, (z.shape[0],), device=z.device)
        noise = torch.randn(z.shape, device=z.device, dtype=z.dtype)
        z_t = self.sqrt_abar[t].float().view(-1, 1, 1, 1) * z + self.sqrt_1m_abar[t].float().view(-1, 1, 1, 1) * noise
        tokens, tmask = self.condition(batch)
        loss = ldm_loss(self.unet(z_t, t.float(), None, tokens, tmask).float(), noise)
        accel.backward(loss)
        accel.step(self.opt)
        ema_update(self.ema, nn.ModuleDict({"unet": self.unet, "context_local": self.context_local}),
                   ema_decay(int(self.ema_updates), self.cfg.ema_decay))  # fmt: skip
        self.ema_updates += 1
        return {"loss": float(loss.detach())}

    # -- sampling --------------------------------------------------------------------------------------------

    def scheduler(self) -> Any:
        """diffusers' DDIM with LDM's DDIM timesteps (``make_ddim_timesteps`` uniform, +1) and schedule."""
        from diffusers import DDIMScheduler

        cfg = self.cfg
        sched = DDIMScheduler(
            num_train_timesteps=cfg.diffusion_steps, beta_start=cfg.linear_start, beta_end=cfg.linear_end,
            beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
            timestep_spacing="leading", prediction_type="epsilon",
        )  # fmt: skip
        sched.set_timesteps(cfg.sample_steps)
        return sched

    @torch.no_grad()
    def sample(self, batch: SceneGraphBatch, generator: list[torch.Generator], layout: str = "pred") -> Tensor:
        """DDIM (eta = ``ddim_eta``) from ``z_T ~ N(0, I)`` drawn per image, decoded by the first stage.
        ``layout`` is ignored: SGDiff conditions on the graph alone."""
        from diffusers.utils.torch_utils import randn_tensor

        n = batch.num_images
        if len(generator) != n:
            raise ValueError(f"sample: {len(generator)} generators for {n} graphs")
        self.ema.eval()
        self.encoder.eval()
        tokens, tmask = self.condition(batch, self.ema)
        if self.autoencoder is not None:
            shape = (self.cfg.ae_latent_channels, *[self.info.image_size // 2**self.cfg.ae_downsample] * 2)
        else:
            shape = tuple(self._first_stage().latent_shape(self.info.image_size))
        dev = batch.objs.device
        z = randn_tensor((n, *shape), generator=generator, device=dev, dtype=torch.float32)
        sched = self.scheduler()
        unet = self.ema["unet"]
        model_fn = lambda z_t, t_: unet(z_t, t_.float(), None, tokens, tmask).float()  # noqa: E731
        if self.scenegenie is not None:
            model_fn = self.scenegenie.wrap(
                model_fn, self.sqrt_abar.double() ** 2, self.guidance_inputs(batch, generator),
                record_attention=lambda: record_cross_attention(unet), channels=shape[0],
                decode=self.decode_latents,
            )  # fmt: skip
        for t in sched.timesteps:
            tt = torch.full((n,), int(t), device=dev, dtype=torch.long)
            eps = model_fn(z, tt)
            z = sched.step(eps, t, z, eta=self.cfg.ddim_eta, generator=generator).prev_sample
        return ((self.decode_latents(z) + 1) / 2).clamp(0, 1).float()
