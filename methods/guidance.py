"""SceneGenie-style sampling-time guidance for any eps-predicting diffusion method: a box term and a CLIP term.

SceneGenie (Farshad et al., ICCV 2023; code ``azadef/scenegenie``, ``ldm/modules/guidance.py``
``Guider.modify_score``) corrects the noise prediction at every sampling step with the gradient of a guidance
loss ``L(x_t)``, as classifier guidance does (Dhariwal & Nichol 2021, eq. 14 in the eps form):

    eps'(x_t, t) = eps(x_t, t) + sqrt(1 - abar_t) * sum_j w_j * grad_{x_t} L_j(x_t)

so that the sampler's ``x_0 = (x_t - sqrt(1 - abar_t) eps') / sqrt(abar_t)`` and every step move ``x_t`` down
``L``. Two terms, each with its own weight ``w_j`` (0 = the term is not computed):

- **CLIP term** (the released ``modify_score``): ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` with
  ``eps`` held fixed (the released code does not differentiate through the denoiser, so
  ``grad_{x_t} = grad_{x0_hat} / sqrt(abar_t)``), then

      L_clip = mean_c D(CLIP_img(cut_c(x0_hat)), CLIP_txt(graph caption))
             + sum_k a_k / (sum_k' a_k') * mean_c D(CLIP_img(cut_c(canvas_k)), CLIP_txt(phrase_k))

  with ``D(u, v) = 2 arcsin(|u - v| / 2)^2`` on unit vectors (the spherical distance loss), ``cut_c`` random
  square cutouts (``MakeCutouts``: side ``u^cut_pow (max - min) + min``, ``cut_pow = 1``, random offset,
  average-pooled to CLIP's input size, ``guidance_cutouts`` of them, 16 as released), ``canvas_k`` an image
  of N(0, 1) noise except object k's box, which holds ``x0_hat`` (``create_new_patch``), ``a_k`` the box area.
- **Box term** (no CLIP needed): the cross-attention energy of training-free layout guidance (Chen, Laina,
  Vedaldi, "Training-Free Layout Control with Cross-Attention Guidance", WACV 2024, arXiv 2304.03373; code
  ``silent-chen/layout-guidance`` ``utils.py`` ``compute_ca_loss``):

      E = mean_{layers, objects k} (1 - sum_{p in box_k} A_k(p) / sum_p A_k(p))^2

  where ``A_k(p)`` is the attention probability (mean over heads) of pixel query ``p`` on object k's token,
  read from the denoiser's cross-attention blocks while it predicts ``eps`` (one forward + backward through
  the denoiser per guided step).

Deviations from the released code, each with its reason:

- Sign: ``Guider.modify_score`` computes ``e_t - sqrt(1 - abar) * scale * grad L``, which moves ``x0_hat`` *up*
  the distance (its own unused ``cond_fn`` negates the gradient first); we add it. ``tests/methods/
  test_guidance.py`` checks that a step with our sign lowers each term's loss and that the released sign raises it.
- ``sqrt(1 - abar_t)``: the released code reads it from ``ddim_sqrt_one_minus_alphas[self.index]``, an array in
  ascending t indexed by a step counter that starts at the noisiest step and wraps at 50, so it scales the
  gradient with the value of one of the 50 smallest timesteps; we use the step's own ``abar_t``.
- Caption: our scene graphs have none, so the whole-image text is one phrase per graph built from its triples,
  ``"red square left of blue circle, ..."`` (``__in_image__`` triples left out; a graph without other triples
  lists its objects), see :func:`graph_captions`.
- Canvas: the released code decodes a 256 px image and cuts 224 px crops (87.5-100 % of the side). Our images
  are 32-64 px, smaller than CLIP's input, so ``x0_hat`` is resized (bilinear) to the same ratio,
  ``round(cut * 256 / 224)`` px, before the cutouts; object boxes are located on that canvas as released
  (``int(box * side)``). The released canvas is one image (batch 1, hard-coded 256 px); here every image has its own.
- Randomness: cutouts and canvas noise come from one generator per image, seeded from that image's sampling
  generator's seed (the released code uses the global RNG and shares cutouts across the batch), so an image
  does not depend on its batch and the sampler's own noise stream is not consumed.
- Box term: Chen et al. update the latent directly (``z_t -= sigma_t^2 grad E``, up to 5 times per step while
  ``E > 0.2``, in the first 10 of 50 steps) from the 16x16 mid/up maps of Stable Diffusion, whose softmax runs
  over text tokens only. We apply one gradient per step through eps as above (the same form as the CLIP term,
  so the weights and the schedule are shared), average every cross-attention block of the denoiser (its maps
  are 4-16 px), let the box cover pixels fractionally (a 2 px box on a 4 px map is not lost to truncation), and
  our UNet's softmax runs over object tokens and pixels together (GLIDE-style attention).
- Schedule: the released code guides every step with a constant scale (1.0, ``Guider(sampler)``);
  ``guidance_until = 0`` does the same, ``u > 0`` guides only the steps with ``t >= u T`` (the noisy start;
  ``u = 0.8`` is Chen et al.'s first 10 of 50 steps).
- Without CLIP weights (none are obtainable offline) the CLIP term stops with the text encoder's
  :class:`~benchmark.text_encoders.base.WeightsUnavailable` message when the method is built, before sampling.

A method adopts the guidance with :func:`check_guidance_config` on its config (fields ``guidance``,
``guidance_box_weight``, ``guidance_clip_weight``, ``guidance_cutouts``, ``guidance_clip_weights``,
``guidance_until``), :meth:`SceneGenieGuidance.from_config` when it is built, and
:meth:`SceneGenieGuidance.wrap` around its ``(x_t, t) -> output`` function when it samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.batch import SceneGraphBatch
from benchmark.interfaces import WeightProvenance
from benchmark.seeding import derive_seed
from benchmark.text_encoders.base import WeightsUnavailable
from benchmark.text_encoders.clip import ClipEncoder

GUIDANCE_KINDS = ("none", "scenegenie")
RELEASED_CANVAS, RELEASED_CUT = 256, 224  # create_new_patch's canvas and ViT-B/32's input size
CUT_POW = 1.0  # MakeCutouts(cut_pow=1.)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the released transforms.Normalize
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

ModelFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class GuidanceConfig:
    """The sampling-time guidance fields, a base of every diffusion method's config (off by default, so a
    checkpoint written before they existed loads with them off and samples the same images)."""

    guidance: str = "none"  # none | scenegenie
    guidance_box_weight: float = 1000.0  # cross-attention box term (Chen et al. 2023); needs no CLIP
    guidance_clip_weight: float = 0.0  # SceneGenie's CLIP term (released scale 1.0); needs CLIP weights
    guidance_cutouts: int = 16  # CLIP cutouts per image and per object (released: 16)
    guidance_clip_weights: str = ""  # CLIP weights, as method.text_encoder_weights of clip ("" = ViT-B/32)
    guidance_until: float = 0.0  # guide the steps with t >= until * T (0 = every step, as released)


def check_guidance_config(cfg: Any) -> None:
    """Validate the ``guidance*`` fields of a method config (ValueError naming the field)."""
    if cfg.guidance not in GUIDANCE_KINDS:
        raise ValueError(f"method.guidance: unknown {cfg.guidance!r}; valid: {', '.join(GUIDANCE_KINDS)}")
    for name in ("guidance_box_weight", "guidance_clip_weight"):
        if not getattr(cfg, name) >= 0:
            raise ValueError(f"method.{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.guidance_cutouts < 1:
        raise ValueError(f"method.guidance_cutouts must be >= 1, got {cfg.guidance_cutouts}")
    if not 0.0 <= cfg.guidance_until <= 1.0:
        raise ValueError(f"method.guidance_until must be in [0, 1], got {cfg.guidance_until}")


def spherical_dist(u: Tensor, v: Tensor) -> Tensor:
    """``2 arcsin(|u/|u| - v/|v|| / 2)^2`` along the last dimension (the released ``spherical_dist_loss``)."""
    u, v = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
    return (u - v).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


def graph_captions(
    batch: SceneGraphBatch, obj_phrases: Sequence[str], pred_phrases: Sequence[str], image_obj: int
) -> list[str]:
    """One text per graph: its triples as ``"<subject> <predicate> <object>"`` joined by ``", "``.

    Triples with the image node (``__in_image__``) are left out; a graph with no other triple lists its objects.
    """
    n = batch.num_images
    parts: list[list[str]] = [[] for _ in range(n)]
    objs = batch.objs.tolist()
    for (s, p, o), i in zip(batch.triples.tolist(), batch.triple_to_img.tolist()):
        if objs[s] != image_obj and objs[o] != image_obj:
            parts[i].append(f"{obj_phrases[objs[s]]} {pred_phrases[p]} {obj_phrases[objs[o]]}")
    owner = batch.obj_to_img.tolist()
    out = []
    for i in range(n):
        names = [obj_phrases[c] for c, j in zip(objs, owner) if j == i and c != image_obj]
        out.append(", ".join(parts[i] or names) or "an image")
    return out


class ClipImageText(ClipEncoder):
    """The CLIP text encoder's weight resolution (``benchmark/text_encoders/clip.py``), keeping the image tower."""

    keep_visual = True

    def model(self, device: torch.device) -> Any:
        if self._model is None:
            self._load()
            self._model.requires_grad_(False)
        if next(self._model.parameters()).device != device:
            self._model = self._model.to(device)
        return self._model

    def cut_size(self) -> int:
        size = self._model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @torch.no_grad()
    def text(self, phrases: list[str], device: torch.device) -> Tensor:
        m = self.model(device)
        return m.encode_text(self._tokenizer(phrases).to(device), normalize=True).float()

    def image(self, x01: Tensor) -> Tensor:
        """Unit image features of ``x01 [N, 3, S, S]`` in [0, 1] at CLIP's input size (differentiable)."""
        m = self.model(x01.device)
        cfg = getattr(m.visual, "preprocess_cfg", None) or {}
        mean = x01.new_tensor(cfg.get("mean", OPENAI_MEAN))[:, None, None]
        std = x01.new_tensor(cfg.get("std", OPENAI_STD))[:, None, None]
        return m.encode_image((x01 - mean) / std, normalize=True).float()


def _cutouts(img: Tensor, n: int, cut: int, gen: torch.Generator) -> Tensor:
    """``n`` random square crops of ``img [3, S, S]`` average-pooled to ``cut`` px (released ``MakeCutouts``)."""
    side = img.shape[-1]
    lo, hi = min(side, cut), side
    out = []
    for _ in range(n):
        size = int(float(torch.rand((), generator=gen)) ** CUT_POW * (hi - lo) + lo)
        ox = int(torch.randint(0, side - size + 1, (), generator=gen))
        oy = int(torch.randint(0, side - size + 1, (), generator=gen))
        out.append(F.adaptive_avg_pool2d(img[None, :, oy : oy + size, ox : ox + size], cut))
    return torch.cat(out)


def box_coverage(boxes: Tensor, h: int, w: int) -> Tensor:
    """Fraction of each pixel cell of an ``h x w`` grid inside each box: ``[O, 4]`` (x0, y0, x1, y1 in [0, 1])
    -> ``[O, h, w]``."""
    def cover(a: Tensor, b: Tensor, n: int) -> Tensor:
        edge = torch.arange(n + 1, device=boxes.device, dtype=boxes.dtype) / n
        return ((torch.minimum(b[:, None], edge[None, 1:]) - torch.maximum(a[:, None], edge[None, :-1])) * n).clamp(0, 1)

    return cover(boxes[:, 1], boxes[:, 3], h)[:, :, None] * cover(boxes[:, 0], boxes[:, 2], w)[:, None, :]


def box_energy(
    maps: Sequence[Tensor], boxes: Tensor, obj_to_img: Tensor, token_index: Tensor, include: Tensor, num_images: int
) -> Tensor:
    """Chen et al.'s cross-attention box energy per image ``[B]`` (mean over layers and guided objects).

    ``maps``: per attention block ``[B', heads, H, W, L]`` (the first B rows are the conditional pass);
    ``token_index [O]``: each object's token column; ``include [O]``: objects to guide.
    """
    idx = include.nonzero().squeeze(1)
    if idx.numel() == 0 or not maps:
        return boxes.new_zeros(num_images)
    img, tok = obj_to_img[idx], token_index[idx]
    total = boxes.new_zeros(idx.numel())
    for m in maps:
        a = m[:num_images].float().mean(1)  # [B, H, W, L]
        a_k = a[img, :, :, tok]  # [K, H, W]
        cov = box_coverage(boxes[idx].float(), a.shape[1], a.shape[2])
        ratio = (a_k * cov).sum((1, 2)) / a_k.sum((1, 2)).clamp_min(1e-12)
        total = total + (1 - ratio) ** 2
    per_obj = total / len(maps)
    counts = torch.bincount(img, minlength=num_images).clamp(min=1).to(per_obj.dtype)
    return per_obj.new_zeros(num_images).index_add(0, img, per_obj) / counts


@dataclass
class GuidanceInputs:
    """What one batch is guided towards. Boxes ``[O, 4]`` are those the samples are rendered with;
    ``token_index [O]`` the column of each object's token in the cross-attention keys; ``include [O]`` the
    objects to guide (not the image node); ``captions`` [B] and ``phrases`` [O] the CLIP texts."""

    boxes: Tensor
    obj_to_img: Tensor
    token_index: Tensor
    include: Tensor
    captions: list[str]
    phrases: list[str]
    generators: list[torch.Generator]


class SceneGenieGuidance:
    """The two guidance terms around a model function; see the module docstring for the maths."""

    def __init__(self, box_weight: float, clip_weight: float, cutouts: int, until: float, clip_weights: str) -> None:
        self.box_weight, self.clip_weight, self.cutouts, self.until = box_weight, clip_weight, cutouts, until
        # Resolving the CLIP weights raises WeightsUnavailable now, i.e. when the method is built.
        try:
            self.clip = ClipImageText(clip_weights) if clip_weight > 0 else None
        except WeightsUnavailable as e:
            raise WeightsUnavailable(
                f"method.guidance_clip_weights (SceneGenie's CLIP term; method.guidance_clip_weight=0 runs the box "
                f"term alone): {e}"
            ) from None

    @classmethod
    def from_config(cls, cfg: Any) -> SceneGenieGuidance | None:
        """None unless ``cfg.guidance == "scenegenie"`` with a positive weight."""
        check_guidance_config(cfg)
        if cfg.guidance == "none" or (cfg.guidance_box_weight == 0 and cfg.guidance_clip_weight == 0):
            return None
        return cls(cfg.guidance_box_weight, cfg.guidance_clip_weight, cfg.guidance_cutouts, cfg.guidance_until,
                   cfg.guidance_clip_weights)  # fmt: skip

    def provenance(self) -> list[WeightProvenance]:
        if self.clip is None:
            return []
        p = self.clip.provenance()
        return [WeightProvenance(f"guidance:{p.name.split(':', 1)[-1]}", p.source, p.sha256, p.random_init)]

    # -- the two losses ------------------------------------------------------------------------------------

    def clip_loss(self, x0: Tensor, inp: GuidanceInputs, gens: list[torch.Generator]) -> Tensor:
        """The released CLIP loss per image ``[B]`` of ``x0 [B, 3, H, W]`` in [-1, 1]; draws from ``gens``."""
        assert self.clip is not None
        dev = x0.device
        self.clip.model(dev)
        cut = self.clip.cut_size()
        side = max(x0.shape[-1], round(cut * RELEASED_CANVAS / RELEASED_CUT))
        canvas = F.interpolate(x0, size=(side, side), mode="bilinear", align_corners=False)
        texts = list(inp.captions) + list(inp.phrases)
        emb = self.clip.text(texts, dev)
        cap_emb, obj_emb = emb[: len(inp.captions)], emb[len(inp.captions) :]
        crops, owners, weights = [], [], []  # owners: text row per crop group; weights: per group
        inc = inp.include.tolist()
        boxes = inp.boxes.tolist()
        for i, g in enumerate(gens):
            crops.append(_cutouts((canvas[i] + 1) / 2, self.cutouts, cut, g))
            owners.append(i)
            weights.append(1.0)
            objs = [o for o, j in enumerate(inp.obj_to_img.tolist()) if j == i and inc[o]]
            areas = [max(boxes[o][2] - boxes[o][0], 0.0) * max(boxes[o][3] - boxes[o][1], 0.0) for o in objs]
            total = sum(areas)
            for o, area in zip(objs, areas):
                noise = torch.randn((3, side, side), generator=g).to(dev, x0.dtype)
                x_a, y_a, x_b, y_b = (int(v * side) for v in boxes[o])
                keep = torch.zeros((1, side, side), dtype=torch.bool, device=dev)
                keep[:, y_a:y_b, x_a:x_b] = True
                patch = torch.where(keep, canvas[i], noise)
                crops.append(_cutouts((patch + 1) / 2, self.cutouts, cut, g))
                owners.append(len(inp.captions) + o)
                weights.append(area / total if total > 0 else 0.0)
        feats = self.clip.image(torch.cat(crops)).view(len(crops), self.cutouts, -1)
        text = torch.cat([cap_emb, obj_emb])[torch.tensor(owners, device=dev)]
        d = spherical_dist(feats, text[:, None]).mean(1)  # [groups]
        img_of = torch.tensor([o if o < len(inp.captions) else int(inp.obj_to_img[o - len(inp.captions)])
                               for o in owners], device=dev)  # fmt: skip
        w = torch.tensor(weights, device=dev, dtype=d.dtype)
        return d.new_zeros(len(gens)).index_add(0, img_of, w * d)

    # -- the wrapper ---------------------------------------------------------------------------------------

    def guidance_generators(self, generators: Sequence[torch.Generator]) -> list[torch.Generator]:
        """Per-image generators for the cutouts and canvas noise, seeded from each sampling generator's seed
        (the sampler's own stream is left untouched)."""
        return [torch.Generator().manual_seed(derive_seed(g.initial_seed(), "scenegenie")) for g in generators]

    def active(self, t: int, num_timesteps: int) -> bool:
        return t >= self.until * num_timesteps

    def wrap(
        self,
        model_fn: ModelFn,
        alphas_cumprod: Tensor,
        inputs: GuidanceInputs,
        record_attention: Callable[[], AbstractContextManager[list[Tensor]]] | None = None,
        channels: int = 3,
        decode: Callable[[Tensor], Tensor] | None = None,
    ) -> ModelFn:
        """``model_fn (x_t, t) -> [B, >= channels, ...]`` with its first ``channels`` (eps) corrected.

        ``alphas_cumprod [T]`` of the method's schedule; ``record_attention()`` a context manager that yields the
        list the denoiser's cross-attention maps are appended to (needed by the box term); ``decode`` maps
        ``x0_hat`` to an image in [-1, 1] (latent methods; identity for pixel space).
        """
        gens = self.guidance_generators(inputs.generators)
        num_t = alphas_cumprod.shape[0]
        use_box = self.box_weight > 0 and record_attention is not None

        def guided(x: Tensor, t: Tensor) -> Tensor:
            if not self.active(int(t[0]), num_t):
                return model_fn(x, t)
            # The evaluator samples under inference_mode: leave it (and clone x out of it) to differentiate.
            with torch.inference_mode(False), torch.enable_grad():
                x = x.clone()
                ab = alphas_cumprod.to(x.device)[t].float().view(-1, *([1] * (x.dim() - 1)))
                x_in = x.detach().requires_grad_(True)
                ctx = record_attention() if use_box else nullcontext([])
                with ctx as maps:
                    out = model_fn(x_in if use_box else x, t)
                grad = torch.zeros_like(x)
                if use_box:
                    e = box_energy(maps, inputs.boxes, inputs.obj_to_img, inputs.token_index, inputs.include,
                                   x.shape[0])  # fmt: skip
                    grad = grad + self.box_weight * torch.autograd.grad(e.sum(), x_in)[0]
                out = out.detach()
                eps = out[:, :channels]
                if self.clip is not None:
                    x_c = x.detach().requires_grad_(True)
                    x0 = (x_c - (1 - ab).sqrt() * eps) / ab.sqrt()
                    img = decode(x0) if decode is not None else x0
                    loss = self.clip_loss(img, inputs, gens)
                    grad = grad + self.clip_weight * torch.autograd.grad(loss.sum(), x_c)[0]
                eps = eps + (1 - ab).sqrt() * grad
                return torch.cat([eps, out[:, channels:]], dim=1)

        return guided


__all__ = [
    "GUIDANCE_KINDS",
    "GuidanceConfig",
    "GuidanceInputs",
    "SceneGenieGuidance",
    "box_energy",
    "check_guidance_config",
    "graph_captions",
    "spherical_dist",
]
