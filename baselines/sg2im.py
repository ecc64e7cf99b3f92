"""SG2Im (Johnson, Gupta, Fei-Fei, CVPR 2018): scene graph -> graph convolution -> layout -> CRN -> image.

A faithful port of google/sg2im (commit 2c1bf4a; ``sg2im/model.py``, ``graph.py``, ``layout.py``, ``crn.py``,
``discriminators.py``, ``bilinear.py``, ``losses.py``, ``layers.py`` and the train loop of
``scripts/train.py``), with the reference ``train.py`` defaults as the ``Config`` defaults:

- generator: object/predicate embeddings (128) -> 5 ``GraphTripleConv`` layers (128 / hidden 512, average
  pooling) -> box regressor ``[128 -> 512 -> 4]`` (final ReLU) and 16x16 mask regressor -> layout from the
  boxes and masks (GT boxes and masks during training, as the reference) + 32 channels of N(0, 1) layout
  noise -> cascaded refinement network (1024, 512, 256, 128, 64) -> image in ImageNet-normalised space;
- discriminators: a patch image discriminator and an object discriminator with auxiliary classifier on
  32x32 bilinear crops at the GT boxes (both ``C4-64-2,C4-128-2,C4-256-2``, batch norm, valid padding);
- losses: ``1.0 L1(pixels) + 10 MSE(boxes) + 0 BCE(masks) + 0.1 AC + 0.01 (GAN_obj + GAN_img)``; one
  generator step, then one object-discriminator step and one image-discriminator step per iteration, each
  with its own Adam (lr 1e-4); at ``eval_mode_after`` the generator is put in eval mode and gets a new Adam.

Our batches hold images in [0, 1]; the method converts them to sg2im's ImageNet-normalised space
(``(x - mean) / std``, sg2im ``imagenet_preprocess``) and converts generated images back, clamped to [0, 1].

Deviations from the reference (each also noted where it happens):

- ``rel_aux_net`` (predicate prediction, loss weight 0, deprecated) and the image discriminator's unused
  ``classifier`` conv are not built: they never influence an output or a gradient.
- The object embedding table has ``num_objects`` rows, not ``num_objects + 1`` (the extra row is never read).
- Objects whose ``has_layout`` is False (datasets without a box for some objects) take their predicted
  box/mask in the layout and are left out of the box loss and the object discriminator; sg2im has no such
  objects.
- Iterations with a non-finite generator loss are skipped as in the reference (reported as ``skipped``).
- A box side shorter than 1e-6 is taken as 1e-6 when warping (sg2im divides by zero and gets NaN).
- Quick tier only (``tier_overrides["quick"]``): small widths, ``mask_loss_weight=0.1`` (TRAINING.md's COCO
  advice; with 0 the mask net is never trained and predicted layouts use random masks), no final ReLU on
  the box regressor (``box_net_final_relu=False``: a dead ReLU froze one coordinate at 0), Adam at 1e-3 since
  protocol 1.2 (the reference's 1e-4 learns too little in a CPU budget) and 4,500 iterations since 1.4 (3,000
  under 1.2 and 1.3). Full tier = the reference ``train.py`` defaults.

Speed (same function, different order of computation; tests check equality with the dense sg2im path):

- ``fast_layout``: the CRN reads the layout in factored form ``sum_o v_o (x) map_o`` and computes each
  refinement module's first convolution per input group: the 128 object channels per object (a tiny
  matrix product), the noise channels as a conv, and ``conv3x3(upsample_x2(feats))`` as one stride-2
  transposed conv (16 instead of 36 multiply-adds per input pixel; no upsampled copy). Masks are warped
  once per object, not once per channel.
- the mask net runs only up to its last BatchNorm (stats only) when its output reaches no loss; the
  discriminators' weight gradients are not computed in the generator step (sg2im computes and discards
  them); crops are one ``grid_sample`` instead of a loop over images; in-place LeakyReLU; channels-last
  activations and weights on CPU (``channels_last``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark import accel
from benchmark.batch import SceneGraphBatch
from benchmark.interfaces import DatasetInfo, Method, SceneGraphDataset, WeightProvenance
from benchmark.nn.embedding import NodeEmbedding
from benchmark.nn.graph import GraphTripleConv, GraphTripleConvNet, build_mlp
from benchmark.nn.layout import object_maps, objects_to_layout, pack_objects
from benchmark.nn.resample import upsample_nearest_conv3x3
from benchmark.registry import register, register_presets
from benchmark.seeding import randn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------------------
# Building blocks (sg2im/layers.py)


def get_activation(name: str, inplace: bool = True) -> nn.Module:
    """sg2im/layers.py ``get_activation``: ALWAYS a LeakyReLU; ``"leakyrelu-0.2"`` sets the slope to 0.2.

    The reference overwrites the name with ``'leakyrelu'`` before the lookup, so ``"relu"`` also gives a
    LeakyReLU (slope 0.01); we follow the code. In-place by default (it always follows a conv or a norm, whose
    backward does not need their output): the same values with less memory traffic.
    """
    slope = 0.01
    if name.lower().startswith("leakyrelu") and "-" in name:
        slope = float(name.split("-")[1])
    elif not name.lower().startswith(("leakyrelu", "relu")):
        raise ValueError(f"invalid activation {name!r}; valid: relu, leakyrelu, leakyrelu-<slope>")
    return nn.LeakyReLU(negative_slope=slope, inplace=inplace)


def get_normalization_2d(channels: int, normalization: str) -> nn.Module | None:
    """sg2im/layers.py ``get_normalization_2d``: ``batch`` | ``instance`` | ``none``."""
    if normalization == "batch":
        return nn.BatchNorm2d(channels)
    if normalization == "instance":
        return nn.InstanceNorm2d(channels)
    if normalization == "none":
        return None
    raise ValueError(f"unrecognized normalization {normalization!r}; valid: batch, instance, none")


def build_cnn(
    arch: str, normalization: str = "batch", activation: str = "leakyrelu-0.2", padding: str = "valid"
) -> tuple[nn.Sequential, int]:
    """A CNN from sg2im's architecture string (sg2im/layers.py ``build_cnn``, the layers the Ds use).

    ``"I3,C4-64-2,C4-128-2"``: ``IX`` = X input channels (default 3); ``CK-X[-S]`` = KxK conv with X outputs
    and stride S. Every conv except the first is preceded by normalization and activation; ``valid`` padding
    is 0, ``same`` is (K - 1) / 2. Returns ``(net, output channels)``.
    """
    parts = [p for p in arch.split(",") if p]
    cur = 3
    if parts and parts[0][0] == "I":
        cur = int(parts[0][1:])
        parts = parts[1:]
    layers: list[nn.Module] = []
    first = True
    for spec in parts:
        if spec[0] != "C":
            raise ValueError(
                f"build_cnn: unsupported layer {spec!r} (only IX and CK-X[-S] are used by SG2Im)"
            )
        if not first:
            norm = get_normalization_2d(cur, normalization)
            if norm is not None:
                layers.append(norm)
            layers.append(get_activation(activation))
        first = False
        vals = [int(v) for v in spec[1:].split("-")]
        k, out = vals[0], vals[1]
        stride = vals[2] if len(vals) > 2 else 1
        if padding == "valid":
            pad = 0
        elif padding == "same":
            pad = (k - 1) // 2
        else:
            raise ValueError(f"invalid padding {padding!r}; valid: valid, same")
        layers.append(nn.Conv2d(cur, out, kernel_size=k, stride=stride, padding=pad))
        cur = out
    return nn.Sequential(*layers), cur


# ---------------------------------------------------------------------------------------------------------
# Cascaded refinement network (sg2im/crn.py)


class RefinementModule(nn.Module):
    """One CRN module (sg2im/crn.py ``RefinementModule``).

    ``layout [N, L, h', w']`` is average-pooled to the size ``h x w`` of ``feats [N, C, h, w]``, then
    ``conv3x3([layout, feats]) -> norm -> act -> conv3x3 -> norm -> act`` gives ``[N, out, h, w]``.
    Convolutions are Kaiming-normal initialised.
    """

    def __init__(
        self, layout_dim: int, input_dim: int, output_dim: int, normalization: str, activation: str
    ) -> None:
        super().__init__()
        self.layout_dim = layout_dim
        layers: list[nn.Module | None] = [
            nn.Conv2d(layout_dim + input_dim, output_dim, kernel_size=3, padding=1),
            get_normalization_2d(output_dim, normalization),
            get_activation(activation),
            nn.Conv2d(output_dim, output_dim, kernel_size=3, padding=1),
            get_normalization_2d(output_dim, normalization),
            get_activation(activation),
        ]
        kept = [layer for layer in layers if layer is not None]
        for layer in kept:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight)
        self.net = nn.Sequential(*kept)

    def forward(self, layout: Tensor, feats: Tensor) -> Tensor:
        """Dense path, exactly sg2im: layout ``[N, L, H, W]``, feats ``[N, C, h, w]`` -> ``[N, out, h, w]``."""
        return self.net(torch.cat([_pool_to(layout, feats.shape[-1]), feats], dim=1))

    def forward_factored(
        self,
        vecs: Tensor,
        maps: Tensor,
        slots: tuple[Tensor, Tensor, int, int],
        noise: Tensor | None,
        feats: Tensor | None,
        size: int,
    ) -> Tensor:
        """Same output as ``forward(layout, upsample_nearest_x2(feats))`` for
        ``layout = cat([sum_o vecs[o] (x) maps[o], noise])``, computed without materialising either.

        The first convolution is linear in its input; split its weight along the input channels as
        ``W = [W_obj | W_noise | W_feat]`` (object channels of the layout, noise channels, features):

        - object part: ``sum_o sum_k (W_obj[:, :, k] v_o) shift_k(m_o)`` with ``m_o = avgpool(map_o)`` ``[h, w]``
          (pooling commutes with the sum over objects) and ``shift_k`` the k-th zero-padded 3x3 tap
          (:func:`_taps3x3`): per image one product ``[P, S*9] x [S*9, h*w]`` over its S object slots instead
          of a D-channel convolution;
        - noise part: ``conv3x3(avgpool(noise), W_noise)``;
        - feature part: ``conv3x3(upsample_nearest_x2(feats), W_feat) = conv_transpose(feats, T W_feat T^T,
          stride 2, padding 1)`` (:mod:`benchmark.nn.resample`), 16 instead of 36 multiply-adds per input
          pixel and output channel, and no upsampled copy. For the first module ``feats`` is sg2im's
          all-zero seed, whose contribution (and weight gradient) is exactly 0: ``feats=None`` skips it.

        The same linear map, equal up to float rounding. vecs ``[O, D]``, maps ``[O, 1, H, W]``, noise
        ``[N, Z, H, W]`` or None, feats ``[N, C, size / 2, size / 2]`` or None -> ``[N, out, size, size]``.
        """
        conv = self.net[0]
        assert isinstance(conv, nn.Conv2d)
        img, slot, n, s = slots
        d, z = vecs.shape[1], 0 if noise is None else noise.shape[1]
        weight = conv.weight
        p = weight.shape[0]
        w_obj, w_noise, w_feat = weight[:, :d], weight[:, d : d + z], weight[:, d + z :]
        a = torch.einsum("pdk,od->opk", w_obj.reshape(p, d, 9), vecs)  # [O, P, 9]
        taps = _taps3x3(_pool_to(maps, size).squeeze(1))  # [O, 9, h*w]
        a_pad = a.new_zeros(n, s, p, 9).index_put((img, slot), a)
        t_pad = taps.new_zeros(n, s, 9, size * size).index_put((img, slot), taps)
        obj = torch.bmm(a_pad.permute(0, 2, 1, 3).reshape(n, p, s * 9), t_pad.reshape(n, s * 9, size * size))
        obj = obj.view(n, p, size, size)
        out: Tensor | None = None
        if noise is not None:
            out = F.conv2d(_pool_to(noise, size), w_noise, conv.bias, padding=1)
        if feats is not None:
            up = upsample_nearest_conv3x3(feats, w_feat)
            out = up if out is None else out.add_(up)
        if out is None:
            out = obj + conv.bias.view(1, p, 1, 1) if conv.bias is not None else obj
        else:
            if noise is None and conv.bias is not None:
                out = out.add_(conv.bias.view(1, p, 1, 1))
            out = out.add_(obj)  # in place: keeps the conv output's memory format
        for layer in self.net[1:]:
            out = layer(out)
        return out


def _taps3x3(m: Tensor) -> Tensor:
    """The 9 zero-padded 3x3 shifts of ``m [O, h, w]`` as ``[O, 9, h*w]`` (= ``F.unfold(m[:, None], 3, padding=1)``).

    Tap ``k = 3 dy + dx`` holds ``m[y + dy - 1, x + dx - 1]``, the order of a flattened conv kernel; slicing a
    padded copy is much faster than ``F.unfold`` for one channel on CPU.
    """
    o, h, w = m.shape
    p = F.pad(m, (1, 1, 1, 1))
    return torch.stack([p[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], 1).view(
        o, 9, h * w
    )


def _pool_to(x: Tensor, size: int) -> Tensor:
    """Average-pool ``x [N, C, H, W]`` by the integer factor ``H / size`` (sg2im/crn.py ``RefinementModule``)."""
    big = x.shape[-1]
    if big == size:
        return x
    factor = big // size
    if factor * size != big:
        raise ValueError(f"layout size {big} is not a multiple of the feature size {size}")
    return F.avg_pool2d(x, kernel_size=factor, stride=factor)


class RefinementNetwork(nn.Module):
    """Cascaded refinement network (sg2im/crn.py ``RefinementNetwork``, Chen & Koltun ICCV 2017).

    ``dims = (L, d_1, ..., d_K)``: a zero input ``[N, 1, H / 2^K, W / 2^K]`` goes through K modules, each
    ``upsample x2 (nearest) -> RefinementModule(layout pooled to that size)``, then
    ``conv3x3(d_K -> d_K) -> act -> conv1x1(d_K -> 3)`` gives ``[N, 3, H, W]`` (no output non-linearity).
    """

    def __init__(
        self, dims: tuple[int, ...], normalization: str = "batch", activation: str = "leakyrelu-0.2"
    ):
        super().__init__()
        layout_dim = dims[0]
        self.refinement_modules = nn.ModuleList(
            RefinementModule(layout_dim, 1 if i == 1 else dims[i - 1], dims[i], normalization, activation)
            for i in range(1, len(dims))
        )
        head = [
            nn.Conv2d(dims[-1], dims[-1], kernel_size=3, padding=1),
            get_activation(activation),
            nn.Conv2d(dims[-1], 3, kernel_size=1, padding=0),
        ]
        nn.init.kaiming_normal_(head[0].weight)
        nn.init.kaiming_normal_(head[2].weight)
        self.output_conv = nn.Sequential(*head)
        self.channels_last = False  # set by the owner: channels-last activations on CPU (speed only)

    def _seed(self, n: int, size: int, like: Tensor) -> Tensor:
        k = len(self.refinement_modules)
        s = size // 2**k
        if s == 0 or s * 2**k != size:
            raise ValueError(f"image size {size} must be a multiple of 2^{k} for {k} refinement modules")
        return like.new_zeros(n, 1, s, s)

    def forward(self, layout: Tensor) -> Tensor:
        """Dense path (sg2im): layout ``[N, L, H, W]`` -> image ``[N, 3, H, W]``."""
        feats = self._seed(layout.shape[0], layout.shape[-1], layout)
        if self.channels_last and feats.device.type == "cpu":
            feats = feats.contiguous(memory_format=torch.channels_last)
        for mod in self.refinement_modules:
            feats = mod(layout, F.interpolate(feats, scale_factor=2, mode="nearest"))
        return self.output_conv(feats)

    def forward_factored(
        self, vecs: Tensor, maps: Tensor, obj_to_img: Tensor, noise: Tensor | None, num_images: int
    ) -> Tensor:
        """Factored path: the layout ``cat([sum_o vecs[o] (x) maps[o], noise])`` is never materialised.

        vecs ``[O, D]``, maps ``[O, H, W]``, obj_to_img ``[O]``, noise ``[N, Z, H, W]`` or None -> ``[N, 3, H, W]``;
        equal to ``forward(cat([objects_to_layout(vecs, maps, obj_to_img), noise]))`` up to float rounding.
        """
        size = maps.shape[-1]
        slots = pack_objects(obj_to_img, num_images)
        maps4 = maps.unsqueeze(1)
        cur = self._seed(num_images, size, vecs).shape[-1]
        feats = None  # sg2im's all-zero seed
        for mod in self.refinement_modules:
            cur *= 2
            feats = mod.forward_factored(vecs, maps4, slots, noise, feats, cur)
        assert feats is not None
        return self.output_conv(feats)


# ---------------------------------------------------------------------------------------------------------
# Generator (sg2im/model.py Sg2ImModel)


class Sg2ImGenerator(nn.Module):
    """The SG2Im generator (sg2im/model.py ``Sg2ImModel``).

    ``objs [O]``, ``triples [T, 3]`` -> embeddings ``[O, E]``, ``[T, E]`` -> ``GraphTripleConv(E -> G)`` +
    ``GraphTripleConvNet(G, layers - 1)`` -> object vectors ``[O, G]`` -> ``box_net`` ``[O, 4]`` (MLP, final ReLU),
    ``mask_net`` (4 x [nearest upsample x2, BN, conv3x3, ReLU] from 1x1 to 16x16, conv1x1 -> 1, sigmoid)
    ``[O, M, M]`` -> layout ``[N, G, H, W]`` (``masks_to_layout`` with the GT boxes/masks when given, else the
    predicted ones) + ``Z`` noise channels -> CRN -> ``[N, 3, H, W]`` in ImageNet-normalised space.
    """

    def __init__(self, cfg: Sg2ImConfig, info: DatasetInfo) -> None:
        super().__init__()
        self.image_size = info.image_size
        self.layout_noise_dim = cfg.layout_noise_dim
        self.fast_layout = cfg.fast_layout
        obj_phrases, pred_phrases = _phrases(info)
        enc, weights = cfg.text_encoder, cfg.text_encoder_weights
        # sg2im: nn.Embedding(num_objs + 1, E); the extra row is never indexed, so the table has num_objs rows.
        self.obj_embeddings = NodeEmbedding(obj_phrases, cfg.embedding_dim, encoder=enc, weights=weights)
        self.pred_embeddings = NodeEmbedding(pred_phrases, cfg.embedding_dim, encoder=enc, weights=weights)
        self.gconv: nn.Module
        if cfg.gconv_num_layers == 0:
            self.gconv = nn.Linear(cfg.embedding_dim, cfg.gconv_dim)
        else:
            self.gconv = GraphTripleConv(
                cfg.embedding_dim,
                output_dim=cfg.gconv_dim,
                hidden_dim=cfg.gconv_hidden_dim,
                pooling=cfg.gconv_pooling,
                mlp_normalization=cfg.mlp_normalization,
            )
        self.gconv_net = None
        if cfg.gconv_num_layers > 1:
            self.gconv_net = GraphTripleConvNet(
                cfg.gconv_dim,
                num_layers=cfg.gconv_num_layers - 1,
                hidden_dim=cfg.gconv_hidden_dim,
                pooling=cfg.gconv_pooling,
                mlp_normalization=cfg.mlp_normalization,
            )
        self.box_net = build_mlp(
            [cfg.gconv_dim, cfg.gconv_hidden_dim, 4],
            batch_norm=cfg.mlp_normalization,
            final_nonlinearity=cfg.box_net_final_relu,
        )
        self.mask_size = cfg.mask_size
        self.mask_net = self._build_mask_net(cfg.gconv_dim, cfg.mask_size) if cfg.mask_size > 0 else None
        # sg2im also builds rel_aux_net (predicate classifier, loss weight 0 = deprecated): never used here.
        self.refinement_net = RefinementNetwork(
            (cfg.gconv_dim + cfg.layout_noise_dim, *cfg.refinement_dims), cfg.normalization, cfg.activation
        )
        self.refinement_net.channels_last = cfg.channels_last

    @staticmethod
    def _build_mask_net(dim: int, mask_size: int) -> nn.Sequential:
        """sg2im/model.py ``_build_mask_net``: [Upsample x2, BN, conv3x3, ReLU] until ``mask_size``, conv1x1 -> 1."""
        layers: list[nn.Module] = []
        cur = 1
        while cur < mask_size:
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.BatchNorm2d(dim),
                nn.Conv2d(dim, dim, kernel_size=3, padding=1),
                nn.ReLU(),
            ]
            cur *= 2
        if cur != mask_size:
            raise ValueError(f"mask_size must be a power of 2, got {mask_size}")
        layers.append(nn.Conv2d(dim, 1, kernel_size=1))
        return nn.Sequential(*layers)

    def encode(self, objs: Tensor, triples: Tensor) -> Tensor:
        """Object vectors ``[O, G]`` after the graph convolutions (sg2im ``Sg2ImModel.forward``, first half)."""
        s, p, o = triples[:, 0], triples[:, 1], triples[:, 2]
        edges = torch.stack([s, o], dim=1)
        obj_vecs = self.obj_embeddings(objs)
        pred_vecs = self.pred_embeddings(p)
        if isinstance(self.gconv, nn.Linear):
            obj_vecs = self.gconv(obj_vecs)
        else:
            obj_vecs, pred_vecs = self.gconv(obj_vecs, pred_vecs, edges)
        if self.gconv_net is not None:
            obj_vecs, pred_vecs = self.gconv_net(obj_vecs, pred_vecs, edges)
        return obj_vecs

    def predict_masks(self, obj_vecs: Tensor) -> Tensor:
        """Mask probabilities ``[O, M, M]`` from object vectors ``[O, G]`` (sigmoid of the mask net)."""
        assert self.mask_net is not None
        return self.mask_net(obj_vecs.view(obj_vecs.shape[0], -1, 1, 1)).squeeze(1).sigmoid()

    def _mask_net_statistics(self, obj_vecs: Tensor) -> None:
        """The mask net up to (including) its last BatchNorm, without autograd: updates its running stats."""
        assert self.mask_net is not None
        last = max(i for i, layer in enumerate(self.mask_net) if isinstance(layer, nn.BatchNorm2d))
        with torch.no_grad():
            self.mask_net[: last + 1](obj_vecs.detach().view(obj_vecs.shape[0], -1, 1, 1))

    def forward(
        self,
        objs: Tensor,
        triples: Tensor,
        obj_to_img: Tensor,
        num_images: int,
        noise: Tensor | None,
        boxes_gt: Tensor | None = None,
        masks_gt: Tensor | None = None,
        use_gt: Tensor | None = None,
        need_masks: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Returns ``(img [N, 3, H, W], boxes_pred [O, 4], masks_pred [O, M, M] or None)``.

        The layout uses ``boxes_gt``/``masks_gt`` where given (rows with ``use_gt`` False take the predicted
        box and mask), else the predictions. ``noise [N, Z, H, W]`` fills the layout-noise channels.

        ``need_masks=False`` (the caller uses neither the predicted masks nor a mask loss; ``masks_gt`` given
        for every object): sg2im still runs the mask net, whose output then reaches no loss, so its only
        effect is to move the mask net's batch-norm running statistics in train mode. We run it only up to
        its last BatchNorm, without autograd, which moves the same statistics (nothing in eval mode), and
        return ``masks_pred = None``.
        """
        obj_vecs = self.encode(objs, triples)
        boxes_pred = self.box_net(obj_vecs)
        masks_pred = None
        if self.mask_net is not None:
            if need_masks or masks_gt is None:
                masks_pred = self.predict_masks(obj_vecs)
            elif self.training:
                self._mask_net_statistics(obj_vecs)
        boxes = boxes_pred if boxes_gt is None else boxes_gt
        masks = masks_pred if masks_gt is None else masks_gt
        if use_gt is not None and boxes_gt is not None and not bool(use_gt.all()):
            keep = use_gt.view(-1, 1)
            boxes = torch.where(keep, boxes_gt, boxes_pred)
            if masks_gt is not None and masks_pred is not None:
                masks = torch.where(keep.view(-1, 1, 1), masks_gt, masks_pred)
        h = self.image_size
        maps = object_maps(boxes, masks, h, h)  # [O, H, W]; boxes only when there is no mask net
        if self.fast_layout:
            img = self.refinement_net.forward_factored(obj_vecs, maps, obj_to_img, noise, num_images)
        else:
            layout = objects_to_layout(obj_vecs, maps, obj_to_img, num_images)
            if noise is not None:
                layout = torch.cat([layout, noise], dim=1)
            img = self.refinement_net(layout)
        return img, boxes_pred, masks_pred


def _phrases(info: DatasetInfo) -> tuple[tuple[str, ...], tuple[str, ...]]:
    def clean(names: Any) -> tuple[str, ...]:
        return tuple(n.replace("_", " ").strip() for n in names)

    obj = info.phrases or clean(info.vocab.object_idx_to_name)
    pred = info.pred_phrases or clean(info.vocab.pred_idx_to_name)
    return tuple(obj), tuple(pred)


# ---------------------------------------------------------------------------------------------------------
# Discriminators (sg2im/discriminators.py, sg2im/bilinear.py)


def crop_bbox_batch(
    feats: Tensor, bbox: Tensor, bbox_to_feats: Tensor, HH: int, WW: int | None = None
) -> Tensor:
    """Differentiable bilinear crops ``[B, C, HH, WW]`` of ``feats [N, C, H, W]`` at ``bbox [B, 4]``.

    Follows sg2im/bilinear.py ``crop_bbox_batch`` (cudnn backend) / ``crop_bbox``: box ``b`` is cut from
    ``feats[bbox_to_feats[b]]``; the sampling grid is ``linspace(x0, x1, WW) x linspace(y0, y1, HH)`` mapped
    to [-1, 1] and sampled with ``grid_sample`` (``align_corners=True``, PyTorch 0.4 semantics: box
    coordinate 0 is the centre of the first pixel, 1 the centre of the last). sg2im loops over the images
    and re-permutes; one ``grid_sample`` over the gathered images gives the same crops.
    """
    WW = HH if WW is None else WW
    b = bbox.shape[0]
    box = 2 * bbox.to(feats.dtype) - 1
    t_x = torch.linspace(0, 1, WW, device=feats.device, dtype=feats.dtype)
    t_y = torch.linspace(0, 1, HH, device=feats.device, dtype=feats.dtype)
    xs = box[:, 0:1] * (1 - t_x) + box[:, 2:3] * t_x  # [B, WW]  (sg2im tensor_linspace)
    ys = box[:, 1:2] * (1 - t_y) + box[:, 3:4] * t_y  # [B, HH]
    grid = torch.stack([xs.view(b, 1, WW).expand(b, HH, WW), ys.view(b, HH, 1).expand(b, HH, WW)], dim=3)
    src = feats.index_select(0, bbox_to_feats)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class PatchDiscriminator(nn.Module):
    """Patch image discriminator (sg2im/discriminators.py ``PatchDiscriminator``).

    ``build_cnn("I3," + arch)``; the 256-channel output map ``[N, 256, h, w]`` (6x6 at 64x64 input) is used
    directly as logits, every element one real/fake score (sg2im builds a 1x1 ``classifier`` conv but never
    calls it; it is not built here).
    """

    def __init__(self, arch: str, normalization: str, activation: str, padding: str) -> None:
        super().__init__()
        self.cnn, _ = build_cnn(f"I3,{arch}", normalization, activation, padding)

    def forward(self, x: Tensor) -> Tensor:
        """x ``[N, 3, H, W]`` (normalised space) -> logits ``[N, C, h, w]``."""
        return self.cnn(x)


class AcCropDiscriminator(nn.Module):
    """Object discriminator with auxiliary classifier (sg2im ``AcCropDiscriminator`` + ``AcDiscriminator``).

    Each object is cropped at its box to ``object_size`` (``crop_bbox_batch``), then
    ``build_cnn(arch) -> global average pool -> Linear(C, 1024)`` gives ``h [B, 1024]`` (no activation, as
    the reference); ``real_classifier`` ``Linear(1024, 1)`` gives the real/fake logit and ``obj_classifier``
    ``Linear(1024, num_objects)`` the class scores, with ``ac_loss = CE(scores, objs)`` (mean over objects).
    """

    def __init__(
        self, num_objects: int, arch: str, normalization: str, activation: str, padding: str, object_size: int
    ) -> None:
        super().__init__()
        cnn, dim = build_cnn(arch, normalization, activation, padding)
        self.cnn = cnn
        self.fc = nn.Linear(dim, 1024)
        self.real_classifier = nn.Linear(1024, 1)
        self.obj_classifier = nn.Linear(1024, num_objects)
        self.object_size = object_size

    def forward(self, imgs: Tensor, objs: Tensor, boxes: Tensor, obj_to_img: Tensor) -> tuple[Tensor, Tensor]:
        """imgs ``[N, 3, H, W]``, objs ``[B]``, boxes ``[B, 4]``, obj_to_img ``[B]`` -> (real logits ``[B, 1]``, ac_loss)."""
        crops = crop_bbox_batch(imgs, boxes, obj_to_img, self.object_size)
        if imgs.is_contiguous(memory_format=torch.channels_last):
            crops = crops.contiguous(memory_format=torch.channels_last)
        vecs = self.fc(self.cnn(crops).mean(dim=(2, 3)))
        return self.real_classifier(vecs), F.cross_entropy(self.obj_classifier(vecs), objs)


# ---------------------------------------------------------------------------------------------------------
# Losses (sg2im/losses.py)


def bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Mean of the numerically stable BCE with logits, ``max(x, 0) - x y + log(1 + exp(-|x|))`` (sg2im ``bce_loss``)."""
    return (logits.clamp(min=0) - logits * target + (1 + (-logits.abs()).exp()).log()).mean()


def gan_g_loss(scores_fake: Tensor) -> Tensor:
    """Non-saturating generator loss ``BCE(D(fake), 1)`` over all score elements (sg2im ``gan_g_loss``)."""
    s = scores_fake.reshape(-1)
    return bce_loss(s, torch.ones_like(s))


def gan_d_loss(scores_real: Tensor, scores_fake: Tensor) -> Tensor:
    """Discriminator loss ``BCE(D(real), 1) + BCE(D(fake), 0)`` (sg2im ``gan_d_loss``)."""
    r, f = scores_real.reshape(-1), scores_fake.reshape(-1)
    return bce_loss(r, torch.ones_like(r)) + bce_loss(f, torch.zeros_like(f))


def lsgan_g_loss(scores_fake: Tensor) -> Tensor:
    """``MSE(sigmoid(D(fake)), 1)`` (sg2im ``lsgan_g_loss``)."""
    s = scores_fake.reshape(-1).sigmoid()
    return F.mse_loss(s, torch.ones_like(s))


def lsgan_d_loss(scores_real: Tensor, scores_fake: Tensor) -> Tensor:
    """``MSE(sigmoid(D(real)), 1) + MSE(sigmoid(D(fake)), 0)`` (sg2im ``lsgan_d_loss``)."""
    r, f = scores_real.reshape(-1).sigmoid(), scores_fake.reshape(-1).sigmoid()
    return F.mse_loss(r, torch.ones_like(r)) + F.mse_loss(f, torch.zeros_like(f))


def wgan_g_loss(scores_fake: Tensor) -> Tensor:
    """``-mean D(fake)`` (sg2im ``wgan_g_loss``)."""
    return -scores_fake.mean()


def wgan_d_loss(scores_real: Tensor, scores_fake: Tensor) -> Tensor:
    """``mean D(fake) - mean D(real)`` (sg2im ``wgan_d_loss``)."""
    return scores_fake.mean() - scores_real.mean()


GAN_LOSSES = {
    "gan": (gan_g_loss, gan_d_loss),
    "lsgan": (lsgan_g_loss, lsgan_d_loss),
    "wgan": (wgan_g_loss, wgan_d_loss),
}


# ---------------------------------------------------------------------------------------------------------
# The method


@dataclass(frozen=True)
class Sg2ImConfig:
    """SG2Im hyper-parameters; defaults are google/sg2im ``scripts/train.py``'s."""

    text_encoder: str = "learned"  # node embeddings: learned table (sg2im) or a frozen text encoder
    text_encoder_weights: str = ""  # "" = the encoder's default weights (see benchmark.text_encoders)
    # Generator
    embedding_dim: int = 128  # train.py --embedding_dim (the model class default is 64)
    gconv_dim: int = 128
    gconv_hidden_dim: int = 512
    gconv_num_layers: int = 5
    gconv_pooling: str = "avg"
    mlp_normalization: str = "none"
    refinement_dims: tuple[int, ...] = (1024, 512, 256, 128, 64)
    normalization: str = "batch"
    activation: str = "leakyrelu-0.2"
    layout_noise_dim: int = 32
    mask_size: int = 16  # 0 = no mask net, boxes only
    # sg2im's box regressor ends in a ReLU (build_mlp's final_nonlinearity=True); a coordinate whose unit goes
    # negative for every input never recovers (the quick tier lost y0 that way), so the quick tier drops it.
    box_net_final_relu: bool = True
    # Optimisation
    learning_rate: float = 1e-4  # Adam (default betas) for G and both Ds
    eval_mode_after: int = 100_000  # G -> eval() and a new Adam at this step (-1: never)
    # Generator losses
    l1_pixel_loss_weight: float = 1.0
    bbox_pred_loss_weight: float = 10.0  # F.mse_loss (the paper describes L1; the code uses MSE)
    mask_loss_weight: float = 0.0  # TRAINING.md: 0.1 works well for COCO
    # Discriminators
    discriminator_loss_weight: float = 0.01
    gan_loss_type: str = "gan"
    d_normalization: str = "batch"
    d_padding: str = "valid"
    d_activation: str = "leakyrelu-0.2"
    d_obj_arch: str = "C4-64-2,C4-128-2,C4-256-2"
    crop_size: int = 32
    d_obj_weight: float = 1.0  # multiplied by discriminator_loss_weight
    ac_loss_weight: float = 0.1  # NOT multiplied by discriminator_loss_weight (code; TRAINING.md says it is)
    d_img_arch: str = "C4-64-2,C4-128-2,C4-256-2"
    d_img_weight: float = 1.0  # multiplied by discriminator_loss_weight
    # Speed (outputs unchanged up to float rounding)
    fast_layout: bool = True  # factored layout convolution in the CRN (see RefinementModule.forward_factored)
    channels_last: bool = True  # channels-last memory format for the convolutions on CPU


_QUICK_1_1 = {  # the quick tier of protocol 1.1 (results written then are labelled against it)
    # 32x32 on 2 CPU cores in a few minutes (~0.8M-parameter generator); same structure, losses and schedule.
    "method.embedding_dim": 32,
    "method.gconv_dim": 32,
    "method.gconv_hidden_dim": 128,
    "method.refinement_dims": (128, 64, 32, 16),
    "method.layout_noise_dim": 8,
    "method.d_obj_arch": "C4-16-2,C4-32-2,C4-64-2",
    "method.d_img_arch": "C4-32-2,C4-64-2,C4-128-2",
    "method.mask_loss_weight": 0.1,  # TRAINING.md's COCO setting: trains the mask net for predicted layouts
    "method.box_net_final_relu": False,  # a dead ReLU froze y0 at 0 in the quick run (see Sg2ImConfig)
    "method.eval_mode_after": 150,  # 10% of the 1,500 steps, the reference's ratio (100k of 1M)
}
# Protocol 1.2 (issue #13): Adam at 1e-3 instead of the reference's 1e-4 and 3,000 iterations (an iteration of
# this generator costs about half a quick diffusion step). Measured on shapes/test, 256 graphs, predicted
# layout, one seed: FID 253 (1.1) -> 141 (lr 1e-3, 1,500 it.) -> 147 (lr 2e-3) -> 94 (lr 1e-3, 3,000 it.).
_QUICK_1_2 = {
    **_QUICK_1_1,
    "method.learning_rate": 1e-3,
    "train.steps": 3000,
    "method.eval_mode_after": 300,  # 10% of the steps, the reference's ratio (100k of 1M)
}
# Protocol 1.4 (issue #13): 4,500 iterations. Under 1.2 one seed in three landed far above the others (test FID
# 94 / 97 / 134 for sg2im, 95 / 144 / 117 for sg2im_minilm). The two worst runs, continued at the same learning
# rate, score 134 -> 88 -> 76 (sg2im seed 2) and 144 -> 114 -> 104 (sg2im_minilm seed 1) after 3,000 / 3,750 /
# 4,500 iterations, with relation satisfaction 0.83 -> 0.90 and 0.70 -> 0.84; a linear learning-rate decay
# over the last half of 3,000 iterations instead helped one (120) and hurt the other (152, relations 0.44), and
# an EMA of the generator's weights (0.999) was worse for both. An iteration costs 0.126 s on 2 idle cores, so
# 4,500 fit the ~12-minute quick budget with sampling and metrics. eval_mode_after stays at 300, the value
# those runs used. The committed 1.4 runs (3 seeds, one at a time on the 2 idle cores): test FID 84.4 +- 4.8
# (sg2im) and 94.3 +- 13.6 (sg2im_minilm), worst seed 109.8, relation satisfaction 0.88 / 0.84; 10.7-11.2
# minutes per run.
_QUICK = {**_QUICK_1_2, "train.steps": 4500}
_SMOKE = {
    "method.embedding_dim": 16,
    "method.gconv_dim": 16,
    "method.gconv_hidden_dim": 32,
    "method.gconv_num_layers": 2,
    "method.refinement_dims": (32, 16, 8),
    "method.layout_noise_dim": 4,
    "method.d_obj_arch": "C4-8-2,C4-16-2",
    "method.d_img_arch": "C4-8-2,C4-16-2",
    "method.crop_size": 16,
    "method.eval_mode_after": 1,
}


@register("method", "sg2im")
@register_presets(
    "sg2im",
    {
        # Variants that differ only in the node embeddings. The frozen encoders whose weights are not shipped
        # (clip, data2vec) take random weights only when asked for by name (--set method.text_encoder_weights=random).
        "sg2im_clip": {
            "summary": "SG2Im with frozen CLIP text embeddings of the object/predicate phrases (+ learned projection).",
            "config": {"text_encoder": "clip"},
        },
        "sg2im_data2vec": {
            "summary": "SG2Im with frozen data2vec-text embeddings of the object/predicate phrases (+ learned projection).",
            "config": {"text_encoder": "data2vec"},
        },
        "sg2im_minilm": {
            "summary": "SG2Im with frozen MiniLM-L6 sentence embeddings of the object/predicate phrases (+ learned projection).",
            "config": {"text_encoder": "minilm"},
        },
    },
)
class Sg2Im(Method):
    """SG2Im (Johnson et al. CVPR 2018): graph convolution, box/mask layout, CRN, patch + object GAN losses.

    One :meth:`train_step` is one iteration of google/sg2im ``scripts/train.py``: a generator step on
    ``L_G = 1.0 L1 + 10 MSE_box + w_m BCE_mask + 0.1 AC(fake) + 0.01 (GAN_obj(fake) + GAN_img(fake))``,
    then ``L_Dobj = GAN_d(real, fake) + AC(real) + AC(fake)`` and ``L_Dimg = GAN_d(real, fake)``.
    """

    Config = Sg2ImConfig
    tier_overrides = {"smoke": _SMOKE, "quick": _QUICK, "full": {"train.steps": 1_000_000}}
    tier_history = {"1.1": {"quick": _QUICK_1_1}, "1.3": {"quick": _QUICK_1_2}}  # key: last version in force
    # The CRN runs forward_factored (not forward), which Module.compile does not reach: the discriminators only.
    compile_targets = ("obj_discriminator.cnn", "img_discriminator")

    def __init__(self, cfg: Sg2ImConfig, info: DatasetInfo) -> None:
        super().__init__(cfg, info)
        if cfg.gan_loss_type not in GAN_LOSSES:
            raise ValueError(f"gan_loss_type {cfg.gan_loss_type!r}; valid: {', '.join(GAN_LOSSES)}")
        self.generator = Sg2ImGenerator(cfg, info)
        d_w = cfg.discriminator_loss_weight
        self.obj_discriminator = None
        if d_w != 0 and cfg.d_obj_weight != 0:
            self.obj_discriminator = AcCropDiscriminator(
                info.vocab.num_objects,
                cfg.d_obj_arch,
                cfg.d_normalization,
                cfg.d_activation,
                cfg.d_padding,
                cfg.crop_size,
            )
        self.img_discriminator = None
        if d_w != 0 and cfg.d_img_weight != 0:
            self.img_discriminator = PatchDiscriminator(
                cfg.d_img_arch, cfg.d_normalization, cfg.d_activation, cfg.d_padding
            )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.gan_g_loss, self.gan_d_loss = GAN_LOSSES[cfg.gan_loss_type]
        self._channels_last_weights = False
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=cfg.learning_rate)
        if self.obj_discriminator is not None:
            self.optimizer_d_obj = torch.optim.Adam(self.obj_discriminator.parameters(), lr=cfg.learning_rate)
        if self.img_discriminator is not None:
            self.optimizer_d_img = torch.optim.Adam(self.img_discriminator.parameters(), lr=cfg.learning_rate)

    # -- plumbing -----------------------------------------------------------------------------------------

    def setup(self, train_set: SceneGraphDataset) -> None:
        """Compute the frozen text-encoder tables now, so missing encoder weights stop the run before step 0."""
        self.generator.obj_embeddings.materialize()
        self.generator.pred_embeddings.materialize()

    def weight_provenance(self) -> list[WeightProvenance]:
        out: list[WeightProvenance] = []
        for emb in (self.generator.obj_embeddings, self.generator.pred_embeddings):
            out += [p for p in emb.provenance() if p not in out]
        return out

    def _fmt(self, x: Tensor) -> Tensor:
        if self.cfg.channels_last and x.device.type == "cpu" and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _weights_format(self, device: torch.device) -> None:
        """On CPU with ``channels_last``: keep the 4-D weights channels-last too, so that oneDNN does not
        convert them on every call (the Parameter objects, hence the optimizers, are kept; values unchanged)."""
        want = self.cfg.channels_last and device.type == "cpu"
        if want != self._channels_last_weights:
            with torch.inference_mode(False), torch.no_grad():  # normal tensors even when sampling
                self.to(memory_format=torch.channels_last if want else torch.contiguous_format)
        self._channels_last_weights = want

    def preprocess(self, images: Tensor) -> Tensor:
        """[0, 1] images -> sg2im's ImageNet-normalised space ``(x - mean) / std`` (sg2im ``imagenet_preprocess``)."""
        return self._fmt((images - self.mean) / self.std)

    def deprocess(self, images: Tensor) -> Tensor:
        """Normalised space -> [0, 1], clamped (sg2im ``imagenet_deprocess``; NOT its per-image min-max rescale)."""
        return (images * self.std + self.mean).clamp(0, 1)

    def _run_generator(
        self, batch: SceneGraphBatch, noise: Tensor | None, layout: str, need_masks: bool = True
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        gt = layout == "gt"
        use_gt = batch.has_layout if gt else None
        return self.generator(
            batch.objs,
            batch.triples,
            batch.obj_to_img,
            batch.num_images,
            noise,
            boxes_gt=batch.boxes if gt else None,
            masks_gt=batch.masks if gt and self.generator.mask_net is not None else None,
            use_gt=use_gt,
            need_masks=need_masks,
        )

    def _noise(self, n: int, generator: list[torch.Generator] | None, device: torch.device) -> Tensor | None:
        z, h = self.cfg.layout_noise_dim, self.info.image_size
        if z <= 0:
            return None
        if generator is None:  # training: the (seeded) global torch RNG, as sg2im's torch.randn
            noise = torch.randn(n, z, h, h, device=device)
        else:
            noise = randn(generator, (z, h, h), device=device)
        return self._fmt(noise)

    # -- losses ---------------------------------------------------------------------------------------------

    def generator_losses(
        self, batch: SceneGraphBatch, imgs: Tensor, noise: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """One generator forward and its loss (sg2im train.py ``calculate_model_losses`` + the D terms).

        Returns ``(total, terms, imgs_pred)``; ``terms`` holds each WEIGHTED term (as sg2im's ``add_loss``
        records them) and ``total = sum(terms.values())``:
        ``L1_pixel_loss = w_l1 |G - x|_1``, ``bbox_pred = w_box MSE(b_pred, b_gt)``,
        ``mask_loss = w_m BCE(m_pred, m_gt)`` (when ``w_m > 0``), ``ac_loss = w_ac CE(D_obj cls(G crops), objs)``,
        ``g_gan_obj_loss = w_d w_obj BCE(D_obj(G crops), 1)``, ``g_gan_img_loss = w_d w_img BCE(D_img(G), 1)``.
        """
        cfg = self.cfg
        known = (
            batch.has_layout
            if batch.has_layout is not None
            else torch.ones_like(batch.objs, dtype=torch.bool)
        )
        all_known = bool(known.all())
        need_masks = cfg.mask_loss_weight > 0 or batch.masks is None or not all_known
        imgs_pred, boxes_pred, masks_pred = self._run_generator(batch, noise, "gt", need_masks)
        terms: dict[str, Tensor] = {}
        terms["L1_pixel_loss"] = cfg.l1_pixel_loss_weight * F.l1_loss(imgs_pred, imgs)
        bp, bg = (boxes_pred, batch.boxes) if all_known else (boxes_pred[known], batch.boxes[known])
        terms["bbox_pred"] = cfg.bbox_pred_loss_weight * F.mse_loss(bp, bg)
        if cfg.mask_loss_weight > 0 and batch.masks is not None and masks_pred is not None:
            mp, mg = (masks_pred, batch.masks) if all_known else (masks_pred[known], batch.masks[known])
            terms["mask_loss"] = cfg.mask_loss_weight * F.binary_cross_entropy(mp, mg.float())
        if self.obj_discriminator is not None:
            scores_fake, ac_loss = self._d_obj(imgs_pred, batch, known, all_known)
            terms["ac_loss"] = cfg.ac_loss_weight * ac_loss
            w = cfg.discriminator_loss_weight * cfg.d_obj_weight
            terms["g_gan_obj_loss"] = w * self.gan_g_loss(scores_fake)
        if self.img_discriminator is not None:
            w = cfg.discriminator_loss_weight * cfg.d_img_weight
            terms["g_gan_img_loss"] = w * self.gan_g_loss(self.img_discriminator(imgs_pred))
        total = torch.stack(list(terms.values())).sum()
        return total, terms, imgs_pred

    def _d_obj(
        self, imgs: Tensor, batch: SceneGraphBatch, known: Tensor, all_known: bool
    ) -> tuple[Tensor, Tensor]:
        assert self.obj_discriminator is not None
        if all_known:
            return self.obj_discriminator(imgs, batch.objs, batch.boxes, batch.obj_to_img)
        return self.obj_discriminator(imgs, batch.objs[known], batch.boxes[known], batch.obj_to_img[known])

    # -- training -------------------------------------------------------------------------------------------

    def train_step(self, batch: SceneGraphBatch, step: int) -> dict[str, float]:
        """One sg2im iteration: G step, object-D step, image-D step (scripts/train.py main loop)."""
        cfg = self.cfg
        if batch.images is None:
            raise ValueError("SG2Im training needs images in the batch")
        if step == cfg.eval_mode_after:
            # train.py: `if t == args.eval_mode_after: model.eval(); optimizer = optim.Adam(...)`.
            self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=cfg.learning_rate)
        # The trainer puts the whole method in train mode; G stays in eval mode from eval_mode_after on
        # (also after a resume, as train.py's `if 0 <= args.eval_mode_after <= t: model.eval()`).
        self.generator.train(not (0 <= cfg.eval_mode_after <= step))
        for d in (self.obj_discriminator, self.img_discriminator):
            if d is not None:
                d.train()

        self._weights_format(batch.images.device)
        imgs = self.preprocess(batch.images)
        noise = self._noise(batch.num_images, None, imgs.device)
        discriminators = [d for d in (self.obj_discriminator, self.img_discriminator) if d is not None]
        # D parameters get no gradient from the G step (sg2im computes it and zeroes it before the D step).
        for d in discriminators:
            d.requires_grad_(False)
        try:
            total, terms, imgs_pred = self.generator_losses(batch, imgs, noise)
        finally:
            for d in discriminators:
                d.requires_grad_(True)
        out = {k: v.detach().item() for k, v in terms.items()}
        out["total_loss"] = total.detach().item()
        if not math.isfinite(out["total_loss"]):
            # train.py: 'WARNING: Got loss = NaN, not backpropping' and `continue` (no D steps either).
            return {"skipped": 1.0}
        self.optimizer.zero_grad(set_to_none=True)
        accel.backward(total)
        accel.step(self.optimizer)

        fake = imgs_pred.detach()
        known = (
            batch.has_layout
            if batch.has_layout is not None
            else torch.ones_like(batch.objs, dtype=torch.bool)
        )
        all_known = bool(known.all())
        if self.obj_discriminator is not None:
            scores_fake, ac_fake = self._d_obj(fake, batch, known, all_known)
            scores_real, ac_real = self._d_obj(imgs, batch, known, all_known)
            d_gan = self.gan_d_loss(scores_real, scores_fake)
            self.optimizer_d_obj.zero_grad(set_to_none=True)
            accel.backward(d_gan + ac_real + ac_fake)
            accel.step(self.optimizer_d_obj)
            out.update(
                d_obj_gan_loss=d_gan.item(), d_ac_loss_real=ac_real.item(), d_ac_loss_fake=ac_fake.item()
            )
        if self.img_discriminator is not None:
            # train.py scores the fakes first (`scores_fake = img_discriminator(imgs_fake)`, then real): with
            # BatchNorm in the discriminator the order sets its running statistics, so it follows the reference.
            scores_fake = self.img_discriminator(fake)
            scores_real = self.img_discriminator(imgs)
            d_gan = self.gan_d_loss(scores_real, scores_fake)
            self.optimizer_d_img.zero_grad(set_to_none=True)
            accel.backward(d_gan)
            accel.step(self.optimizer_d_img)
            out["d_img_gan_loss"] = d_gan.item()
        return out

    # -- sampling -------------------------------------------------------------------------------------------

    def sample(
        self, batch: SceneGraphBatch, generator: list[torch.Generator], layout: str = "pred"
    ) -> Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1]; layout "pred" (predicted boxes and masks, sg2im's
        ``sample_images.py`` default) or "gt" (the batch's boxes/masks where ``has_layout``). The generator runs
        in eval mode (BN running statistics), so a sample does not depend on its batch; all noise comes from
        the per-image generators."""
        if layout not in ("pred", "gt"):
            raise ValueError(f"layout must be 'pred' or 'gt', got {layout!r}")
        self._weights_format(batch.objs.device)
        was_training = self.generator.training
        self.generator.eval()
        try:
            with torch.no_grad():
                noise = self._noise(batch.num_images, generator, batch.objs.device)
                imgs, _, _ = self._run_generator(batch, noise, layout)
        finally:
            self.generator.train(was_training)
        return self.deprocess(imgs).float().contiguous()

    def predict_layout(self, batch: SceneGraphBatch) -> tuple[Tensor, Tensor | None]:
        """Predicted boxes ``[O, 4]`` and masks ``[O, M, M]`` (or None) of a batch, generator in eval mode."""
        was_training = self.generator.training
        self.generator.eval()
        try:
            with torch.no_grad():
                vecs = self.generator.encode(batch.objs, batch.triples)
                masks = self.generator.predict_masks(vecs) if self.generator.mask_net is not None else None
                return self.generator.box_net(vecs), masks
        finally:
            self.generator.train(was_training)

    def predict_boxes(self, batch: SceneGraphBatch, generator: list[torch.Generator]) -> Tensor:
        """The box net's output ``[O, 4]``, which ``sample(layout="pred")`` renders as is (no noise involved)."""
        return self.predict_layout(batch)[0]
