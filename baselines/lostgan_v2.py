"""LostGAN-V2 (Sun & Wu, "Image Synthesis From Reconfigurable Layout and Style", ICCV 2019; "Learning Layout and
Style Reconfigurable GANs for Controllable Image Synthesis", TPAMI 2021): layout-to-image GAN, run here on the
ground-truth layout (the published protocol) or on a layout predicted from the scene graph.

Port of WillSuen/LostGANs (``model/resnet_generator_v2.py``, ``model/norm_module.py``,
``model/mask_regression.py``, ``model/rcnn_discriminator.py``, ``train.py``, ``test.py``, ``utils/util.py``):

**Generator** (``ResnetGenerator128`` / ``ResnetGenerator256``). Every object o has a latent ``z_o ~ N(0, I)``
(128) and a label embedding ``e(y_o)`` (180); ``w_o = [z_o, e(y_o)]`` (308). An image latent ``z_im`` goes through
a spectral-normalised linear layer to a ``16 ch x 4 x 4`` map, then ResBlocks (ISLA-Norm -> ReLU -> nearest x2
-> conv3x3 -> ISLA-Norm -> ReLU -> conv3x3, plus a 1x1-conv shortcut of the upsampled input) double it up to
the image size; ``BN -> ReLU -> conv3x3 -> tanh`` gives the image in [-1, 1]. Channels (multiples of ``ch``):
128 px ``16, 16, 8, 4, 2, 1``; 256 px ``16, 16, 8, 8, 4, 2, 1``.

**ISLA-Norm** (instance-sensitive, layout-aware normalisation; ``SpatialAdaptiveSynBatchNorm2d``). With
``x_hat`` the batch-normalised features (no affine), per-object affine parameters ``gamma_o = W_g w_o``,
``beta_o = W_b w_o`` (spectral-normalised linear maps) and per-object soft masks ``M_o [H, W]``::

    ISLA(x)[c, p] = (1 + sum_o M_o(p) gamma_o[c] / (sum_o M_o(p) + 1e-6)) * x_hat[c, p]
                    + sum_o M_o(p) beta_o[c] / (sum_o M_o(p) + 1e-6)

i.e. a mask-weighted average of the objects' affine parameters painted over the layout (1 and 0 where no
object is). Masks at another resolution are bilinearly resized to the features'.

**Masks, refined stage by stage.** ``MaskRegressNetv2`` maps ``w_o`` to a 16x16 mask (linear -> 256x4x4 ->
3 x [conv3x3, instance norm, ReLU] with bilinear x2 between -> conv1x1 -> sigmoid) and warps it into the box
(``masks_to_layout``, bilinear ``grid_sample``): ``B_o`` at 64x64 (both released sizes). Each ResBlock but the
last also predicts per-class masks from its output (conv -> BN -> ReLU -> conv1x1 to ``num_classes`` channels,
a PSP module in the 128 model's fourth block); the next block's masks are
``M_o = (1 - a_{y_o}) up(B_o) + a_{y_o} sigmoid(S[y_o]) * box_o``, with ``S[y_o]`` the stage mask of the object's
class, ``box_o`` its hard box mask (nearest-resized from ``image_size / 2``) and ``a = sigmoid(alpha_k)`` a learned
per-class, per-stage blend weight.

**Discriminator** (``ResnetDiscriminator128`` / ``256``; SN-GAN ResBlocks with spectral norm). Image branch:
ResBlocks down to 4x4, ReLU, sum pooling, linear -> ``D_img``. Object branch: objects smaller than half the
image in both sides are ROI-aligned (8x8, ``torchvision.ops.roi_align``, sampling ratio 0, maskrcnn-benchmark's
unaligned convention) from the 32x32 features after two extra ResBlocks, the others from the 16x16 features
after one; a down ResBlock, ReLU, sum pooling ``phi``; ``D_obj = l(phi) + <E(y), phi>`` (projection on a
spectral-normalised label embedding).

**Losses** (hinge, ``train.py``; ``lambda_obj = 1``, ``lambda_img = 0.1``)::

    L_D = lambda_obj (E[relu(1 - D_obj(x))] + E[relu(1 + D_obj(G(z)))])
        + lambda_img (E[relu(1 - D_img(x))] + E[relu(1 + D_img(G(z)))])
    L_G = -lambda_obj E[D_obj(G(z))] - lambda_img E[D_img(G(z))] + |G(z) - x|_1 + L_VGG(G(z), x)

with ``L_VGG = sum_i w_i |phi_i(G) - phi_i(x)|_1`` over VGG-19 relu1_1 ... relu5_1, ``w = (1/32, 1/16, 1/8, 1/4, 1)``
(``utils/util.py VGGLoss``, applied to the [-1, 1] images as released). One D step then one G step per batch,
Adam ``lr = 1e-4`` for both, ``betas = (0, 0.999)``. Sampling (``test.py``): generator in eval mode, ``z_o`` and
``z_im`` from a normal truncated to [-2, 2].

**Layouts.** ``eval.layout="gt"`` (every tier's default): the dataset's boxes; objects without a known box
(``has_layout`` False, 4D-OR) take the predicted box (``layout_boxes``, SG2Im's ``use_gt`` rule).
``eval.layout="pred"``: boxes from sg2im's GCN box regressor (:class:`GraphBoxPredictor`), trained by this
method on the ground-truth boxes with its own Adam (MSE; it never touches the GAN), or, with
``method.layout_from=PATH``, from a suite checkpoint of a method that predicts boxes (``load_box_source``).
The predictor is trained in every run, so one checkpoint can be scored with either source (``layout_from`` is a
sampling-time switch: ``eval CKPT --set eval.layout=pred --set method.layout_from=PATH``).
The GAN always trains on ground-truth boxes (known objects). Masks are always LostGAN's own (mask regression).

Sizes: the full 128 px configuration has 40,471,888 generator and 57,881,538 discriminator parameters, the
256 px one 46,154,960 and 66,665,154, the released models' counts with COCO's 184 classes (VG's 179 classes:
2,040 / 2,550 fewer generator parameters than released, see below).

Deviations from the released code, and why:

- ``__image__`` nodes are not generator objects (their full-image box would paint one affine over the whole
  image) and not discriminator objects: the released COCO loader never adds them and the released
  discriminator drops label 0 (``CombineDiscriminator128``); a batch is packed per image instead of padded to 8
  (COCO) / 31 (VG) objects. Padded objects have zero masks in the released code, so the sums are the same.
- Predicted boxes are made drawable before rendering (``usable_boxes``: ordered corners in [0, 1], sides at
  least 1/32); a raw regressor output can be inverted or empty, which the released model never sees.
- Objects with ``has_layout`` False take the predicted box in the generator and are left out of the object
  discriminator (the suite's rule; the released datasets have no such objects).
- The stage-mask classifiers, the ``alpha`` tables and the label embeddings have ``num_classes`` rows, not a
  hard-coded 184 (184 is COCO's class count; the VG model carries 5 unused rows).
- Sizes other than 128/256 (CPU tiers): the 128 model's last ``log2(size / 4)`` generator blocks, its
  PSP module in the second-to-last block, and its discriminator with the down blocks that reach 4x4.
  ``image_size / 2`` is the hard box-mask size and ``min(64, image_size / 2)`` the mask-regression map.
- CPU tiers only (``tier_overrides``): narrower networks (quick: ``ch`` 8, latent and label embedding 32,
  mask-regression and stage-mask widths 32, ROIAlign 4x4 at 32 px), batch 16 for 900 steps, and the layout
  predictor at 32/128 widths with Adam lr 1e-3 so that it converges within the run. ``full`` is the released
  configuration.
- No horizontal-flip augmentation (the suite's loaders give each image once; the released loaders double
  the epoch with mirrored images); the full tier's 78,000 steps at batch 128 are the released 200 epochs of the
  flipped ~25k-image COCO-Stuff train set.
- The VGG-19 perceptual loss needs torchvision's ImageNet ``vgg19-dcbb9e9d.pth`` (``$SG2I_VGG19`` or the
  ``torch.hub`` cache; nothing is downloaded). The CPU tiers set ``vgg_loss_weight=0`` (no weights offline, and
  VGG-19 would dominate a CPU step); ``vgg_weights=random`` runs it with random weights, flagged random_init.
- Truncated normals are drawn by rejection per tensor from each image's generator (``test.py`` loops over
  elements with numpy's global RNG): the same distribution, reproducible per sample.
- ``torch.nn.utils.spectral_norm`` and ``BatchNorm2d`` replace the sync-batchnorm / DataParallel wrappers
  (one process: the same statistics); ``torchvision.ops.roi_align(aligned=False)`` replaces the
  maskrcnn-benchmark CUDA extension (the same bilinear ROIAlign); ``F.interpolate`` / ``grid_sample`` take
  PyTorch 1.0's behaviour explicitly (``align_corners=False`` for resizing, ``True`` for the mask warp; the
  released ``masks_to_layout`` relies on the default, which became ``False`` in PyTorch 1.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark import accel
from benchmark.batch import SceneGraphBatch
from benchmark.interfaces import DatasetInfo, Method, SceneGraphDataset, WeightProvenance
from benchmark.nn.layout import object_maps, pack_objects
from benchmark.nn.layout_predictor import GraphBoxPredictor, layout_boxes, load_box_source, usable_boxes
from benchmark.registry import register
from benchmark.scene_graph import IMAGE_TOKEN

# ---------------------------------------------------------------------------------------------------------
# Layers


def sn_conv(cin: int, cout: int, k: int = 3, pad: int = 1, eps: float = 1e-4) -> nn.Module:
    """Spectral-normalised conv (``conv2d`` of resnet_generator_v2.py / rcnn_discriminator.py: eps 1e-4)."""
    return nn.utils.spectral_norm(nn.Conv2d(cin, cout, k, 1, pad), eps=eps)


def sn_linear(cin: int, cout: int) -> nn.Module:
    return nn.utils.spectral_norm(nn.Linear(cin, cout))


def _resize(x: Tensor, size: int, mode: str = "bilinear") -> Tensor:
    """PyTorch 1.0's ``F.interpolate`` (bilinear: ``align_corners=False``); a no-op at the same size."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class IslaNorm(nn.Module):
    """ISLA-Norm (norm_module.py ``SpatialAdaptiveSynBatchNorm2d``): batch norm without affine, then the
    mask-weighted average of per-object affine parameters (see the module docstring).

    ``forward(x [N, C, H, W], w [N, S, num_w], masks [N, S, h, w])``; padded object slots have all-zero masks.
    """

    def __init__(self, channels: int, num_w: int) -> None:
        super().__init__()
        self.weight_proj = sn_linear(num_w, channels)
        self.bias_proj = sn_linear(num_w, channels)
        self.batch_norm2d = nn.BatchNorm2d(channels, affine=False)

    def forward(self, x: Tensor, w: Tensor, masks: Tensor) -> Tensor:
        out = self.batch_norm2d(x)
        masks = _resize(masks, x.shape[-1])
        denom = masks.sum(1, keepdim=True) + 1e-6  # [N, 1, H, W]
        gamma = torch.einsum("nshw,nsc->nchw", masks, self.weight_proj(w)) / denom + 1
        beta = torch.einsum("nshw,nsc->nchw", masks, self.bias_proj(w)) / denom
        return gamma * out + beta


class PSPModule(nn.Module):
    """Pyramid pooling (Zhao et al., CVPR 2017) as in resnet_generator_v2.py ``PSPModule``."""

    def __init__(self, features: int, out_features: int, sizes: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), nn.Conv2d(features, out_features, 1, bias=False),
                          nn.BatchNorm2d(out_features), nn.ReLU())  # fmt: skip
            for s in sizes
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(features + len(sizes) * out_features, out_features, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_features),
            nn.ReLU(),
            nn.Dropout2d(0.1),
        )

    def forward(self, feats: Tensor) -> Tensor:
        h, w = feats.shape[-2:]
        priors = [F.interpolate(s(feats), size=(h, w), mode="bilinear", align_corners=True) for s in self.stages]
        return self.bottleneck(torch.cat([*priors, feats], 1))


class GenBlock(nn.Module):
    """Generator ResBlock (resnet_generator_v2.py ``ResBlock``, upsampling) with its stage-mask head."""

    def __init__(
        self, cin: int, cout: int, num_w: int, num_classes: int, hidden: int, predict_mask: bool, psp: bool
    ) -> None:
        super().__init__()
        self.conv1 = sn_conv(cin, cout)
        self.conv2 = sn_conv(cout, cout)
        self.b1 = IslaNorm(cin, num_w)
        self.b2 = IslaNorm(cout, num_w)
        self.c_sc = sn_conv(cin, cout, 1, 0)
        self.conv_mask: nn.Module | None = None
        if predict_mask and psp:
            self.conv_mask = nn.Sequential(PSPModule(cout, hidden), nn.Conv2d(hidden, num_classes, 1))
        elif predict_mask:
            self.conv_mask = nn.Sequential(nn.Conv2d(cout, hidden, 3, 1, 1), nn.BatchNorm2d(hidden), nn.ReLU(),
                                           nn.Conv2d(hidden, num_classes, 1))  # fmt: skip

    def forward(self, x: Tensor, w: Tensor, masks: Tensor) -> tuple[Tensor, Tensor | None]:
        h = F.interpolate(F.relu(self.b1(x, w, masks)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.b2(self.conv1(h), w, masks)))
        out = h + self.c_sc(F.interpolate(x, scale_factor=2, mode="nearest"))
        return out, (self.conv_mask(out) if self.conv_mask is not None else None)


class MaskRegress(nn.Module):
    """mask_regression.py ``MaskRegressNetv2``: ``w_o`` -> 16x16 mask in (0, 1) (spectral norm, eps 1e-12)."""

    def __init__(self, num_w: int, channels: int) -> None:
        super().__init__()
        c = channels
        self.channels = c
        self.fc = sn_linear(num_w, c * 16)
        block = lambda: [sn_conv(c, c, eps=1e-12), nn.InstanceNorm2d(c), nn.ReLU()]  # noqa: E731
        self.conv1 = nn.Sequential(*block())
        self.conv2 = nn.Sequential(*block())
        self.conv3 = nn.Sequential(*block(), sn_conv(c, 1, 1, 0, eps=1e-12), nn.Sigmoid())

    def forward(self, w: Tensor) -> Tensor:
        x = self.conv1(self.fc(w).view(-1, self.channels, 4, 4))
        x = self.conv2(_resize(x, 8))
        return self.conv3(_resize(x, 16)).squeeze(1)  # [O, 16, 16]


def box_masks(boxes: Tensor, size: int) -> Tensor:
    """Hard box masks ``[O, size, size]`` (resnet_generator_v2.py ``bbox_mask``): pixel centres at
    ``linspace(0, 1, size)``, 1 where ``0 <= (t - x0) / (x1 - x0) <= 1`` on both axes."""
    t = torch.linspace(0, 1, size, device=boxes.device, dtype=boxes.dtype)
    side = lambda a, b: (b - a).masked_fill((b - a).abs() < 1e-6, 1e-6)  # noqa: E731
    u = (t.view(1, -1) - boxes[:, 0:1]) / side(boxes[:, 0:1], boxes[:, 2:3])
    v = (t.view(1, -1) - boxes[:, 1:2]) / side(boxes[:, 1:2], boxes[:, 3:4])
    inx, iny = ((u >= 0) & (u <= 1)).to(boxes.dtype), ((v >= 0) & (v <= 1)).to(boxes.dtype)
    return iny.unsqueeze(2) * inx.unsqueeze(1)


# Generator channel multipliers (input of the first block, then each block's output).
G_CHANNELS = {128: (16, 16, 8, 4, 2, 1), 256: (16, 16, 8, 8, 4, 2, 1)}
# Discriminator: image trunk (channel multipliers, the last block keeps the resolution), the trunk blocks whose
# outputs feed the small / large object paths, and the object blocks (small-only, shared, final down block).
D_ARCH = {
    128: {"trunk": (1, 2, 4, 8, 16, 16), "tap_s": 1, "tap_l": 2, "obj_s": (2, 4), "shared": (4, 8), "final": (8, 16)},
    256: {"trunk": (1, 2, 4, 8, 8, 16, 16), "tap_s": 2, "tap_l": 3, "obj_s": (4, 8), "shared": (8, 8), "final": (8, 16)},
}


def _levels(image_size: int) -> int:
    n = int(round(math.log2(image_size / 4))) if image_size >= 4 else 0
    if 4 * 2**n != image_size or n < 3:
        raise ValueError(f"image_size must be a power of 2 and at least 32 for LostGAN-V2, got {image_size}")
    return n


def generator_channels(image_size: int) -> tuple[int, ...]:
    """Released 128/256 multipliers; other sizes: the 128 model's last ``log2(size / 4)`` blocks."""
    return G_CHANNELS.get(image_size) or G_CHANNELS[128][-(_levels(image_size) + 1) :]


def discriminator_arch(image_size: int) -> dict[str, Any]:
    """Released 128/256 discriminators; other sizes: the 128 model with the down blocks that reach 4x4."""
    if image_size in D_ARCH:
        return D_ARCH[image_size]
    n = _levels(image_size)
    trunk = D_ARCH[128]["trunk"][:n]
    return {**D_ARCH[128], "trunk": (*trunk, trunk[-1])}


class LostGanGenerator(nn.Module):
    """``ResnetGenerator128`` / ``ResnetGenerator256`` on packed objects (see the module docstring)."""

    def __init__(self, cfg: LostGanV2Config, num_classes: int, image_size: int) -> None:
        super().__init__()
        mults = generator_channels(image_size)
        n = len(mults) - 1
        ch, num_w = cfg.ch, cfg.z_dim + cfg.embedding_dim
        self.z_dim, self.image_size = cfg.z_dim, image_size
        self.map_size, self.box_size = min(64, image_size // 2), image_size // 2
        self.label_embedding = nn.Embedding(num_classes, cfg.embedding_dim)
        self.fc = sn_linear(cfg.z_dim, 16 * mults[0] * ch)
        psp_block = None if image_size == 256 else n - 2  # the 128 model's res4
        self.res = nn.ModuleList(
            GenBlock(mults[i] * ch, mults[i + 1] * ch, num_w, num_classes, cfg.stage_mask_dim,
                     predict_mask=i < n - 1, psp=i == psp_block)  # fmt: skip
            for i in range(n)
        )
        self.final = nn.Sequential(nn.BatchNorm2d(ch), nn.ReLU(), sn_conv(ch, 3), nn.Tanh())
        self.alpha = nn.ParameterList(nn.Parameter(torch.zeros(1, num_classes, 1)) for _ in range(n - 1))
        self.mask_regress = MaskRegress(num_w, cfg.mask_channels)
        for name, p in self.named_parameters():  # init_parameter: orthogonal weights (alpha too), zero biases
            if p.dim() > 1:
                nn.init.orthogonal_(p)
            if name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(
        self, z_obj: Tensor, labels: Tensor, boxes: Tensor, obj_to_img: Tensor, z_im: Tensor
    ) -> Tensor:
        """z_obj ``[O, z]``, labels ``[O]``, boxes ``[O, 4]`` (x0, y0, x1, y1 in [0, 1]), obj_to_img ``[O]``,
        z_im ``[N, z]`` -> image ``[N, 3, H, W]`` in [-1, 1]. Objects are packed into ``S`` slots per image."""
        n_img = z_im.shape[0]
        img, slot, _, s = pack_objects(obj_to_img, n_img)

        def pad(x: Tensor) -> Tensor:
            return x.new_zeros(n_img, s, *x.shape[1:]).index_put((img, slot), x)

        w_obj = torch.cat([z_obj, self.label_embedding(labels)], 1)  # [O, num_w]
        w = pad(w_obj)
        lab = pad(labels)  # padded slots: label 0 with all-zero masks, as the released padding
        bmask = pad(object_maps(boxes, self.mask_regress(w_obj), self.map_size))  # [N, S, 64, 64]
        hard = pad(box_masks(boxes, self.box_size))  # [N, S, size/2, size/2]
        x = self.fc(z_im).view(n_img, -1, 4, 4)
        x, stage = self.res[0](x, w, bmask)
        for k in range(1, len(self.res)):
            r = x.shape[-1]
            assert stage is not None
            seman = torch.gather(stage, 1, lab.view(n_img, s, 1, 1).expand(-1, -1, r, r)).sigmoid()
            seman = seman * _resize(hard, r, "nearest")
            a = self.alpha[k - 1].sigmoid()[0, :, 0][lab].view(n_img, s, 1, 1)
            x, stage = self.res[k](x, w, _resize(bmask, r) * (1 - a) + seman * a)
        return self.final(x)


class DBlock(nn.Module):
    """rcnn_discriminator.py ``ResBlock`` (``first=True``: ``OptimizedBlock``, no leading ReLU, pool-then-conv
    shortcut)."""

    def __init__(self, cin: int, cout: int, down: bool, first: bool = False) -> None:
        super().__init__()
        self.conv1, self.conv2 = sn_conv(cin, cout), sn_conv(cout, cout)
        self.down, self.first = down, first
        self.c_sc = sn_conv(cin, cout, 1, 0) if first or cin != cout or down else None

    def forward(self, x: Tensor) -> Tensor:
        if self.first:
            h = self.conv2(F.relu(self.conv1(x)))
            h = F.avg_pool2d(h, 2) if self.down else h
            sc = self.c_sc(F.avg_pool2d(x, 2) if self.down else x)
            return h + sc
        h = self.conv2(F.relu(self.conv1(F.relu(x))))
        h = F.avg_pool2d(h, 2) if self.down else h
        sc = x
        if self.c_sc is not None:
            sc = self.c_sc(x)
            sc = F.avg_pool2d(sc, 2) if self.down else sc
        return h + sc


class LostGanDiscriminator(nn.Module):
    """``ResnetDiscriminator128`` / ``256``: image score and ROI-aligned object scores with label projection."""

    def __init__(self, ch: int, num_classes: int, image_size: int, roi_size: int = 8) -> None:
        super().__init__()
        arch = discriminator_arch(image_size)
        t = arch["trunk"]
        self.image_size, self.roi_size = image_size, roi_size
        self.tap_s, self.tap_l = arch["tap_s"], arch["tap_l"]
        self.trunk = nn.ModuleList(
            [DBlock(3, t[0] * ch, True, first=True)]
            + [DBlock(t[i - 1] * ch, t[i] * ch, down=i < len(t) - 1) for i in range(1, len(t))]
        )
        self.l_im = sn_linear(t[-1] * ch, 1)
        self.block_obj_s = DBlock(arch["obj_s"][0] * ch, arch["obj_s"][1] * ch, False)
        self.block_obj_shared = DBlock(arch["shared"][0] * ch, arch["shared"][1] * ch, False)
        self.block_obj_final = DBlock(arch["final"][0] * ch, arch["final"][1] * ch, True)
        self.l_obj = sn_linear(arch["final"][1] * ch, 1)
        self.l_y = nn.utils.spectral_norm(nn.Embedding(num_classes, arch["final"][1] * ch))

    def forward(
        self, images: Tensor, labels: Tensor, boxes: Tensor, obj_to_img: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """images ``[N, 3, H, W]`` in [-1, 1]; labels ``[K]``, boxes ``[K, 4]`` (normalised x0, y0, x1, y1),
        obj_to_img ``[K]`` -> (image scores ``[N, 1]``, object scores ``[K, 1]`` or None when ``K = 0``)."""
        from torchvision.ops import roi_align

        x, taps = images, {}
        for i, block in enumerate(self.trunk):
            x = block(x)
            taps[i] = x
        out_im = self.l_im(F.relu(x).sum(dim=(2, 3)))
        if labels.numel() == 0:
            return out_im, None
        size = self.image_size
        px = boxes * size
        rois = torch.cat([obj_to_img.to(px.dtype).view(-1, 1), px], 1)
        small = ((px[:, 2] - px[:, 0]) < size / 2) & ((px[:, 3] - px[:, 1]) < size / 2)
        feats, ys = [], []
        for sel, feat_fn in ((~small, lambda: self.block_obj_shared(taps[self.tap_l])),
                             (small, lambda: self.block_obj_shared(self.block_obj_s(taps[self.tap_s])))):  # fmt: skip
            if bool(sel.any()):
                f = feat_fn()
                feats.append(roi_align(f, rois[sel], (self.roi_size, self.roi_size), f.shape[-1] / size, 0, False))
                ys.append(labels[sel])
        obj = F.relu(self.block_obj_final(torch.cat(feats))).sum(dim=(2, 3))
        y = torch.cat(ys)
        out_obj = self.l_obj(obj) + (self.l_y(y) * obj).sum(1, keepdim=True)
        return out_im, out_obj


# ---------------------------------------------------------------------------------------------------------
# VGG-19 perceptual loss (utils/util.py VGGLoss)

VGG_LAYERS = (2, 7, 12, 21, 30)  # torchvision vgg19().features slice ends: relu1_1, relu2_1, ..., relu5_1
VGG_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


def _vgg_spec() -> Any:
    from benchmark.metrics.pretrained import WeightsSpec

    return WeightsSpec(
        what="lostgan_v2: the ImageNet VGG-19 of the perceptual loss",
        env="SG2I_VGG19",
        hub_files=("vgg19-dcbb9e9d.pth",),
        digests=("dcbb9e9d",),
        origin="torchvision VGG19_Weights.IMAGENET1K_V1",
    )


class VggLoss(nn.Module):
    """``sum_i w_i L1(phi_i(x), phi_i(y))`` over VGG-19 relu1_1..relu5_1 (frozen), ``w = 1/32 .. 1``."""

    def __init__(self, weights: str) -> None:
        super().__init__()
        from torchvision.models import vgg19

        from benchmark.metrics.pretrained import load_state_dict
        from benchmark.text_encoders.base import WeightsUnavailable

        features = vgg19().features[: VGG_LAYERS[-1]]
        if weights == "random":
            self.provenance = WeightProvenance("vgg19 (perceptual loss)", "random", random_init=True)
        else:
            spec = _vgg_spec()
            try:
                path = spec.resolve(weights or None)
                state = load_state_dict(path, spec.what, vgg19().state_dict())
            except Exception as e:  # MetricUnavailable: the same lookup as the metrics' weights
                raise WeightsUnavailable(f"{e} (or set method.vgg_loss_weight=0)") from None
            features.load_state_dict({k[len("features.") :]: v for k, v in state.items()
                                      if k.startswith("features.") and int(k.split(".")[1]) < VGG_LAYERS[-1]})  # fmt: skip
            self.provenance = spec.provenance("vgg19 (perceptual loss)", path)
        self.slices = nn.ModuleList(features[a:b] for a, b in zip((0, *VGG_LAYERS[:-1]), VGG_LAYERS))
        self.requires_grad_(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        loss = x.new_zeros(())
        for w, sl in zip(VGG_WEIGHTS, self.slices):
            x, y = sl(x), sl(y)
            loss = loss + w * F.l1_loss(x, y.detach())
        return loss


# ---------------------------------------------------------------------------------------------------------
# The method


@dataclass(frozen=True)
class LostGanV2Config:
    """LostGAN-V2 hyper-parameters; defaults are the released ones (``train.py``, ``resnet_generator_v2.py``)."""

    ch: int = 64  # base width of G and D
    z_dim: int = 128  # per-object and image latent
    embedding_dim: int = 180  # label embedding; w_o = [z_o, e(y_o)] has z_dim + 180 = 308 dims
    mask_channels: int = 256  # MaskRegressNetv2 width
    stage_mask_dim: int = 100  # hidden width of the per-stage mask heads (and the PSP module)
    roi_size: int = 8  # ROIAlign output of the object branch
    # Optimisation (train.py): Adam, betas (0, 0.999)
    learning_rate: float = 1e-4  # train.py --g_lr and --d_lr (both 1e-4)
    d_learning_rate: float | None = None  # the discriminator's, when it differs (None = learning_rate)
    beta1: float = 0.0
    beta2: float = 0.999
    # Loss weights (train.py)
    lambda_obj: float = 1.0
    lambda_img: float = 0.1
    l1_loss_weight: float = 1.0
    vgg_loss_weight: float = 1.0
    vgg_weights: str = ""  # "" = $SG2I_VGG19 or the torch.hub cache; a path; "random" (plumbing only)
    truncation: float = 2.0  # test.py: |z| <= 2 at sampling (0 = plain normal)
    # Predicted layouts (eval.layout=pred, and boxes unknown to the dataset)
    layout_from: str = ""  # a suite checkpoint whose method predicts boxes (sg2im*, *_ddpm); "" = our predictor
    predictor_embed_dim: int = 128  # GraphBoxPredictor: sg2im's defaults
    predictor_gconv_dim: int = 128
    predictor_hidden_dim: int = 512
    predictor_layers: int = 5
    predictor_learning_rate: float = 1e-4


# CPU tiers: the same architecture rules, narrower.
_SMOKE = {
    "method.ch": 4,
    "method.z_dim": 8,
    "method.embedding_dim": 8,
    "method.mask_channels": 8,
    "method.stage_mask_dim": 8,
    "method.roi_size": 4,
    "method.vgg_loss_weight": 0.0,
    "method.predictor_embed_dim": 8,
    "method.predictor_gconv_dim": 8,
    "method.predictor_hidden_dim": 16,
    "method.predictor_layers": 2,
    "eval.layout": "gt",
}
_QUICK = {
    "method.ch": 8,
    "method.roi_size": 4,
    "method.z_dim": 32,
    "method.embedding_dim": 32,
    "method.mask_channels": 32,
    "method.stage_mask_dim": 32,
    "method.vgg_loss_weight": 0.0,
    "method.predictor_embed_dim": 32,
    "method.predictor_gconv_dim": 32,
    "method.predictor_hidden_dim": 128,
    "method.predictor_learning_rate": 1e-3,
    # Measured (32 px shapes, batch 16, 1 thread): 0.82 s/step with the 2 cores shared (load ~10), when sg2im's
    # quick step took 0.80 s; sg2im's recorded quick run took 0.25 s/step alone, so ~0.26 s/step alone here:
    # 900 steps ~ 4 min of training.
    "train.batch_size": 16,
    "train.steps": 900,
    "eval.layout": "gt",
}


@register("method", "lostgan_v2")
class LostGanV2(Method):
    """LostGAN-V2 (Sun & Wu, ICCV 2019 / TPAMI 2021): ISLA-Norm ResNet generator with mask regression, ROIAlign
    object discriminator, hinge losses; ground-truth layout by default, ``eval.layout=pred`` for a GCN layout."""

    Config = LostGanV2Config
    tier_overrides = {
        "smoke": _SMOKE,
        "quick": _QUICK,
        # the released 128 px model (256 px: --set image_size=256); 200 epochs of the flipped COCO train set
        "full": {"image_size": 128, "train.batch_size": 128, "train.steps": 78_000, "eval.layout": "gt"},
    }
    compile_targets = ("discriminator",)

    def __init__(self, cfg: LostGanV2Config, info: DatasetInfo) -> None:
        super().__init__(cfg, info)
        vocab = info.vocab
        self.image_obj = vocab.object_name_to_idx.get(IMAGE_TOKEN, -1)
        self.generator = LostGanGenerator(cfg, vocab.num_objects, info.image_size)
        self.discriminator = LostGanDiscriminator(cfg.ch, vocab.num_objects, info.image_size, cfg.roi_size)
        betas = (cfg.beta1, cfg.beta2)
        d_lr = cfg.learning_rate if cfg.d_learning_rate is None else cfg.d_learning_rate
        self.optimizer_g = torch.optim.Adam(self.generator.parameters(), lr=cfg.learning_rate, betas=betas)
        self.optimizer_d = torch.optim.Adam(self.discriminator.parameters(), lr=d_lr, betas=betas)
        # Always built and trained (small beside the GAN), also with layout_from: a checkpoint can then be
        # evaluated with either box source (``eval --set method.layout_from=...`` is a sampling-time switch).
        clean = lambda names: tuple(n.replace("_", " ").strip() for n in names)  # noqa: E731
        self.layout_predictor = GraphBoxPredictor(
            info.phrases or clean(vocab.object_idx_to_name),
            info.pred_phrases or clean(vocab.pred_idx_to_name),
            embed_dim=cfg.predictor_embed_dim,
            gconv_dim=cfg.predictor_gconv_dim,
            hidden_dim=cfg.predictor_hidden_dim,
            layers=cfg.predictor_layers,
        )
        self.optimizer_layout = torch.optim.Adam(self.layout_predictor.parameters(), lr=cfg.predictor_learning_rate)
        # Not submodules: neither is part of this method's weights (loaded from their own files when needed).
        self.__dict__["_box_source"] = None
        self.__dict__["_vgg"] = None

    # -- plumbing -----------------------------------------------------------------------------------------

    def setup(self, train_set: SceneGraphDataset) -> None:
        """Load what comes from other files now, so that a missing file stops the run before step 0."""
        if self.cfg.vgg_loss_weight > 0:
            self._vgg_loss(torch.device("cpu"))
        if self.cfg.layout_from:
            self._source(torch.device("cpu"))

    def _vgg_loss(self, device: torch.device) -> VggLoss:
        vgg = self.__dict__["_vgg"]
        if vgg is None:
            vgg = VggLoss(self.cfg.vgg_weights)
            self.__dict__["_vgg"] = vgg
        return vgg.to(device)

    def _source(self, device: torch.device) -> Any:
        src = self.__dict__["_box_source"]
        if src is None:
            path = Path(self.cfg.layout_from).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"method.layout_from: {path} is not a file (a suite checkpoint of sg2im*/*_ddpm)")
            src = load_box_source(path, device)
            src.check(self.info)
            self.__dict__["_box_source"] = src
        return src

    def weight_provenance(self) -> list[WeightProvenance]:
        out: list[WeightProvenance] = []
        if self.cfg.layout_from:
            out.append(self._source(torch.device("cpu")).provenance)
        vgg = self.__dict__["_vgg"]
        if self.cfg.vgg_loss_weight > 0 and vgg is not None:
            out.append(vgg.provenance)
        return out

    def _objects(self, batch: SceneGraphBatch) -> Tensor:
        """Indices of the generator's objects: every object but ``__image__``."""
        return (batch.objs != self.image_obj).nonzero().flatten()

    def _known(self, batch: SceneGraphBatch) -> Tensor:
        return batch.has_layout if batch.has_layout is not None else torch.ones_like(batch.objs, dtype=torch.bool)

    def _predicted(self, batch: SceneGraphBatch, generator: list[torch.Generator] | None) -> Tensor:
        """Predicted boxes ``[O, 4]`` of every object (no gradient), made drawable (``usable_boxes``: ordered
        corners in [0, 1], sides >= 1/32; a raw regressor output can be empty or inverted)."""
        with torch.no_grad():
            if self.cfg.layout_from:
                gens = generator or [torch.Generator().manual_seed(i) for i in range(batch.num_images)]
                boxes = self._source(batch.objs.device)(batch, gens)
            else:
                boxes = self.layout_predictor.predict(batch)
            return usable_boxes(boxes).to(batch.boxes.dtype)

    def layout(self, batch: SceneGraphBatch, generator: list[torch.Generator] | None, layout: str) -> Tensor:
        """Boxes ``[O, 4]`` the generator draws: "pred" = predicted; "gt" = the batch's where known, else predicted."""
        if layout not in ("pred", "gt"):
            raise ValueError(f"layout must be 'pred' or 'gt', got {layout!r}")
        if layout == "gt" and bool(self._known(batch).all()):
            return batch.boxes
        return layout_boxes(batch, self._predicted(batch, generator), layout)

    def _generate(self, batch: SceneGraphBatch, boxes: Tensor, z_obj: Tensor, z_im: Tensor, keep: Tensor) -> Tensor:
        return self.generator(z_obj, batch.objs[keep], boxes[keep], batch.obj_to_img[keep], z_im)

    def _d_objects(self, batch: SceneGraphBatch) -> tuple[Tensor, Tensor, Tensor]:
        sel = (batch.objs != self.image_obj) & self._known(batch)
        return batch.objs[sel], batch.boxes[sel], batch.obj_to_img[sel]

    # -- training -------------------------------------------------------------------------------------------

    def train_step(self, batch: SceneGraphBatch, step: int) -> dict[str, float]:
        """One iteration of train.py: a D step on real and fake, then a G step on the same fake; plus one step
        of the layout predictor's own optimiser on the box MSE."""
        cfg = self.cfg
        if batch.images is None:
            raise ValueError("LostGAN-V2 training needs images in the batch")
        out: dict[str, float] = {}
        self.layout_predictor.train()
        box_loss = self.layout_predictor.loss(batch, self.layout_predictor(batch))
        self.optimizer_layout.zero_grad(set_to_none=True)
        accel.backward(box_loss)
        accel.step(self.optimizer_layout)
        out["box_loss"] = box_loss.item()
        self.generator.train()
        self.discriminator.train()
        real = batch.images * 2 - 1
        keep = self._objects(batch)
        boxes = self.layout(batch, None, "gt")
        d_objs, d_boxes, d_o2i = self._d_objects(batch)
        n = batch.num_images
        z_obj = torch.randn(keep.numel(), cfg.z_dim, device=real.device)
        z_im = torch.randn(n, cfg.z_dim, device=real.device)

        d_real, d_robj = self.discriminator(real, d_objs, d_boxes, d_o2i)
        fake = self._generate(batch, boxes, z_obj, z_im, keep)
        d_fake, d_fobj = self.discriminator(fake.detach(), d_objs, d_boxes, d_o2i)
        loss_real, loss_fake = F.relu(1 - d_real).mean(), F.relu(1 + d_fake).mean()
        d_loss = cfg.lambda_img * (loss_real + loss_fake)
        out.update(d_loss_real=loss_real.item(), d_loss_fake=loss_fake.item())
        if d_robj is not None and d_fobj is not None:
            loss_robj, loss_fobj = F.relu(1 - d_robj).mean(), F.relu(1 + d_fobj).mean()
            d_loss = d_loss + cfg.lambda_obj * (loss_robj + loss_fobj)
            out.update(d_loss_robj=loss_robj.item(), d_loss_fobj=loss_fobj.item())
        self.optimizer_d.zero_grad(set_to_none=True)
        accel.backward(d_loss)
        accel.step(self.optimizer_d)

        self.discriminator.requires_grad_(False)  # the G step's D gradients are discarded in train.py
        try:
            g_img, g_obj = self.discriminator(fake, d_objs, d_boxes, d_o2i)
        finally:
            self.discriminator.requires_grad_(True)
        terms = {"g_loss_fake": -cfg.lambda_img * g_img.mean()}
        if g_obj is not None:
            terms["g_loss_obj"] = -cfg.lambda_obj * g_obj.mean()
        if cfg.l1_loss_weight:
            terms["pixel_loss"] = cfg.l1_loss_weight * F.l1_loss(fake, real)
        if cfg.vgg_loss_weight:
            terms["feat_loss"] = cfg.vgg_loss_weight * self._vgg_loss(real.device)(fake, real)
        g_loss = torch.stack(list(terms.values())).sum()
        self.optimizer_g.zero_grad(set_to_none=True)
        accel.backward(g_loss)
        accel.step(self.optimizer_g)
        out.update({k: v.item() for k, v in terms.items()}, d_loss=d_loss.item(), g_loss=g_loss.item())
        return out

    # -- sampling -------------------------------------------------------------------------------------------

    def _noise(self, batch: SceneGraphBatch, keep: Tensor, generator: list[torch.Generator]) -> tuple[Tensor, Tensor]:
        """Per image, from its own generator: ``z_im [z]`` then one ``z_o [z]`` per generator object, each a
        normal truncated to ``[-t, t]`` (rejection: out-of-range entries are drawn again)."""
        t, zd = self.cfg.truncation, self.cfg.z_dim
        counts = torch.bincount(batch.obj_to_img[keep], minlength=batch.num_images).tolist()
        z_im, z_obj = [], []
        for g, c in zip(generator, counts):
            z = torch.randn(1 + c, zd, generator=g)
            while t > 0 and bool((bad := z.abs() > t).any()):
                z[bad] = torch.randn(int(bad.sum()), generator=g)
            z_im.append(z[0])
            z_obj.append(z[1:])
        # objects of image i are contiguous in obj_to_img order only if sorted: place them by rank instead
        obj_img = batch.obj_to_img[keep].cpu()
        order = torch.argsort(obj_img, stable=True)
        zo = torch.empty(keep.numel(), zd)
        zo[order] = torch.cat(z_obj) if z_obj else zo
        dev = batch.objs.device
        return zo.to(dev), torch.stack(z_im).to(dev)

    def sample(self, batch: SceneGraphBatch, generator: list[torch.Generator], layout: str = "pred") -> Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] on the ``layout`` boxes; generator in eval mode (test.py)."""
        boxes = self.layout(batch, generator, layout)
        keep = self._objects(batch)
        was = self.generator.training
        self.generator.eval()
        try:
            with torch.no_grad():
                z_obj, z_im = self._noise(batch, keep, generator)
                img = self._generate(batch, boxes, z_obj, z_im, keep)
        finally:
            self.generator.train(was)
        return ((img + 1) / 2).clamp(0, 1).float().contiguous()

    def predict_boxes(self, batch: SceneGraphBatch, generator: list[torch.Generator]) -> Tensor:
        """The boxes ``sample(layout="pred")`` draws (the predictor's or the ``layout_from`` source's)."""
        return self.layout(batch, generator, "pred")
