"""Tests of benchmark/imports.py: released checkpoints converted into suite checkpoints.

The "released" files are written here in google/sg2im's exact format: a ``torch.save`` (legacy, pre-1.6 layout,
as the 2018 release) of the dict ``scripts/train.py`` builds (``args``, ``vocab``, ``model_kwargs`` with the
vocabulary, ``d_obj_kwargs``, ``d_img_kwargs``, loss logs as ``defaultdict(list)``, counters, ``model_state``,
``d_obj_state``, ...), with sg2im's parameter names and shapes (embedding tables with ``num_objs + 1`` rows,
``rel_aux_net``, the patch discriminator's unused ``classifier``, no ``num_batches_tracked``: PyTorch 0.4) and
the vocabulary in another order than the dataset's, ``'NONE'`` for unused COCO ids.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from benchmark import registry
from benchmark.batch import collate
from benchmark.checkpoint import CheckpointError, read_metadata
from benchmark.config import build_run_config
from benchmark.imports import import_sg2im, load_openai_unet, qkv_heads_to_ours, read_torch_pickle
from benchmark.protocol import load_protocol
from benchmark.run import eval_checkpoint
from benchmark.train import build_dataset, dataset_info, load_method
from methods.unet import AttentionBlock, UNetModel

SMALL = {"method.gconv_num_layers": 2, "method.crop_size": 16}


def _model(dataset: str, tier: str = "smoke") -> tuple[Any, Any]:
    cfg = build_run_config("sg2im", dataset, tier, 0, "cpu", SMALL)
    proto = load_protocol(dataset)
    info = dataset_info(build_dataset(dataset, proto["train_split"], cfg.image_size), proto["version"])
    torch.manual_seed(1)
    method = registry.get("method", "sg2im")(cfg.method_cfg, info)
    with torch.no_grad():  # BN statistics that are not the defaults, so a lost buffer would show
        for name, buf in method.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buf.copy_(torch.rand_like(buf) + 0.5)
    return cfg, method.eval()


def _released_order(names: tuple[str, ...]) -> list[int]:
    """sg2im's index of each of our names: ``__image__``/``__in_image__`` stay at 0, the rest reversed."""
    return [0] + list(range(len(names) - 1, 0, -1))


def write_release(path: Path, cfg: Any, method: Any, none_ids: bool = False, legacy: bool = True) -> dict[str, Any]:
    """Save ``method`` as sg2im train.py would have: names, vocabulary, kwargs and extra entries of its checkpoint.

    ``none_ids`` (COCO): sg2im's object index is the COCO category id, unused ids named ``'NONE'``; the object
    order is then ours (the suite uses the same ids), the predicates are still reordered.
    """
    mc, vocab = cfg.method_cfg, method.info.vocab
    perm_o, perm_p = _released_order(vocab.object_idx_to_name), _released_order(vocab.pred_idx_to_name)
    if none_ids:
        perm_o = list(range(len(perm_o)))
    inv_o = {ours: rel for ours, rel in enumerate(perm_o)}
    obj_names = [""] * len(perm_o)
    for ours, rel in inv_o.items():
        name = vocab.object_idx_to_name[ours]
        obj_names[rel] = "NONE" if none_ids and name.startswith("__none_") else name
    pred_names = [""] * len(perm_p)
    for ours, rel in enumerate(perm_p):
        pred_names[rel] = vocab.pred_idx_to_name[ours]
    sg_vocab = {
        "object_idx_to_name": obj_names, "pred_idx_to_name": pred_names,
        "object_name_to_idx": {n: i for i, n in enumerate(obj_names)},
        "pred_name_to_idx": {n: i for i, n in enumerate(pred_names)},
    }  # fmt: skip

    def to_released(t: torch.Tensor, perm: list[int], extra_row: bool) -> torch.Tensor:
        out = torch.zeros(len(perm) + int(extra_row), *t.shape[1:], dtype=t.dtype)
        out[torch.tensor(perm)] = t
        if extra_row:
            out[-1] = torch.randn(*t.shape[1:])  # sg2im's never-read row
        return out

    state = {k: v.clone() for k, v in method.state_dict().items() if not k.endswith("num_batches_tracked")}
    model_state, d_obj, d_img = {}, {}, {}
    for k, v in state.items():
        if k.startswith("generator."):
            k = k[len("generator."):]
            if k == "obj_embeddings.embedding.weight":
                k, v = "obj_embeddings.weight", to_released(v, perm_o, True)
            elif k == "pred_embeddings.embedding.weight":
                k, v = "pred_embeddings.weight", to_released(v, perm_p, False)
            model_state[k] = v
        elif k.startswith("obj_discriminator."):
            k = k[len("obj_discriminator."):]
            if k.startswith("obj_classifier."):
                v = to_released(v, perm_o, False)
            k = "discriminator." + (f"cnn.0.{k[4:]}" if k.startswith("cnn.") else f"cnn.2.{k[3:]}" if k.startswith("fc.") else k)
            d_obj[k] = v
        else:
            d_img[k[len("img_discriminator."):]] = v
    e, h, p = mc.embedding_dim, mc.gconv_hidden_dim, len(pred_names)
    model_state.update({"rel_aux_net.0.weight": torch.randn(h, 2 * e + 8), "rel_aux_net.0.bias": torch.randn(h),
                        "rel_aux_net.2.weight": torch.randn(p, h), "rel_aux_net.2.bias": torch.randn(p)})  # fmt: skip
    d_img.update({"classifier.weight": torch.randn(1, d_img["cnn.3.weight"].shape[0], 1, 1), "classifier.bias": torch.zeros(1)})
    size = cfg.image_size
    model_kwargs = {  # train.py build_model
        "vocab": sg_vocab, "image_size": (size, size), "embedding_dim": e, "gconv_dim": mc.gconv_dim,
        "gconv_hidden_dim": h, "gconv_num_layers": mc.gconv_num_layers, "mlp_normalization": mc.mlp_normalization,
        "refinement_dims": tuple(mc.refinement_dims), "normalization": mc.normalization,
        "activation": mc.activation, "mask_size": mc.mask_size, "layout_noise_dim": mc.layout_noise_dim,
    }  # fmt: skip
    d_kw = {"vocab": sg_vocab, "normalization": mc.d_normalization, "activation": mc.d_activation, "padding": mc.d_padding}
    args = {"dataset": "coco", "batch_size": 32, "num_iterations": 1000000, "learning_rate": 1e-4,
            "eval_mode_after": 100000, "image_size": (size, size), "mask_size": mc.mask_size,
            "mask_loss_weight": 0.0, "checkpoint_every": 10000, "output_dir": os.getcwd()}  # fmt: skip
    checkpoint = {  # train.py main(): the dict it torch.saves, with its non-tensor entries
        "args": args, "vocab": sg_vocab, "model_kwargs": model_kwargs,
        "d_obj_kwargs": {**d_kw, "arch": mc.d_obj_arch, "object_size": mc.crop_size},
        "d_img_kwargs": {**d_kw, "arch": mc.d_img_arch},
        "losses_ts": [10], "losses": defaultdict(list, {"total_loss": [1.5]}), "d_losses": defaultdict(list),
        "checkpoint_ts": [10], "train_batch_data": [], "train_samples": [], "train_iou": [0.1],
        "val_batch_data": [], "val_samples": [], "val_losses": defaultdict(list), "val_iou": [], "norm_d": [],
        "norm_g": [], "counters": {"t": 10, "epoch": 0}, "model_state": model_state, "optim_state": None,
        "d_obj_state": d_obj, "d_obj_optim_state": None, "d_img_state": d_img, "d_img_optim_state": None,
        "best_t": [],
    }  # fmt: skip
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    return checkpoint


def _samples(method: Any, dataset: str, size: int, n: int = 3) -> torch.Tensor:
    ds = build_dataset(dataset, load_protocol(dataset)["eval_splits"][0], size)
    batch = collate([ds[i] for i in range(n)])
    return method.sample(batch, [torch.Generator().manual_seed(i) for i in range(n)], layout="pred")


@pytest.mark.parametrize("legacy", [True, False])
def test_sg2im_release_converts_to_equal_outputs(tmp_path: Path, legacy: bool) -> None:
    cfg, method = _model("shapes")
    released = write_release(tmp_path / "shapes64.pt", cfg, method, legacy=legacy)
    assert released["model_state"]["obj_embeddings.weight"].shape[0] == method.info.vocab.num_objects + 1
    assert {"gconv.net1.0.weight", "rel_aux_net.2.bias", "refinement_net.refinement_modules.0.net.0.weight",
            "mask_net.16.weight"} <= set(released["model_state"])  # fmt: skip
    assert {"discriminator.cnn.0.0.weight", "discriminator.cnn.2.weight"} <= set(released["d_obj_state"])
    out = tmp_path / "imported.safetensors"
    imported = import_sg2im(tmp_path / "shapes64.pt", out, "shapes", tier="smoke")
    assert imported["vocab_permuted"] and imported["discriminators"] == "imported"
    meta = read_metadata(out)
    assert meta["imported"]["kind"] == "sg2im" and meta["step"] == 10
    loaded, _ = load_method(out)
    ref = {k: v for k, v in method.state_dict().items() if not k.endswith("num_batches_tracked")}
    got = loaded.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert torch.equal(_samples(method, "shapes", cfg.image_size), _samples(loaded, "shapes", cfg.image_size))


def test_stripped_release_without_discriminators(tmp_path: Path) -> None:
    """sg2im strip_checkpoint.py --keep_discriminators 0: the generator is imported, the Ds are seeded."""
    cfg, method = _model("shapes")
    ckpt = write_release(tmp_path / "full.pt", cfg, method)
    torch.save({k: ckpt[k] for k in ("args", "model_state", "model_kwargs")}, tmp_path / "vg64.pt")
    imported = import_sg2im(tmp_path / "vg64.pt", tmp_path / "a.safetensors", "shapes", tier="smoke")
    assert imported["discriminators"].startswith("not in the file")
    loaded, _ = load_method(tmp_path / "a.safetensors")
    assert torch.equal(_samples(method, "shapes", cfg.image_size), _samples(loaded, "shapes", cfg.image_size))


def test_vocabulary_mismatch_is_refused_naming_the_entries(tmp_path: Path) -> None:
    cfg, method = _model("shapes")
    path = tmp_path / "bad.pt"
    ckpt = write_release(path, cfg, method)
    names = ckpt["model_kwargs"]["vocab"]["object_idx_to_name"]
    lost = names[3]
    names[3] = "zebra"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=rf"object_idx_to_name.*{lost!r}.*lacks.*'zebra'"):
        import_sg2im(path, tmp_path / "x.safetensors", "shapes", tier="smoke")
    assert not (tmp_path / "x.safetensors").exists()


class NotAllowed:
    def __init__(self, marker: str) -> None:
        self.marker = marker


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [True, False])
def test_unexpected_pickle_global_is_refused_by_name(tmp_path: Path, legacy: bool) -> None:
    zip_ = not legacy
    marker = tmp_path / "ran"
    torch.save({"model_state": {}, "x": RunsCode(marker)}, tmp_path / "a.pt", _use_new_zipfile_serialization=zip_)
    with pytest.raises(CheckpointError, match=rf"a\.pt: refused: .*\b{os.system.__module__}\.system\b"):
        read_torch_pickle(tmp_path / "a.pt")
    assert not marker.exists()
    torch.save({"model_kwargs": NotAllowed("m")}, tmp_path / "b.pt", _use_new_zipfile_serialization=zip_)
    with pytest.raises(CheckpointError, match=rf"{__name__}\.NotAllowed"):
        import_sg2im(tmp_path / "b.pt", tmp_path / "b.safetensors", "shapes", tier="smoke")


def test_convert_then_eval_on_shapes(tmp_path: Path) -> None:
    cfg, method = _model("shapes")
    write_release(tmp_path / "s.pt", cfg, method)
    out = tmp_path / "s.safetensors"
    import_sg2im(tmp_path / "s.pt", out, "shapes", tier="smoke")
    result, path = eval_checkpoint(out, "cpu", {"eval.num_graphs": 8}, tmp_path / "results", progress=False)
    assert result.imported is not None and result.imported["kind"] == "sg2im"
    assert any(w.source == "imported:s.pt" for w in result.weights)
    assert result.checkpoint is not None and result.checkpoint["tensors_sha256"] == read_metadata(out)["tensors_sha256"]
    assert result.evaluations[0].metrics["fid"].value is not None
    assert '"imported"' in path.read_text()


def test_convert_then_eval_on_the_coco_stuff_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cs = registry.get("dataset", "coco_stuff")
    cs.write_fixture(tmp_path / "data" / "coco_stuff")
    monkeypatch.setenv("SG2I_DATA_ROOT", str(tmp_path / "data"))
    cfg, method = _model("coco_stuff")
    assert cfg.image_size == 64 and any(n.startswith("__none_") for n in method.info.vocab.object_idx_to_name)
    ckpt = write_release(tmp_path / "coco64.pt", cfg, method, none_ids=True)
    assert "NONE" in ckpt["model_kwargs"]["vocab"]["object_idx_to_name"]  # sg2im's name for unused COCO ids
    out = tmp_path / "coco64.safetensors"
    import_sg2im(tmp_path / "coco64.pt", out, "coco_stuff", tier="smoke")
    loaded, _ = load_method(out)
    assert torch.equal(_samples(method, "coco_stuff", 64), _samples(loaded, "coco_stuff", 64))
    result, _ = eval_checkpoint(out, "cpu", None, tmp_path / "results", progress=False)
    assert result.imported is not None and result.image_size == 64
    assert result.evaluations[0].n_generated > 0


# ---------------------------------------------------------------------------------------------------------
# openai UNets


def legacy_attention(x: torch.Tensor, blk: dict[str, torch.Tensor], heads: int) -> torch.Tensor:
    """improved-diffusion ``AttentionBlock._forward`` + ``QKVAttention`` written out: qkv reshaped to
    ``[B * heads, 3 d, T]`` and split into q, k, v per head; ``softmax((q / d^1/4)^T (k / d^1/4))``."""
    b, c, hh, ww = x.shape
    xs = x.reshape(b, c, -1)
    hn = F.group_norm(xs.float(), 32, blk["norm.weight"], blk["norm.bias"], eps=1e-5)
    qkv = F.conv1d(hn, blk["qkv.weight"], blk["qkv.bias"]).reshape(b * heads, -1, hh * ww)
    ch = qkv.shape[1] // 3
    q, k, v = torch.split(qkv, ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    h = torch.einsum("bts,bcs->bct", w, v).reshape(b, -1, hh * ww)
    return (xs + F.conv1d(h, blk["proj_out.weight"], blk["proj_out.bias"])).reshape(b, c, hh, ww)


def test_qkv_conversion_matches_the_legacy_attention() -> None:
    g = torch.Generator().manual_seed(0)
    c, heads = 128, 4
    blk = {"norm.weight": torch.rand(c, generator=g) + 0.5, "norm.bias": torch.randn(c, generator=g),
           "qkv.weight": torch.randn(3 * c, c, 1, generator=g) * 0.3, "qkv.bias": torch.randn(3 * c, generator=g),
           "proj_out.weight": torch.randn(c, c, 1, generator=g) * 0.2, "proj_out.bias": torch.randn(c, generator=g)}  # fmt: skip
    x = torch.randn(2, c, 4, 4, generator=g)
    ours = AttentionBlock(c, num_heads=heads)
    assert ours.norm.num_groups == 32  # openai's GroupNorm32
    converted = {k: qkv_heads_to_ours(v, heads) if k.startswith("qkv.") else v for k, v in blk.items()}
    ours.load_state_dict(converted)
    ref = legacy_attention(x, blk, heads)
    assert torch.allclose(ours(x), ref, rtol=1e-5, atol=1e-4)
    ours.load_state_dict(blk)  # unconverted: a different function (the test can fail)
    assert not torch.allclose(ours(x), ref, rtol=1e-3, atol=1e-2)


def _tiny_unet(in_channels: int = 3, cond: bool = False) -> UNetModel:
    return UNetModel(in_channels=in_channels, model_channels=128, out_channels=6, num_res_blocks=1,
                     attention_resolutions=(1,), channel_mult=(1,), num_head_channels=64,
                     use_scale_shift_norm=True, cond_dim=8 if cond else 0, encoder_channels=8 if cond else None)  # fmt: skip


def test_openai_unet_state_dict_initialises_ours(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = _tiny_unet()
    heads = {n: m.num_heads for n, m in src.named_modules() if isinstance(m, AttentionBlock)}
    released = {}
    for k, v in src.state_dict().items():
        mod = k.rsplit(".", 1)[0]
        if mod.endswith(".qkv") and mod[: -len(".qkv")] in heads:  # ours -> openai's (head, qkv, d) order
            h = heads[mod[: -len(".qkv")]]
            v = v.reshape(3, h, -1, *v.shape[1:]).transpose(0, 1).reshape(v.shape)
        released[k] = v.clone()
    torch.save(released, tmp_path / "model.pt")
    torch.manual_seed(1)
    dst = _tiny_unet(in_channels=3 + 8, cond=True)  # layout channels, condition and cross-attention: ours only
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    left = load_openai_unet(tmp_path / "model.pt", dst)
    assert left and all(("cond_embed" in k or "encoder_kv" in k) for k in left)
    got = dst.state_dict()
    w = got["input_blocks.0.0.weight"]
    assert torch.equal(w[:, :3], src.state_dict()["input_blocks.0.0.weight"])
    assert torch.equal(w[:, 3:], before["input_blocks.0.0.weight"][:, 3:])
    for k, v in src.state_dict().items():
        if k != "input_blocks.0.0.weight":
            assert torch.equal(got[k], v), k
    bad = dict(released)
    bad["out.2.weight"] = torch.zeros(5, 128, 3, 3)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt: field 'out\.2\.weight' has shape"):
        load_openai_unet(tmp_path / "bad.pt", _tiny_unet())


def test_init_from_in_a_diffusion_run(tmp_path: Path) -> None:
    """``--set method.init_from=FILE``: the fresh run's UNet (and EMA) start from the file; recorded in weights."""
    wide = {"method.model_channels": 128, "method.channel_mult": (1,), "method.num_res_blocks": 1,
            "method.num_head_channels": 64, "method.attention_resolutions": (32,)}  # fmt: skip
    cfg = build_run_config("learned_ddpm", "shapes", "smoke", 0, "cpu", wide)
    proto = load_protocol("shapes")
    info = dataset_info(build_dataset("shapes", proto["train_split"], cfg.image_size), proto["version"])
    torch.manual_seed(0)
    src = registry.get("method", "learned_ddpm")(cfg.method_cfg, info).net.unet
    keep = {k: v for k, v in src.state_dict().items() if "cond_embed" not in k and "encoder_kv" not in k}
    heads = {f"{n}.qkv": m.num_heads for n, m in src.named_modules() if isinstance(m, AttentionBlock)}
    released = {}
    for k, v in keep.items():
        mod = k.rsplit(".", 1)[0]
        if mod in heads:
            v = v.reshape(3, heads[mod], -1, *v.shape[1:]).transpose(0, 1).reshape(v.shape)
        released[k] = v
    torch.save(released, tmp_path / "ema_0.9999.pt")
    cfg2 = build_run_config("learned_ddpm", "shapes", "smoke", 0, "cpu", {**wide, "method.init_from": str(tmp_path / "ema_0.9999.pt")})
    torch.manual_seed(5)
    method = registry.get("method", "learned_ddpm")(cfg2.method_cfg, info)
    method.setup(None)  # type: ignore[arg-type]
    for k, v in keep.items():
        assert torch.equal(method.net.unet.state_dict()[k], v) and torch.equal(method.ema.unet.state_dict()[k], v), k
    assert any(w.name == "unet_init" and w.sha256 for w in method.weight_provenance())
    narrow = registry.get("method", "learned_ddpm")(build_run_config("learned_ddpm", "shapes", "smoke").method_cfg, info)
    with pytest.raises(CheckpointError, match="32 groups"):
        load_openai_unet(tmp_path / "ema_0.9999.pt", narrow.net.unet)


def test_reproduce_of_an_imported_result_rescores_it(tmp_path: Path) -> None:
    from benchmark.reproduce import reproduce

    cfg, method = _model("shapes")
    write_release(tmp_path / "s.pt", cfg, method)
    out = tmp_path / "s.safetensors"
    import_sg2im(tmp_path / "s.pt", out, "shapes", tier="smoke")
    _, path = eval_checkpoint(out, "cpu", {"eval.num_graphs": 8}, tmp_path / "results", progress=False)
    verdict, rows, new, _ = reproduce(path, tmp_path / "rep", device="cpu", progress=False)
    assert verdict == "exact" and new.imported is not None and new.evaluations[0].num_graphs == 8
    assert [r.verdict for r in rows if r.what == "checkpoint tensors_sha256"] == ["exact"]
