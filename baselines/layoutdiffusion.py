"""LayoutDiffusion (Zheng, Zhou, Zeng, Ye, Zhang, Feng; CVPR 2023): layout-to-image pixel diffusion.

Code: ZGCTroy/LayoutDiffusion (``layout_diffusion/layout_encoder.py``, ``layout_diffusion/layout_diffusion_unet.py``,
``layout_diffusion/train_util.py``, ``scripts/classifier-free_sample_for_layout.py``,
``configs/COCO-stuff_128x128/LayoutDiffusion_large.yaml`` and ``configs/COCO-stuff_256x256/...``).
The released model is an ADM UNet (the suite's ``methods/unet.py``) with two additions, written here.

**Layout.** Each image is a sequence of ``L`` objects ``(c_i, b_i)``, class and box ``(x0, y0, x1, y1)`` in [0, 1]:
slot 0 is the whole image (``__image__``, box ``[0, 0, 1, 1]``), then the image's objects, then padding
objects (class ``__null__`` = an extra last class row, box ``0``) up to the released ``layout_length`` (COCO:
8 objects + 2). The released encoder does not mask the padding objects (``use_key_padding_mask: False``), so
they are tokens like any other; here too.

**Layout Fusion Module** (``LayoutTransformerEncoder``): ``e_i = E_cls[c_i] + W_box b_i + bias`` ([B, L, D]),
a pre-LayerNorm transformer (``layers`` x {self-attention, 4x GELU MLP}) over the ``L`` tokens, a final
LayerNorm -> ``o_i``; the global vector ``W_g o_0`` (the image token) is added to the timestep embedding
(here the UNet's ``cond_embed``, the same linear map).

**Object-aware cross-attention** (``ObjectAwareCrossAttention``), at each attention resolution r (feature map
``h [B, C, r, r]``, ``N = r^2`` patches, per head of width d): the patch ``p`` has its own box
``B_p = (j/r, i/r, (j+1)/r, (i+1)/r)`` and both patches and objects get a *position* embedding through the
same box embedding ``W_box`` of the fusion module::

    q, k, v   = W_qkv GN(h)                                  (image content, [B, 3C, N])
    P_img     = GN(W_pos W_box B_p),  P_obj = GN'(W_pos W_box b_i)          ([B, C, N], [B, C, L])
    k_o, v_o  = W_kv (o_i + GN''(E_cls[c_i])) / 2                           (object content, [B, 2C, L])
    Q = [q; P_img],  K = [[k; P_img], [k_o; P_obj]],  V = [v, v_o]          (per head: 2d-dim q/k, d-dim v)
    h' = h + W_out softmax(Q^T K / sqrt(2d)) V^T                            (W_out zero-initialised)

so a patch attends to the other patches and to the objects, with a score that adds content similarity
``q.k`` and box similarity ``P_img.P_obj`` (a patch attends most to objects whose box covers it).

**Training and sampling.** eps prediction with learned-range variance and the hybrid loss (``RESCALED_MSE`` +
``LEARNED_RANGE``), T = 1000, EMA 0.9999, AdamW (lr 2e-5 at 128 px, 1e-5 at 256 px). Classifier-free guidance
as ``train_util.py``: with probability ``cond_drop_prob`` (0.2) *the whole batch* gets the null layout (only
the image token; every other slot the padding object); sampling uses
``eps = eps_c + s (eps_c - eps_null)`` (the released ``classifier_free_scale`` s = 1.0) with the conditional
variance, and DPM-Solver with 25 steps (``bash/quick_sample.bash``).

**Tiers.** ``full`` = the released COCO-Stuff 128 px model (global batch 64); ``--set image_size=256`` gives
the released 256 px widths, dropout and learning rate (its global batch was 32: ``--set train.batch_size=32``).
Parameters with COCO-Stuff's 185 layout classes: 435,286,278 at 128 px and 568,586,758 at 256 px, equal to
the released ``LayoutDiffusionUNetModel`` built from the two yaml files (5,050,880 of them in the fusion
module and its projection). ``quick`` (0.91M + a 0.28M box predictor) and ``smoke`` are CPU-sized.

**Predicted layout.** The published protocol draws the ground-truth boxes (``eval.layout="gt"``, the default in
every tier). ``--set eval.layout=pred`` draws boxes from the graph: a ``GraphBoxPredictor`` (sg2im's GCN box
head, ``benchmark/nn/layout_predictor.py``) trained beside the diffusion model with its own Adam and sg2im's box
MSE, or the box head of a trained ``sg2im*`` / ``*_ddpm`` checkpoint (``method.layout_from=PATH``). Objects
without a ground-truth box (4D-OR ``has_layout`` False) take the predicted box in gt mode too (SG2Im's
``use_gt`` rule, :func:`layout_boxes`).

SceneGenie guidance (``--set method.guidance=scenegenie``, :mod:`methods.guidance`) works here as on the
``*_ddpm`` methods: its box term reads the object keys' share of each object-aware attention map (recorded by
:class:`ObjectAwareCrossAttention`), its CLIP term the decoded ``x0``; the released LayoutDiffusion has no such
guidance (an addition for the issue's guidance ablation, off by default).

Deviations from the released code, each with its reason:

- noise schedule: ``full`` uses the released linear schedule (``noise_schedule: linear``, ADM's
  ``linspace(1e-4, 0.02)`` scaled by 1000 / T); ``smoke``/``quick`` keep the suite's cosine schedule, as the
  ``*_ddpm`` CPU tiers, so that the quick-tier comparison differs only in the conditioning;
- sampler: diffusers' multistep DPM-Solver++ (order 2) with 25 steps, not the released DPM-Solver v1 "fast"
  (singlestep, order 3) of ``repositories/dpm_solver``: it is the suite's one DPM-Solver;
- images with more objects than ``layout_length - 1`` get longer sequences (the released data loader drops
  them), and the extra padding slots of a longer batch are masked out of every attention and out of the
  group-norm statistics over the tokens, so that an image's sample never depends on the other images of its
  batch;
- the fusion transformer is ``torch.nn.TransformerEncoder`` (pre-LN, GELU, 4x MLP, no dropout): the same
  function family and parameter count as the released CLIP-style ``Transformer`` (its per-head q/k/v rows are
  interleaved differently, a permutation of the same weights);
- ``smoke``/``quick`` only: ``eps_skip`` (EDM-style preconditioning of the eps output) as the suite's
  ``*_ddpm`` quick tier, whose docstring measures why (colour casts at high noise on a CPU budget); the
  comparison with those methods then differs in the conditioning, not in this trick. ``full`` is ADM's output;
- fp32 with the trainer's autocast instead of the released fp16 model copies; class vocabulary = the dataset's
  (``__image__`` at its own index, ``__null__`` one extra row) instead of COCO's 185 fixed ids.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark import accel
from benchmark.batch import SceneGraphBatch
from benchmark.interfaces import DatasetInfo, Method, SceneGraphDataset, WeightProvenance
from benchmark.nn.layout import pack_objects
from benchmark.nn.layout_predictor import (
    BoxSource,
    GraphBoxPredictor,
    layout_boxes,
    load_box_source,
    usable_boxes,
)
from benchmark.registry import register
from benchmark.scene_graph import IMAGE_TOKEN
from methods.diffusion import SAMPLERS, GaussianDiffusion, ema_decay, ema_update, named_betas, sample_loop
from methods.guidance import GuidanceConfig, GuidanceInputs, SceneGenieGuidance, graph_captions
from methods.sg_diffusion import eps_skip_output
from methods.unet import AttentionBlock, UNetModel, normalization, record_cross_attention

# Released per-size settings (configs/COCO-stuff_{128x128,256x256}/LayoutDiffusion_large.yaml).
RELEASED = {
    128: {"channel_mult": (1, 1, 2, 3, 4), "dropout": 0.1, "learning_rate": 2e-5},
    256: {"channel_mult": (1, 1, 2, 2, 4, 4), "dropout": 0.0, "learning_rate": 1e-5},
}


@dataclass(frozen=True)
class LayoutDiffusionConfig(GuidanceConfig):
    """Defaults are the released LayoutDiffusion-large (COCO-Stuff 128 px; 256 px via ``image_size=256``);
    SceneGenie's sampling-time guidance fields (``guidance*``, off by default) from ``GuidanceConfig``."""

    # Layout Fusion Module (layout_encoder.py LayoutTransformerEncoder)
    layout_length: int = 10  # tokens per image: image + 8 objects + 1 (coco.py: max_objects_per_image + 2)
    encoder_dim: int = 256  # hidden_dim = UNet encoder_channels
    encoder_layers: int = 6
    encoder_heads: int = 8
    # ADM UNet with object-aware cross-attention
    model_channels: int = 256
    channel_mult: tuple[int, ...] = ()  # () = released per size: 128 (1,1,2,3,4), 256 (1,1,2,2,4,4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # feature-map sizes in pixels (attention_ds 16,8,4 @128)
    num_head_channels: int = 64
    dropout: float | None = None  # None = released per size: 0.1 at 128 px, 0.0 at 256 px
    resblock_updown: bool = True
    activation_checkpointing: bool | None = None  # None: on at >= 128 px
    eps_skip: bool = False  # CPU tiers only: EDM-style skip around the eps output (methods/sg_diffusion.py); off = ADM
    # diffusion, guidance, sampling
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"  # released: linear (methods/diffusion.py named_betas); CPU tiers: cosine
    cond_drop_prob: float = 0.2  # classifier_free_dropout (whole batch)
    guidance_scale: float = 1.0  # released classifier_free_scale s: eps_c + s (eps_c - eps_null); 0 = none
    sampler: str = "dpmsolver++"
    sample_steps: int = 25
    ddim_eta: float = 0.0
    # optimisation (train: lr, ema_rate, weight_decay)
    learning_rate: float | None = None  # None = released per size: 2e-5 at 128 px, 1e-5 at 256 px
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    grad_clip: float = 0.0
    # predicted layout: a trained sg2im*/ *_ddpm checkpoint, or "" = GraphBoxPredictor trained here
    layout_from: str = ""
    box_embed_dim: int = 128  # GraphBoxPredictor widths (sg2im train.py defaults)
    box_gconv_dim: int = 128
    box_hidden_dim: int = 512
    box_layers: int = 5
    box_learning_rate: float = 1e-4  # sg2im's Adam learning rate


def _released(size: int, key: str):  # noqa: ANN202 - a table lookup
    if size in RELEASED:
        return RELEASED[size][key]
    if key == "channel_mult":
        raise ValueError(f"method.channel_mult: no released setting for {size} px; set it")
    return RELEASED[128][key]


@dataclass
class LayoutTokens:
    """The fused layout of B images, handed to every object-aware attention block.

    content [B, L, D] (fusion-module output), cls [B, L, D] (class embeddings), pos [B, L, D] (box embeddings),
    mask bool [B, L] (True = token attended to), box_embed: the fusion module's box embedding (for the patches).
    """

    content: Tensor
    cls: Tensor
    pos: Tensor
    mask: Tensor
    box_embed: nn.Linear

    def patch_pos(self, h: int, w: int) -> Tensor:
        """``W_box B_p`` for the ``h x w`` patches in row-major order: [h w, D]."""
        dev = self.content.device
        ys = torch.arange(h, device=dev, dtype=torch.float32)
        xs = torch.arange(w, device=dev, dtype=torch.float32)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        boxes = torch.stack([xx / w, yy / h, (xx + 1) / w, (yy + 1) / h], dim=-1).reshape(-1, 4)
        return self.box_embed(boxes.to(self.content.dtype))


class LayoutFusion(nn.Module):
    """Layout Fusion Module: class + box embeddings -> pre-LN transformer -> LayerNorm (``layout_encoder.py``)."""

    def __init__(self, num_classes: int, dim: int, layers: int, heads: int) -> None:
        super().__init__()
        self.class_embed = nn.Embedding(num_classes, dim)
        self.box_embed = nn.Linear(4, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.final_ln = nn.LayerNorm(dim)

    def forward(self, classes: Tensor, boxes: Tensor, mask: Tensor) -> LayoutTokens:
        """classes int64 [B, L], boxes [B, L, 4], mask bool [B, L] (True = attended) -> :class:`LayoutTokens`."""
        cls = self.class_embed(classes)
        pos = self.box_embed(boxes.to(cls.dtype))
        pad = None if bool(mask.all()) else ~mask
        out = self.final_ln(self.transformer(cls + pos, src_key_padding_mask=pad))
        return LayoutTokens(out, cls, pos, mask, self.box_embed)


def masked_group_norm(x: Tensor, mask: Tensor, gn: nn.GroupNorm) -> Tensor:
    """``gn(x)`` for x [B, C, L] with the statistics over the tokens where ``mask [B, L]`` is True only.

    Equal to ``gn(x)`` when every token is attended; the padding slots of a longer batch then leave an
    image's normalised tokens unchanged (``nn.GroupNorm`` has no mask).
    """
    if bool(mask.all()):
        return gn(x)
    b, c, ln = x.shape
    g = gn.num_groups
    xg = x.reshape(b, g, c // g, ln)
    m = mask[:, None, None, :].to(x.dtype)
    cnt = m.sum(dim=(2, 3), keepdim=True) * (c // g)
    mean = (xg * m).sum(dim=(2, 3), keepdim=True) / cnt
    var = ((xg - mean) ** 2 * m).sum(dim=(2, 3), keepdim=True) / cnt
    y = ((xg - mean) / torch.sqrt(var + gn.eps)).reshape(b, c, ln)
    return y * gn.weight[:, None] + gn.bias[:, None]


class ObjectAwareCrossAttention(AttentionBlock):
    """Patches attend to patches and objects, with box position embeddings on queries and keys (module doc).

    Subclasses the suite's ``AttentionBlock`` (same ``norm``, ``qkv`` and zero-initialised ``proj_out``), so the
    UNet's ``TimestepEmbedSequential`` hands it the :class:`LayoutTokens`. Inside
    :func:`methods.unet.record_cross_attention` it appends the probabilities of the object keys,
    ``[B, heads, H, W, L]`` (SceneGenie's box term reads them; the output is unchanged).
    """

    attends_to_tokens = True

    def __init__(self, channels: int, num_heads: int, encoder_channels: int) -> None:
        super().__init__(channels, num_heads=num_heads)
        self.content_kv = nn.Conv1d(encoder_channels, 2 * channels, 1)  # layout_content_embedding_projector
        self.pos_proj = nn.Conv1d(encoder_channels, channels, 1)  # layout_position_embedding_projector
        self.norm_cls = normalization(encoder_channels)  # norm_for_obj_class_embedding
        self.norm_obj_pos = normalization(channels)  # norm_for_layout_positional_embedding
        self.norm_patch_pos = normalization(channels)  # norm_for_image_patch_positional_embedding

    def forward(self, x: Tensor, tokens: LayoutTokens | None = None, token_mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if tokens is None:
            raise ValueError("ObjectAwareCrossAttention needs the layout tokens")
        b, c, hh, ww = x.shape
        heads, d = self.num_heads, c // self.num_heads
        n = hh * ww
        qkv = self.qkv(self.norm(x).reshape(b, c, n))  # [B, 3C, N]
        q, k, v = qkv.reshape(b, 3, heads, d, n).unbind(1)  # [B, heads, d, N]
        patch = self.pos_proj(tokens.patch_pos(hh, ww).to(x.dtype).t()[None])  # [1, C, N]
        patch = self.norm_patch_pos(patch.expand(b, -1, -1)).reshape(b, heads, d, n)
        cls = masked_group_norm(tokens.cls.transpose(1, 2).to(x.dtype), tokens.mask, self.norm_cls)  # [B, D, L]
        kv_o = self.content_kv((tokens.content.transpose(1, 2).to(x.dtype) + cls) / 2)  # [B, 2C, L]
        ln = kv_o.shape[-1]
        k_o, v_o = kv_o.reshape(b, 2, heads, d, ln).unbind(1)
        p_o = self.pos_proj(tokens.pos.transpose(1, 2).to(x.dtype))
        p_o = masked_group_norm(p_o, tokens.mask, self.norm_obj_pos).reshape(b, heads, d, ln)
        query = torch.cat([q, patch], dim=2).transpose(2, 3)  # [B, heads, N, 2d]
        key = torch.cat([torch.cat([k, patch], dim=2), torch.cat([k_o, p_o], dim=2)], dim=3).transpose(2, 3)
        value = torch.cat([v, v_o], dim=3).transpose(2, 3)  # [B, heads, N + L, d]
        mask = None
        if not bool(tokens.mask.all()):
            pad = torch.zeros(b, ln, dtype=query.dtype, device=x.device)
            pad = pad.masked_fill(~tokens.mask, torch.finfo(query.dtype).min)
            mask = torch.cat([pad.new_zeros(b, n), pad], dim=1)[:, None, None, :]
        if self.record is not None:
            logits = query @ key.transpose(-1, -2) * (2 * d) ** -0.5  # SDPA's scale: 1 / sqrt(query width)
            if mask is not None:
                logits = logits + mask
            self.record.append(logits.softmax(-1)[..., n:].reshape(b, heads, hh, ww, ln))
        h = F.scaled_dot_product_attention(query.contiguous(), key.contiguous(), value.contiguous(), attn_mask=mask)
        h = h.transpose(2, 3).reshape(b, c, n)
        return x + self.proj_out(h).reshape(b, c, hh, ww)


class LayoutDiffusionUNet(nn.Module):
    """Layout Fusion Module + ADM UNet whose attention blocks are object-aware: ``(x_t, t, layout) -> [B, 6, H, W]``."""

    def __init__(self, cfg: LayoutDiffusionConfig, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.fusion = LayoutFusion(num_classes, cfg.encoder_dim, cfg.encoder_layers, cfg.encoder_heads)
        mult = tuple(cfg.channel_mult) or _released(image_size, "channel_mult")
        dropout = _released(image_size, "dropout") if cfg.dropout is None else cfg.dropout
        attn = tuple(image_size // r for r in cfg.attention_resolutions if image_size % r == 0)
        ckpt = image_size >= 128 if cfg.activation_checkpointing is None else cfg.activation_checkpointing
        self.time_scale = 1000.0 / cfg.diffusion_steps  # the model sees t in [0, 1000)
        self.unet = UNetModel(
            in_channels=3, model_channels=cfg.model_channels, out_channels=6, num_res_blocks=cfg.num_res_blocks,
            attention_resolutions=attn, dropout=dropout, channel_mult=mult, num_head_channels=cfg.num_head_channels,
            use_scale_shift_norm=True, resblock_updown=cfg.resblock_updown, cond_dim=cfg.encoder_dim,
            use_checkpoint=ckpt,
        )  # fmt: skip
        # Every plain attention block becomes object-aware (same width and heads); cond_embed = transformer_proj.
        for seq in [*self.unet.input_blocks, self.unet.middle_block, *self.unet.output_blocks]:
            for i, layer in enumerate(seq):
                if isinstance(layer, AttentionBlock):
                    seq[i] = ObjectAwareCrossAttention(layer.qkv.in_channels, layer.num_heads, cfg.encoder_dim)

        self.eps_skip = cfg.eps_skip
        abar = torch.from_numpy(np.cumprod(1.0 - named_betas(cfg.noise_schedule, cfg.diffusion_steps))).float()
        self.register_buffer("alphas_cumprod", abar, persistent=False)

    def forward(self, x_t: Tensor, t: Tensor, tokens: LayoutTokens) -> Tensor:
        """x_t [B, 3, H, W], t [B] int64 -> [B, 6, H, W] (eps, v). With ``eps_skip`` the eps channels are
        ``c_skip x_t + c_out F`` as ``SGDenoiser.forward`` (the linear MMSE estimate of eps plus a learned rest)."""
        out = self.unet(x_t, t.float() * self.time_scale, tokens.content[:, 0], tokens, tokens.mask)
        return eps_skip_output(out, x_t, self.alphas_cumprod[t]) if self.eps_skip else out


@register("method", "layoutdiffusion")
class LayoutDiffusion(Method):
    """LayoutDiffusion (Zheng et al., CVPR 2023): ADM diffusion with a layout transformer and object-aware attention."""

    Config = LayoutDiffusionConfig
    tier_overrides = {
        # smoke: seconds on the dataset fixtures.
        "smoke": {
            "eval.layout": "gt",
            "method.layout_length": 4, "method.encoder_dim": 32, "method.encoder_layers": 1, "method.encoder_heads": 2,
            "method.model_channels": 16, "method.channel_mult": (1, 2), "method.num_res_blocks": 1,
            "method.attention_resolutions": (16,), "method.num_head_channels": 16, "method.dropout": 0.0,
            "method.resblock_updown": False, "method.sample_steps": 4, "method.learning_rate": 1e-3,
            "method.ema_decay": 0.99, "method.eps_skip": True, "method.noise_schedule": "cosine", "method.box_embed_dim": 16, "method.box_gconv_dim": 16,
            "method.box_hidden_dim": 32, "method.box_layers": 2, "method.box_learning_rate": 1e-3,
        },
        # quick: 32 px shapes on 2 CPU cores, ~4-5 min of training + ~4 min sampling 512 images. Measured on the
        # shared machine (load ~10 on 2 cores, 1 thread): 2.15 s per step of 32 images (0.91M-parameter UNet +
        # fusion module, 0.28M box predictor), 5.4 s per DPM-Solver step of 64 images with CFG; learned_ddpm's
        # quick step took 2.0 s there against its ~0.4 s alone, so alone ~0.43 s x 700 steps = 5.0 min, and
        # sampling 0.43 s x 3 x 25 steps x 8 batches = 3.6 min. Layout length 7 = 5 objects + 2, as released.
        "quick": {
            "eval.layout": "gt", "train.steps": 700,
            "method.layout_length": 7, "method.encoder_dim": 64, "method.encoder_layers": 2, "method.encoder_heads": 4,
            "method.model_channels": 16, "method.channel_mult": (1, 2, 4), "method.num_res_blocks": 1,
            "method.attention_resolutions": (16, 8), "method.num_head_channels": 16, "method.dropout": 0.0,
            "method.resblock_updown": False, "method.learning_rate": 1e-3, "method.ema_decay": 0.999,
            "method.grad_clip": 1.0, "method.eps_skip": True, "method.noise_schedule": "cosine", "method.box_embed_dim": 64, "method.box_gconv_dim": 64,
            "method.box_hidden_dim": 128, "method.box_layers": 3, "method.box_learning_rate": 1e-3,
        },
        # full: the released 128 px configuration (global batch 8 GPUs x 8); 256 px with --set image_size=256.
        "full": {"eval.layout": "gt", "image_size": 128, "train.batch_size": 64},
    }  # fmt: skip
    compile_targets = ("net.unet",)

    def __init__(self, cfg: LayoutDiffusionConfig, info: DatasetInfo) -> None:
        super().__init__(cfg, info)
        if cfg.sampler not in SAMPLERS:
            raise ValueError(f"method.sampler: unknown sampler {cfg.sampler!r}; valid: {', '.join(SAMPLERS)}")
        if not 0.0 <= cfg.cond_drop_prob < 1.0:
            raise ValueError(f"method.cond_drop_prob must be in [0, 1), got {cfg.cond_drop_prob}")
        if cfg.layout_length < 2:
            raise ValueError(f"method.layout_length must be >= 2 (image token + objects), got {cfg.layout_length}")
        names = info.vocab.object_idx_to_name
        self.image_obj = names.index(IMAGE_TOKEN) if IMAGE_TOKEN in names else -1
        self.null_class = len(names)  # __null__: the padding / dropped object, one extra class row
        self.net = LayoutDiffusionUNet(cfg, len(names) + 1, info.image_size)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.diffusion = GaussianDiffusion(cfg.diffusion_steps, cfg.noise_schedule)
        lr = _released(info.image_size, "learning_rate") if cfg.learning_rate is None else cfg.learning_rate
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        # SceneGenie sampling-time guidance (methods/guidance.py); resolves its CLIP weights now.
        self.scenegenie = SceneGenieGuidance.from_config(cfg)
        self.box_net: GraphBoxPredictor | None = None
        self._box_source: BoxSource | None = None
        if not cfg.layout_from:
            obj_phrases = info.phrases or tuple(names)
            pred_phrases = info.pred_phrases or tuple(info.vocab.pred_idx_to_name)
            # GraphBoxPredictor finds __image__ by name: keep the vocabulary's name at that index.
            obj_phrases = tuple(IMAGE_TOKEN if i == self.image_obj else p for i, p in enumerate(obj_phrases))
            self.box_net = GraphBoxPredictor(
                obj_phrases, pred_phrases, cfg.box_embed_dim, cfg.box_gconv_dim, cfg.box_hidden_dim, cfg.box_layers
            )
            self.box_opt = torch.optim.Adam(self.box_net.parameters(), lr=cfg.box_learning_rate)

    # -- layout -------------------------------------------------------------------------------------------

    def box_source(self) -> BoxSource:
        """The checkpoint named by ``method.layout_from``, loaded on first use and checked against this dataset."""
        if self._box_source is None:
            path = Path(self.cfg.layout_from)
            if not path.is_file():
                raise FileNotFoundError(f"method.layout_from: {path} is not a file")
            src = load_box_source(path, self.ema_updates.device)
            src.check(self.info)
            self._box_source = src
        return self._box_source

    @torch.no_grad()
    def predict_boxes(self, batch: SceneGraphBatch, generator: list[torch.Generator]) -> Tensor:
        """Boxes [O, 4] from the graph (the trained ``GraphBoxPredictor`` or ``layout_from``), drawable, the
        ``__image__`` node ``[0, 0, 1, 1]``."""
        if self.box_net is None:
            boxes = self.box_source()(batch, generator).to(batch.boxes.device)
        else:
            boxes = self.box_net.predict(batch)
        boxes = usable_boxes(boxes.float())
        img = (batch.objs == self.image_obj)[:, None]
        return torch.where(img, boxes.new_tensor([0.0, 0.0, 1.0, 1.0]), boxes)

    def layout_sequence(
        self, batch: SceneGraphBatch, boxes: Tensor, drop: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-image token sequences: classes int64 [B, L], boxes [B, L, 4], mask bool [B, L].

        Slot 0 = the image (``__image__``, ``[0, 0, 1, 1]``), then the image's other objects in batch order,
        then ``__null__`` objects with box 0 up to ``max(layout_length, objects + 1)`` (attended to, as released);
        slots beyond that (only in batches with a longer image) are masked. ``drop [B]``: images given the
        null layout (classifier-free guidance).
        """
        n = batch.num_images
        dev = batch.objs.device
        keep = batch.objs != self.image_obj
        if drop is not None:
            keep &= ~drop[batch.obj_to_img]
        objs, bx, o2i = batch.objs[keep], boxes[keep].float(), batch.obj_to_img[keep]
        _, slot, _, _ = pack_objects(o2i, n)
        counts = torch.bincount(o2i, minlength=n)
        length = max(self.cfg.layout_length, int(counts.max()) + 1 if counts.numel() else 1)
        classes = torch.full((n, length), self.null_class, dtype=torch.long, device=dev)
        seq_boxes = torch.zeros(n, length, 4, device=dev)
        classes[:, 0] = self.image_obj if self.image_obj >= 0 else self.null_class
        seq_boxes[:, 0] = seq_boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
        classes[o2i, slot + 1] = objs
        seq_boxes[o2i, slot + 1] = bx
        used = torch.clamp(counts + 1, min=self.cfg.layout_length)
        mask = torch.arange(length, device=dev)[None] < used[:, None]
        return classes, seq_boxes, mask

    # -- training -----------------------------------------------------------------------------------------

    def setup(self, train_set: SceneGraphDataset) -> None:
        if self.cfg.layout_from:
            self.box_source()  # fail before training when the checkpoint is missing or from another dataset

    def weight_provenance(self) -> list[WeightProvenance]:
        out = [self.box_source().provenance] if self.cfg.layout_from else []
        return out + (self.scenegenie.provenance() if self.scenegenie is not None else [])

    def train_step(self, batch: SceneGraphBatch, step: int) -> dict[str, float]:
        """One AdamW step on the hybrid loss (ground-truth layout, whole-batch CFG drop) + one Adam step of the
        box predictor on sg2im's box MSE."""
        cfg = self.cfg
        if batch.images is None:
            raise ValueError("layoutdiffusion.train_step needs images")
        self.net.train()
        x0 = batch.images * 2 - 1
        b = x0.shape[0]
        t = torch.randint(0, self.diffusion.num_timesteps, (b,), device=x0.device)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype)
        dropped = cfg.cond_drop_prob > 0 and float(torch.rand(())) < cfg.cond_drop_prob  # train_util.py: per batch
        logs: dict[str, float] = {}
        pred = None
        if self.box_net is not None:
            self.box_net.train()
            pred = self.box_net(batch)
            box_loss = self.box_net.loss(batch, pred)
            self.box_opt.zero_grad(set_to_none=True)
            box_loss.backward()
            self.box_opt.step()
            logs["box"] = float(box_loss.detach())
            pred = pred.detach()
        if batch.has_layout is not None and not bool(batch.has_layout.all()):
            if pred is None:
                pred = self.box_source()(batch, [torch.Generator() for _ in range(b)]).to(x0.device)
            boxes = layout_boxes(batch, usable_boxes(pred.float()), "gt")
        else:
            boxes = batch.boxes
        drop = torch.full((b,), dropped, dtype=torch.bool, device=x0.device)
        tokens = self.net.fusion(*self.layout_sequence(batch, boxes, drop))
        x_t = self.diffusion.q_sample(x0, t, noise)
        out = self.net(x_t, t, tokens).float()
        terms = self.diffusion.hybrid_loss(out, x0, x_t, t, noise)
        loss = terms["loss"].mean()
        self.opt.zero_grad(set_to_none=True)
        accel.backward(loss)
        if cfg.grad_clip > 0:
            accel.unscale(self.opt)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        accel.step(self.opt)
        ema_update(self.ema, self.net, ema_decay(int(self.ema_updates), cfg.ema_decay))
        self.ema_updates += 1
        logs.update(loss=float(loss.detach()), mse=float(terms["mse"].mean().detach()), vb=float(terms["vb"].mean().detach()))
        return logs

    # -- sampling -----------------------------------------------------------------------------------------

    def boxes_for(self, batch: SceneGraphBatch, generator: list[torch.Generator], layout: str) -> Tensor:
        """The boxes the model draws, [O, 4]: ``layout_boxes`` of the ground truth and the graph prediction."""
        if layout not in ("gt", "pred"):
            raise ValueError(f"layout must be 'pred' or 'gt', got {layout!r}")
        need_pred = layout == "pred" or (batch.has_layout is not None and not bool(batch.has_layout.all()))
        if not need_pred:
            return batch.boxes.float()
        pred = self.predict_boxes(batch, generator)  # a random layout draws first, as in predict_boxes
        return layout_boxes(batch, pred, layout)

    @torch.no_grad()
    def guidance_inputs(self, batch: SceneGraphBatch, boxes: Tensor, generator: list[torch.Generator]) -> GuidanceInputs:
        """SceneGenie's targets: the boxes the model draws and each object's column among the object keys
        (slot ``1 + k`` for the k-th non-image object of its image, as :meth:`layout_sequence` places it)."""
        keep = batch.objs != self.image_obj
        _, slot, _, _ = pack_objects(batch.obj_to_img[keep], batch.num_images)
        token_index = torch.zeros_like(batch.objs)
        token_index[keep] = slot + 1
        obj_ph = self.info.phrases or self.info.vocab.object_idx_to_name
        pred_ph = self.info.pred_phrases or self.info.vocab.pred_idx_to_name
        return GuidanceInputs(
            boxes=boxes.detach().float(), obj_to_img=batch.obj_to_img, token_index=token_index, include=keep,
            captions=graph_captions(batch, obj_ph, pred_ph, self.image_obj),
            phrases=[obj_ph[i] for i in batch.objs.tolist()], generators=list(generator),
        )  # fmt: skip

    def sample(self, batch: SceneGraphBatch, generator: list[torch.Generator], layout: str = "pred") -> Tensor:
        cfg = self.cfg
        n = batch.num_images
        if len(generator) != n:
            raise ValueError(f"sample: {len(generator)} generators for {n} graphs")
        net = self.ema
        net.eval()
        boxes = self.boxes_for(batch, generator, layout)
        tokens = net.fusion(*self.layout_sequence(batch, boxes))
        null = None
        if cfg.guidance_scale != 0.0:
            drop = torch.ones(n, dtype=torch.bool, device=batch.objs.device)
            null = net.fusion(*self.layout_sequence(batch, boxes, drop))

        def model_fn(x: Tensor, t: Tensor) -> Tensor:
            if null is None:
                return net(x, t, tokens).float()
            both = net(torch.cat([x, x]), torch.cat([t, t]), _cat_tokens(tokens, null)).float()
            c_out, u_out = both.chunk(2)
            eps = c_out[:, :3] + cfg.guidance_scale * (c_out[:, :3] - u_out[:, :3])
            return torch.cat([eps, c_out[:, 3:]], dim=1)

        if self.scenegenie is not None:
            model_fn = self.scenegenie.wrap(
                model_fn, self.diffusion.alphas_cumprod, self.guidance_inputs(batch, boxes, generator),
                record_attention=lambda: record_cross_attention(net.unet),
            )  # fmt: skip
        size = self.info.image_size
        x = sample_loop(
            model_fn, (3, size, size), generator, cfg.sampler, cfg.sample_steps, cfg.diffusion_steps,
            device=batch.objs.device, eta=cfg.ddim_eta, schedule=cfg.noise_schedule,
        )  # fmt: skip
        return ((x + 1) / 2).clamp(0, 1).float()


def _cat_tokens(a: LayoutTokens, b: LayoutTokens) -> LayoutTokens:
    """Two token sets of the same images stacked along the batch (padded to the longer sequence, masked)."""
    la, lb = a.content.shape[1], b.content.shape[1]
    ln = max(la, lb)

    def pad(x: Tensor, extra: int, value: float | bool = 0.0) -> Tensor:
        if not extra:
            return x
        shape = (x.shape[0], extra, *x.shape[2:])
        return torch.cat([x, torch.full(shape, value, dtype=x.dtype, device=x.device)], dim=1)

    fields = [torch.cat([pad(getattr(a, f), ln - la), pad(getattr(b, f), ln - lb)]) for f in ("content", "cls", "pos")]
    mask = torch.cat([pad(a.mask, ln - la, False), pad(b.mask, ln - lb, False)])
    return LayoutTokens(*fields, mask, a.box_embed)
