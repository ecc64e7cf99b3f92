"""The VQ-f8 first stage read from a CompVis Lightning checkpoint (methods/vq_f8.py, benchmark/imports.py).

The checkpoints here are written by :func:`compvis_shapes`, a transcription of the module tree of
``ldm/modules/diffusionmodules/model.py`` (``Encoder``/``Decoder``/``ResnetBlock``/``AttnBlock``) and
``ldm/models/autoencoder.py::VQModel`` (CompVis/latent-diffusion, as vendored by YangLing0818/SGDiff), saved in the
layout of a pytorch-lightning 1.4 checkpoint (callbacks keyed by the ``ModelCheckpoint`` class).
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import Tensor

from benchmark.checkpoint import CheckpointError
from benchmark.imports import read_lightning_state_dict
from benchmark.io import sha256_file
from benchmark.text_encoders.base import WeightsUnavailable
from methods.vq_f8 import VQ_F8, VQConfig, compvis_vq_key, load_vq_f8

TINY = VQConfig(resolution=32, ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, attn_resolutions=(4,), n_embed=64)


def compvis_shapes(cfg: VQConfig) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of CompVis ``VQModel(ddconfig, n_embed, embed_dim)`` (loss excluded)."""
    out: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        out[f"{name}.weight"], out[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def norm(name: str, c: int) -> None:
        out[f"{name}.weight"], out[f"{name}.bias"] = (c,), (c,)

    def resnet(name: str, cin: int, cout: int) -> None:
        norm(f"{name}.norm1", cin), conv(f"{name}.conv1", cout, cin, 3)
        norm(f"{name}.norm2", cout), conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cout, cin, 1)

    def attn(name: str, c: int) -> None:
        norm(f"{name}.norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{p}", c, c, 1)

    def mid(part: str, c: int) -> None:
        resnet(f"{part}.mid.block_1", c, c), attn(f"{part}.mid.attn_1", c), resnet(f"{part}.mid.block_2", c, c)

    levels, ch, res = len(cfg.ch_mult), cfg.ch, cfg.resolution
    conv("encoder.conv_in", ch, cfg.in_channels, 3)
    block_in = ch
    for i, m in enumerate(cfg.ch_mult):
        for j in range(cfg.num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", block_in, ch * m)
            block_in = ch * m
            if res in cfg.attn_resolutions:
                attn(f"encoder.down.{i}.attn.{j}", block_in)
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
            res //= 2
    mid("encoder", block_in)
    norm("encoder.norm_out", block_in), conv("encoder.conv_out", cfg.z_channels, block_in, 3)
    conv("decoder.conv_in", block_in, cfg.z_channels, 3)
    mid("decoder", block_in)
    for i in reversed(range(levels)):
        for j in range(cfg.num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, ch * cfg.ch_mult[i])
            block_in = ch * cfg.ch_mult[i]
            if res in cfg.attn_resolutions:
                attn(f"decoder.up.{i}.attn.{j}", block_in)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
            res *= 2
    norm("decoder.norm_out", block_in), conv("decoder.conv_out", cfg.out_ch, block_in, 3)
    conv("quant_conv", cfg.embed_dim, cfg.z_channels, 1), conv("post_quant_conv", cfg.z_channels, cfg.embed_dim, 1)
    out["quantize.embedding.weight"] = (cfg.n_embed, cfg.embed_dim)
    return out


def lightning_module(monkeypatch: pytest.MonkeyPatch) -> type:
    """A class named ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`` (for writing only)."""
    name = "pytorch_lightning.callbacks.model_checkpoint"
    mods = {n: types.ModuleType(n) for n in ("pytorch_lightning", "pytorch_lightning.callbacks", name)}
    cls = type("ModelCheckpoint", (), {"__module__": name})
    mods[name].ModelCheckpoint = cls  # type: ignore[attr-defined]
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)
    return cls


def write_release(path: Path, cfg: VQConfig, monkeypatch: pytest.MonkeyPatch, seed: int = 0,
                  extra: dict | None = None) -> dict[str, Tensor]:  # fmt: skip
    """A random-init CompVis VQ checkpoint in Lightning 1.4's layout (with ``loss.*`` and trainer bookkeeping)."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(s, generator=g) * (0.3 / math.sqrt(math.prod(s[1:])) if len(s) > 1 else 0.1)
          for k, s in compvis_shapes(cfg).items()}  # fmt: skip
    for k in sd:
        if ".norm" in k and k.endswith("weight"):
            sd[k] = sd[k] + 1.0
    sd["quantize.embedding.weight"] = torch.randn(cfg.n_embed, cfg.embed_dim, generator=g)
    sd["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4, generator=g)
    sd["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1, generator=g)
    cls = lightning_module(monkeypatch)
    ckpt = {"epoch": 7, "global_step": 1234, "pytorch-lightning_version": "1.4.2", "state_dict": sd,
            "callbacks": {cls: {"monitor": "val/rec_loss", "best_model_score": torch.tensor(0.25),
                                "best_model_path": "logs/last.ckpt"}},
            "optimizer_states": [{"state": {0: {"step": 3, "exp_avg": torch.zeros(2)}},
                                  "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9), "params": [0]}]}],
            "lr_schedulers": [], **(extra or {})}  # fmt: skip
    torch.save(ckpt, path)
    for n in ("pytorch_lightning.callbacks.model_checkpoint", "pytorch_lightning.callbacks", "pytorch_lightning"):
        monkeypatch.delitem(sys.modules, n)
    return sd


@pytest.fixture
def release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, Tensor]]:
    path = tmp_path / "model.ckpt"
    return path, write_release(path, TINY, monkeypatch)


def test_lightning_checkpoint_is_read_without_lightning(release: tuple[Path, dict[str, Tensor]]) -> None:
    path, sd = release
    got = read_lightning_state_dict(path)
    assert "pytorch_lightning" not in sys.modules
    assert got.keys() == sd.keys() and all(torch.equal(got[k], v) for k, v in sd.items())


def test_every_key_maps_and_weights_land_where_compvis_had_them(release: tuple[Path, dict[str, Tensor]]) -> None:
    path, sd = release
    vq = load_vq_f8(path, cfg=TINY)
    ours = vq.model.state_dict()
    mapped = {compvis_vq_key(k, len(TINY.ch_mult)) for k in sd} - {None}
    assert mapped == set(ours)  # complete and one-to-one (loss.* dropped)
    # spot checks written out by hand: level order reversed in the decoder, shortcut and attention renames
    same = {"encoder.down.1.block.0.conv1.weight": "encoder.down_blocks.1.resnets.0.conv1.weight",
            "encoder.down.2.block.0.nin_shortcut.bias": "encoder.down_blocks.2.resnets.0.conv_shortcut.bias",
            "encoder.down.0.downsample.conv.weight": "encoder.down_blocks.0.downsamplers.0.conv.weight",
            "encoder.mid.block_2.norm2.weight": "encoder.mid_block.resnets.1.norm2.weight",
            "encoder.norm_out.bias": "encoder.conv_norm_out.bias",
            "decoder.up.3.block.1.conv2.weight": "decoder.up_blocks.0.resnets.1.conv2.weight",
            "decoder.up.1.upsample.conv.bias": "decoder.up_blocks.2.upsamplers.0.conv.bias",
            "decoder.up.1.block.0.nin_shortcut.weight": "decoder.up_blocks.2.resnets.0.conv_shortcut.weight",
            "decoder.up.3.attn.1.norm.weight": "decoder.up_blocks.0.attentions.1.group_norm.weight",
            "quantize.embedding.weight": "quantize.embedding.weight"}  # fmt: skip
    for theirs, mine in same.items():
        assert torch.equal(ours[mine], sd[theirs]), theirs
    for p, q in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        assert torch.equal(ours[f"encoder.down_blocks.3.attentions.0.{q}.weight"],
                           sd[f"encoder.down.3.attn.0.{p}.weight"][:, :, 0, 0])  # fmt: skip


def compvis_attn(x: Tensor, sd: dict[str, Tensor], name: str) -> Tensor:
    """CompVis ``AttnBlock.forward``: x + proj_out(v softmax(q^T k / sqrt(C))), GroupNorm(32, eps 1e-6) first."""
    b, c, h, w = x.shape
    hn = torch.nn.functional.group_norm(x, 32, sd[f"{name}.norm.weight"], sd[f"{name}.norm.bias"], eps=1e-6)
    q, k, v = (torch.nn.functional.conv2d(hn, sd[f"{name}.{p}.weight"], sd[f"{name}.{p}.bias"]).reshape(b, c, h * w)
               for p in ("q", "k", "v"))  # fmt: skip
    att = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=2)  # [b, hw (query), hw (key)]
    out = (v @ att.transpose(1, 2)).reshape(b, c, h, w)
    return x + torch.nn.functional.conv2d(out, sd[f"{name}.proj_out.weight"], sd[f"{name}.proj_out.bias"])


def test_attention_blocks_compute_compvis_attention(release: tuple[Path, dict[str, Tensor]]) -> None:
    path, sd = release
    vq = load_vq_f8(path, cfg=TINY)
    x = torch.randn(2, 64, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for mod, name in ((vq.model.encoder.mid_block.attentions[0], "encoder.mid.attn_1"),
                          (vq.model.decoder.up_blocks[0].attentions[1], "decoder.up.3.attn.1")):  # fmt: skip
            torch.testing.assert_close(mod(x), compvis_attn(x, sd, name), rtol=1e-5, atol=1e-5)


def test_round_trip_shapes_and_quantization_in_decode(release: tuple[Path, dict[str, Tensor]]) -> None:
    path, sd = release
    vq = load_vq_f8(path, cfg=TINY)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        z = vq.encode(x)
        assert z.shape == (2, 4, 4, 4) == (2, *vq.latent_shape(32))
        codes = sd["quantize.embedding.weight"]
        assert not torch.isin(z.permute(0, 2, 3, 1).reshape(-1, 4), codes).all(dim=1).any()  # encode: not quantized
        img = vq.decode(z)
        assert img.shape == x.shape and torch.isfinite(img).all()
        # decode quantizes: it equals decoding the nearest codebook entries, and ignores a small nudge
        k = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, 4), codes).argmin(1)
        q, idx = vq.quantize(z)
        assert torch.equal(idx.reshape(-1), k)
        zq = codes[k].reshape(2, 4, 4, 4).permute(0, 3, 1, 2)
        torch.testing.assert_close(q, zq, rtol=0, atol=1e-6)
        expected = vq.model.decoder(vq.model.post_quant_conv(zq))
        torch.testing.assert_close(img, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(vq.decode(zq + 1e-4), expected, rtol=1e-5, atol=1e-5)
        # diffusers' own decode path (torch.cdist quantizer) agrees when there are no near-ties
        torch.testing.assert_close(vq.model.decode(z).sample, img, rtol=1e-5, atol=1e-5)
    # frozen weights; the straight-through quantizer passes gradients to the latent (guidance through the decoder)
    zg = z.clone().requires_grad_(True)
    vq.decode(zg).square().sum().backward()
    assert zg.grad is not None and zg.grad.abs().sum() > 0 and not any(p.requires_grad for p in vq.parameters())


def test_provenance_and_released_architecture(release: tuple[Path, dict[str, Tensor]]) -> None:
    path, _ = release
    prov = load_vq_f8(path, cfg=TINY).provenance
    assert prov.sha256 == sha256_file(path) and not prov.random_init and prov.source == "file:model.ckpt"
    # SGDiff config_vg.yaml first_stage_config: 256 px -> 4 x 32 x 32, latent unscaled (scale_factor 1.0)
    assert (VQ_F8.factor, VQ_F8.n_embed, VQ_F8.embed_dim, VQ_F8.scale_factor) == (8, 16384, 4, 1.0)
    with torch.device("meta"):
        model = VQ_F8.diffusers_model()
    shapes = compvis_shapes(VQ_F8)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped = {compvis_vq_key(k, 4): s for k, s in shapes.items()}
    assert mapped.keys() == ours.keys()
    assert all(ours[k] == (s[:2] if len(ours[k]) == 2 else s) for k, s in mapped.items())


def test_missing_file_names_what_to_get(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match=r"nope\.ckpt not found.*vq-f8\.zip.*--set method\.vq=/"):
        load_vq_f8(tmp_path / "nope.ckpt", field="method.vq")


def test_bad_files_stop_with_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = write_release(tmp_path / "a.ckpt", TINY, monkeypatch)
    with pytest.raises(CheckpointError, match=r"a\.ckpt: field 'state_dict\.encoder\.conv_in\.weight' has shape"):
        load_vq_f8(tmp_path / "a.ckpt", cfg=VQConfig(resolution=32, ch=64, ch_mult=(1, 1, 2, 2), num_res_blocks=1,
                                                     attn_resolutions=(4,), n_embed=64))  # fmt: skip
    with pytest.raises(CheckpointError, match=r"field 'state_dict\.encoder\.down\.3\.attn\.0\.norm\.weight' has no"):
        load_vq_f8(tmp_path / "a.ckpt", cfg=VQConfig(**{**TINY.__dict__, "attn_resolutions": ()}))
    del sd["decoder.conv_out.bias"]
    lightning_module(monkeypatch)
    torch.save({"state_dict": sd}, tmp_path / "b.ckpt")
    with pytest.raises(CheckpointError, match=r"b\.ckpt: field 'state_dict' lacks 1 .*'decoder\.conv_out\.bias'"):
        load_vq_f8(tmp_path / "b.ckpt", cfg=TINY)
    torch.save({"state_dict": {**sd, "model_ema.decay": torch.tensor(0.99)}}, tmp_path / "c.ckpt")
    with pytest.raises(CheckpointError, match=r"field 'state_dict\.model_ema\.decay' is not a CompVis VQModel"):
        load_vq_f8(tmp_path / "c.ckpt", cfg=TINY)
    torch.save({"epoch": 1}, tmp_path / "d.ckpt")
    with pytest.raises(CheckpointError, match=r"d\.ckpt: field 'state_dict' is missing"):
        load_vq_f8(tmp_path / "d.ckpt", cfg=TINY)


class _Callback:
    pass


def test_lightning_class_is_only_a_key_and_other_globals_are_refused(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    cls = lightning_module(monkeypatch)
    torch.save({"state_dict": {}, "callbacks": {"x": cls()}}, tmp_path / "a.ckpt")  # an instance, not a key
    with pytest.raises(CheckpointError, match=r"a\.ckpt: not a readable torch\.save file"):
        read_lightning_state_dict(tmp_path / "a.ckpt")
    torch.save({"state_dict": {}, "callbacks": {_Callback: {}}}, tmp_path / "b.ckpt")
    with pytest.raises(CheckpointError, match=rf"b\.ckpt: refused: .*{__name__}\._Callback"):
        read_lightning_state_dict(tmp_path / "b.ckpt")
