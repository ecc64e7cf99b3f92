"""The released VQ-f8 first stage of CompVis latent-diffusion, SGDiff's autoencoder, as a diffusers ``VQModel``.

SGDiff (Yang et al., NeurIPS 2022; ``YangLing0818/SGDiff`` ``config_vg.yaml`` ``first_stage_config``) runs its
latent diffusion in the space of LDM's VQ-f8 (Rombach et al., CVPR 2022; ``CompVis/latent-diffusion``
``models/first_stage_models/vq-f8/config.yaml``): a VQGAN (Esser et al., CVPR 2021) encoder/decoder with ``ch``
128, ``ch_mult`` (1, 2, 2, 4), 2 residual blocks per level, self-attention at 32x32 and in the middle block,
``z_channels`` = ``embed_dim`` = 4 and a 16384-entry codebook, so a 256x256 image becomes a 4x32x32 latent.

SGDiff uses it through ``ldm/models/autoencoder.py::VQModelInterface``:

- ``encode(x) = quant_conv(E(x))``: the *pre-quantization* latent h (no codebook lookup);
- ``decode(h) = D(post_quant_conv(q(h)))`` with q the nearest codebook entry,
  q(h)_ij = e_k, k = argmin_k ||h_ij - e_k||^2 (taming ``VectorQuantizer2``), i.e. quantization happens in
  decode (``force_not_quantize=False``, as ``LatentDiffusion.decode_first_stage`` calls it).

``LatentDiffusion`` multiplies the encoding by ``scale_factor`` and divides before decoding
(``ldm/models/diffusion/ddpm.py``, ``get_first_stage_encoding`` / ``decode_first_stage``); SGDiff's configs leave it
at the default 1.0 with ``scale_by_std`` off, so the latent is used unscaled.

The released ``vq-f8/model.ckpt`` is a PyTorch Lightning 1.4 checkpoint whose ``state_dict`` uses CompVis' module
names (``encoder.down.{i}.block.{j}``, ``mid.attn_1`` with 1x1-conv q/k/v, ...) and also holds the training loss
(``loss.*``: LPIPS and the patch discriminator). :func:`compvis_vq_key` maps the names to diffusers' ``VQModel``
(``encoder.down_blocks.{i}.resnets.{j}``, ``mid_block.attentions.0.to_q`` as a linear layer, ...); the loss is
dropped, and every other key must map onto a model parameter of the same shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import VQModel
from torch import Tensor, nn

from benchmark.checkpoint import CheckpointError
from benchmark.imports import read_lightning_state_dict
from benchmark.interfaces import WeightProvenance
from benchmark.io import sha256_file
from benchmark.text_encoders.base import WeightsUnavailable

VQ_F8_URL = "https://ommer-lab.com/files/latent-diffusion/vq-f8.zip"


@dataclass(frozen=True)
class VQConfig:
    """CompVis ``ddconfig`` + quantizer sizes; the defaults are VQ-f8's (``vq-f8/config.yaml``)."""

    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (32,)
    z_channels: int = 4
    embed_dim: int = 4
    n_embed: int = 16384
    scale_factor: float = 1.0  # LatentDiffusion's default; SGDiff's configs do not change it

    @property
    def factor(self) -> int:
        """Spatial downsampling factor (8 for VQ-f8)."""
        return 2 ** (len(self.ch_mult) - 1)

    def attention_at(self, level: int) -> bool:
        """CompVis puts attention in level ``level`` when its resolution ``resolution / 2**level`` is listed."""
        return self.resolution // 2**level in self.attn_resolutions

    def diffusers_model(self) -> VQModel:
        """An (untrained) diffusers ``VQModel`` of this architecture."""
        n = len(self.ch_mult)
        down = tuple("AttnDownEncoderBlock2D" if self.attention_at(i) else "DownEncoderBlock2D" for i in range(n))
        up = tuple("AttnUpDecoderBlock2D" if self.attention_at(n - 1 - i) else "UpDecoderBlock2D" for i in range(n))
        return VQModel(
            in_channels=self.in_channels, out_channels=self.out_ch, down_block_types=down, up_block_types=up,
            block_out_channels=tuple(self.ch * m for m in self.ch_mult), layers_per_block=self.num_res_blocks,
            latent_channels=self.z_channels, sample_size=self.resolution, num_vq_embeddings=self.n_embed,
            norm_num_groups=32, vq_embed_dim=self.embed_dim, scaling_factor=self.scale_factor,
        )  # fmt: skip


VQ_F8 = VQConfig()

_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_KEY = re.compile(
    r"(?P<part>encoder|decoder)\.(?:"
    r"(?P<io>conv_in|conv_out|norm_out)"
    r"|(?P<dir>down|up)\.(?P<level>\d+)\.(?:(?P<kind>block|attn)\.(?P<idx>\d+)\.(?P<layer>\w+)"
    r"|(?P<resample>downsample|upsample)\.conv)"
    r"|mid\.(?P<mid>block_1|block_2|attn_1)\.(?P<mid_layer>\w+)"
    r")\.(?P<param>weight|bias)"
)


def compvis_vq_key(key: str, levels: int) -> str | None:
    """CompVis ``VQModel`` state-dict key -> diffusers ``VQModel`` key; ``None`` for the training loss (``loss.*``).

    Decoder levels are numbered from the lowest resolution in diffusers (``up_blocks.0``) and from the highest in
    CompVis (``up.0``). Raises ``KeyError`` for a key of neither model.
    """
    if key.startswith("loss."):
        return None
    if key in ("quant_conv.weight", "quant_conv.bias", "post_quant_conv.weight", "post_quant_conv.bias",
               "quantize.embedding.weight"):  # fmt: skip
        return key
    m = _KEY.fullmatch(key)
    if m is None:
        raise KeyError(key)
    part, param = m["part"], m["param"]
    if m["io"]:
        return f"{part}.{'conv_norm_out' if m['io'] == 'norm_out' else m['io']}.{param}"
    if m["mid"]:
        table = _ATTN if m["mid"] == "attn_1" else _RESNET
        if m["mid_layer"] not in table:
            raise KeyError(key)
        sub = "attentions.0" if m["mid"] == "attn_1" else f"resnets.{int(m['mid'][-1]) - 1}"
        return f"{part}.mid_block.{sub}.{table[m['mid_layer']]}.{param}"
    if (part == "encoder") != (m["dir"] == "down"):
        raise KeyError(key)
    level = int(m["level"])
    block = f"down_blocks.{level}" if part == "encoder" else f"up_blocks.{levels - 1 - level}"
    if m["resample"]:
        return f"{part}.{block}.{m['resample']}rs.0.conv.{param}"
    table = _RESNET if m["kind"] == "block" else _ATTN
    if m["layer"] not in table:
        raise KeyError(key)
    sub = "resnets" if m["kind"] == "block" else "attentions"
    return f"{part}.{block}.{sub}.{m['idx']}.{table[m['layer']]}.{param}"


def convert_compvis_vq(sd: dict[str, Tensor], model: VQModel, path: str | Path) -> dict[str, Tensor]:
    """Map a CompVis VQ state dict onto ``model``'s keys; every model key must be filled exactly once with a
    tensor of its shape (attention q/k/v/proj 1x1 convs become linear weights), else one line naming the key."""
    target = model.state_dict()
    levels = len(model.config.block_out_channels)
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        try:
            new = compvis_vq_key(key, levels)
        except KeyError:
            raise CheckpointError(f"{path}: field 'state_dict.{key}' is not a CompVis VQModel parameter") from None
        if new is None:
            continue
        if new not in target:
            raise CheckpointError(f"{path}: field 'state_dict.{key}' has no counterpart {new!r} in the configured "
                                  "architecture (a different ddconfig?)")  # fmt: skip
        if value.ndim == 4 and target[new].ndim == 2:
            value = value[:, :, 0, 0]
        if tuple(value.shape) != tuple(target[new].shape):
            raise CheckpointError(f"{path}: field 'state_dict.{key}' has shape {tuple(value.shape)}, the "
                                  f"architecture expects {tuple(target[new].shape)} (a different ddconfig?)")  # fmt: skip
        out[new] = value
    missing = [k for k in target if k not in out]
    if missing:
        raise CheckpointError(f"{path}: field 'state_dict' lacks {len(missing)} parameter(s) of the architecture, "
                              f"e.g. {missing[0]!r} (a different ddconfig?)")  # fmt: skip
    return out


class VQF8(nn.Module):
    """The frozen first stage: ``encode`` images in [-1, 1] to pre-quantization latents, ``decode`` them back.

    Parameters are frozen, but gradients flow to the inputs (for sampling-time guidance through the decoder).
    """

    def __init__(self, model: VQModel, cfg: VQConfig, provenance: WeightProvenance) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.cfg = cfg
        self.provenance = provenance

    def train(self, mode: bool = True) -> VQF8:
        return super().train(False)  # always in eval mode (no dropout; the released model has none anyway)

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """``[C, H/f, W/f]`` of the latent of a square image (4x32x32 for VQ-f8 at 256 px)."""
        return (self.cfg.embed_dim, image_size // self.cfg.factor, image_size // self.cfg.factor)

    def encode(self, x: Tensor) -> Tensor:
        """x [B, 3, H, W] in [-1, 1] -> z = scale_factor * quant_conv(E(x)), [B, 4, H/8, W/8], not quantized."""
        f = self.cfg.factor
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"vq_f8.encode: expected [B, {self.cfg.in_channels}, H, W] with H, W multiples of {f}, "
                             f"got {tuple(x.shape)}")  # fmt: skip
        return self.model.encode(x).latents * self.cfg.scale_factor

    def quantize(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest codebook entry per position, straight-through: (h + sg(e_k - h) [B, C, h, w], k [B, h, w]).

        The distance is taming ``VectorQuantizer2``'s expansion ||h||^2 + ||e||^2 - 2 h.e, written out because
        diffusers' quantizer takes ``torch.cdist``, which picks the other code of a near-tie (0.05% of positions on
        identical inputs with a near-duplicate codebook, against none with this expression).
        """
        e = self.model.quantize.embedding.weight
        flat = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
        d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()
        k = d.argmin(1)
        q = e[k].reshape(h.shape[0], h.shape[2], h.shape[3], h.shape[1]).permute(0, 3, 1, 2)
        return h + (q - h).detach(), k.reshape(h.shape[0], h.shape[2], h.shape[3])

    def decode(self, z: Tensor) -> Tensor:
        """z [B, 4, h, w] -> D(post_quant_conv(q(z / scale_factor))), [B, 3, 8h, 8w] (roughly in [-1, 1])."""
        q, _ = self.quantize(z / self.cfg.scale_factor)
        return self.model.decoder(self.model.post_quant_conv(q))


def load_vq_f8(path: str | Path, device: str | torch.device = "cpu", cfg: VQConfig = VQ_F8,
               field: str = "method.first_stage_ckpt") -> VQF8:  # fmt: skip
    """Read the released ``vq-f8/model.ckpt`` (or any CompVis VQModel Lightning checkpoint of architecture ``cfg``)
    without unpickling anything but tensors and containers, and return the frozen :class:`VQF8` on ``device``.

    ``field`` is the config field that names the file, quoted when the file is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(
            f"vq_f8: {path} not found. Get CompVis latent-diffusion's VQ-f8 first stage ({VQ_F8_URL}, unzip to "
            f"model.ckpt) and set --set {field}=/path/to/model.ckpt"
        )
    model = cfg.diffusers_model()
    model.load_state_dict(convert_compvis_vq(read_lightning_state_dict(path), model, path))
    prov = WeightProvenance(name="vq_f8", source=f"file:{path.name}", sha256=sha256_file(path), random_init=False)
    return VQF8(model, cfg, prov).to(device)
