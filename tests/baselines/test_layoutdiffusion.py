"""LayoutDiffusion: object-aware attention against a per-patch reference, the layout sequence, the gt/pred
layout switch, determinism, resume, released parameter counts and the LostGAN protocol variant."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from baselines.layoutdiffusion import (
    LayoutDiffusion,
    LayoutDiffusionConfig,
    LayoutDiffusionUNet,
    LayoutFusion,
    LayoutTokens,
    ObjectAwareCrossAttention,
    masked_group_norm,
)
from benchmark import registry
from benchmark.batch import collate
from benchmark.config import build_run_config
from benchmark.nn.layout import pack_objects
from benchmark.nn.layout_predictor import usable_boxes
from benchmark.results import load_result
from benchmark.run import run
from benchmark.seeding import sample_generators
from benchmark.train import build_dataset, train


def _cfg(**kw) -> LayoutDiffusionConfig:
    base = {k.removeprefix("method."): v for k, v in LayoutDiffusion.tier_overrides["smoke"].items() if k.startswith("method.")}
    return dataclasses.replace(LayoutDiffusionConfig(), **{**base, **kw})


def _method(info, seed: int = 0, **kw) -> LayoutDiffusion:
    torch.manual_seed(seed)
    return LayoutDiffusion(_cfg(**kw), info)


def _perturb(module: torch.nn.Module, seed: int = 1) -> None:
    """Random weights everywhere (the zero-initialised output layers included), so that outputs depend on inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


# ---------------------------------------------------------------------------------------------------------
# object-aware cross-attention


def _groupnorm_1(x: torch.Tensor, gn: torch.nn.GroupNorm) -> torch.Tensor:
    """GroupNorm with one group, by hand: x [C, N] -> (x - mean) / sqrt(var + eps) * w + b."""
    assert gn.num_groups == 1
    mu, var = x.mean(), x.var(unbiased=False)
    return (x - mu) / torch.sqrt(var + gn.eps) * gn.weight[:, None] + gn.bias[:, None]


def test_object_aware_attention_matches_a_per_patch_computation():
    """1 head, C = 2 channels, a 2 x 2 map, 2 object tokens: the released formula written patch by patch."""
    c, dim = 2, 2
    att = ObjectAwareCrossAttention(c, num_heads=1, encoder_channels=dim).double()
    _perturb(att)
    box_embed = torch.nn.Linear(4, dim).double()
    _perturb(box_embed, seed=2)
    x = torch.randn(1, c, 2, 2, dtype=torch.float64)
    content, cls = torch.randn(1, 2, dim, dtype=torch.float64), torch.randn(1, 2, dim, dtype=torch.float64)
    obj_boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.5, 0.0, 1.0, 0.5]]], dtype=torch.float64)
    tokens = LayoutTokens(content, cls, box_embed(obj_boxes), torch.ones(1, 2, dtype=torch.bool), box_embed)
    out = att(x, tokens)

    # by hand, patch p = (row i, column j) has box (j/2, i/2, (j+1)/2, (i+1)/2)
    W = lambda conv: conv.weight[:, :, 0]  # noqa: E731
    h = x[0].reshape(c, 4)
    qkv = W(att.qkv) @ _groupnorm_1(h, att.norm) + att.qkv.bias[:, None]
    q, k, v = qkv[:c], qkv[c : 2 * c], qkv[2 * c :]
    pboxes = torch.tensor([[j / 2, i / 2, (j + 1) / 2, (i + 1) / 2] for i in range(2) for j in range(2)], dtype=torch.float64)
    pp = _groupnorm_1(W(att.pos_proj) @ box_embed(pboxes).T + att.pos_proj.bias[:, None], att.norm_patch_pos)
    po = _groupnorm_1(W(att.pos_proj) @ box_embed(obj_boxes[0]).T + att.pos_proj.bias[:, None], att.norm_obj_pos)
    mix = (content[0].T + _groupnorm_1(cls[0].T, att.norm_cls)) / 2
    kv_o = W(att.content_kv) @ mix + att.content_kv.bias[:, None]
    k_o, v_o = kv_o[:c], kv_o[c:]
    expected = torch.empty(c, 4, dtype=torch.float64)
    for p in range(4):
        query = torch.cat([q[:, p], pp[:, p]])
        keys = [torch.cat([k[:, j], pp[:, j]]) for j in range(4)] + [torch.cat([k_o[:, o], po[:, o]]) for o in range(2)]
        vals = [v[:, j] for j in range(4)] + [v_o[:, o] for o in range(2)]
        scores = torch.stack([query @ key for key in keys]) / math.sqrt(2 * c)
        w = torch.softmax(scores, 0)
        a = sum(wi * vi for wi, vi in zip(w, vals))
        expected[:, p] = h[:, p] + W(att.proj_out) @ a + att.proj_out.bias
    torch.testing.assert_close(out[0].reshape(c, 4), expected)


# ---------------------------------------------------------------------------------------------------------
# layout fusion module and the layout sequence


def test_layout_sequence_image_first_then_objects_then_null_padding(shapes):
    ds, info = shapes
    m = _method(info, layout_length=4)
    items = [ds[i] for i in range(8)]
    big = max(range(8), key=lambda i: len(items[i].objs))
    small = min(range(8), key=lambda i: len(items[i].objs))
    batch = collate([items[small], items[big]])
    classes, boxes, mask = m.layout_sequence(batch, batch.boxes)
    n_big = len(items[big].objs)  # including __image__
    assert classes.shape == (2, max(4, n_big)) and boxes.shape == (2, max(4, n_big), 4)
    assert (classes[:, 0] == m.image_obj).all() and torch.equal(boxes[:, 0], torch.tensor([[0.0, 0, 1, 1]] * 2))
    for row, it in enumerate([items[small], items[big]]):
        real = it.objs != m.image_obj
        k = int(real.sum())
        assert torch.equal(classes[row, 1 : 1 + k], it.objs[real])
        assert torch.equal(boxes[row, 1 : 1 + k], it.boxes[real])
        assert (classes[row, 1 + k :] == m.null_class).all() and (boxes[row, 1 + k :] == 0).all()
        assert int(mask[row].sum()) == max(4, k + 1)  # released: padding up to layout_length is attended to
    dropped, dboxes, dmask = m.layout_sequence(batch, batch.boxes, torch.tensor([True, False]))
    assert (dropped[0, 1:] == m.null_class).all() and (dboxes[0, 1:] == 0).all() and int(dmask[0].sum()) == 4


def test_masked_group_norm_ignores_masked_tokens():
    gn = torch.nn.GroupNorm(2, 4)
    _perturb(gn)
    x = torch.randn(2, 4, 5)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    out = masked_group_norm(x, mask, gn)
    torch.testing.assert_close(out[0, :, :3], gn(x[:1, :, :3])[0])
    torch.testing.assert_close(out[1], gn(x[1:])[0])
    torch.testing.assert_close(masked_group_norm(x, torch.ones(2, 5, dtype=torch.bool), gn), gn(x))


def test_fusion_shapes_and_masked_slots_do_not_change_the_tokens():
    torch.manual_seed(0)
    fusion = LayoutFusion(num_classes=6, dim=16, layers=2, heads=2).eval()
    classes = torch.tensor([[0, 1, 5, 5, 5], [0, 2, 3, 4, 1]])
    boxes = torch.rand(2, 5, 4)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    tok = fusion(classes, boxes, mask)
    assert tok.content.shape == tok.cls.shape == tok.pos.shape == (2, 5, 16)
    alone = fusion(classes[:1, :3], boxes[:1, :3], mask[:1, :3])
    torch.testing.assert_close(tok.content[0, :3], alone.content[0], atol=1e-5, rtol=1e-5)


def test_an_image_samples_the_same_alone_and_beside_a_longer_layout(shapes):
    ds, info = shapes
    m = _method(info, layout_length=3)
    _perturb(m.ema)
    items = [ds[i] for i in range(8)]
    order = sorted(range(8), key=lambda i: len(items[i].objs))
    small, big = items[order[0]], items[order[-1]]
    assert len(big.objs) > len(small.objs)
    g = lambda: sample_generators(0, "test", [0], 0)  # noqa: E731
    alone = m.sample(collate([small]), g(), layout="gt")
    both = m.sample(collate([small, big]), g() + sample_generators(0, "test", [1], 0), layout="gt")
    torch.testing.assert_close(both[0], alone[0], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# the layout switch


def _boxes_reaching_the_model(m: LayoutDiffusion, batch, layout: str) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    hook = m.ema.fusion.register_forward_pre_hook(lambda mod, args: seen.append(args[1].clone()))
    try:
        m.sample(batch, sample_generators(0, "test", list(range(batch.num_images)), 0), layout=layout)
    finally:
        hook.remove()
    seq = seen[0]  # conditional layout (the second call is the null layout)
    keep = batch.objs != m.image_obj
    _, slot, _, _ = pack_objects(batch.obj_to_img[keep], batch.num_images)
    return seq[batch.obj_to_img[keep], slot + 1]


def test_gt_and_pred_boxes_reach_the_model(shapes):
    ds, info = shapes
    m = _method(info)
    batch = collate([ds[i] for i in range(3)])
    keep = batch.objs != m.image_obj
    gt = _boxes_reaching_the_model(m, batch, "gt")
    torch.testing.assert_close(gt, batch.boxes[keep])
    pred = _boxes_reaching_the_model(m, batch, "pred")
    torch.testing.assert_close(pred, m.predict_boxes(batch, [])[keep])
    assert not torch.allclose(gt, pred)
    # an object without a ground-truth box (4D-OR) takes its predicted box in gt mode
    batch.has_layout = torch.ones_like(batch.objs, dtype=torch.bool)
    first = int(keep.nonzero()[0])
    batch.has_layout[first] = False
    mixed = _boxes_reaching_the_model(m, batch, "gt")
    expected = batch.boxes[keep].clone()
    expected[0] = m.predict_boxes(batch, [])[first]
    torch.testing.assert_close(mixed, expected)


def test_eval_layout_defaults_to_gt_in_every_tier_and_pred_is_one_set_away():
    for tier in ("smoke", "quick", "full"):
        assert build_run_config("layoutdiffusion", "shapes", tier).eval.layout == "gt"
    assert build_run_config("layoutdiffusion", "shapes", "smoke", sets={"eval.layout": "pred"}).eval.layout == "pred"


def test_box_predictor_trains_with_its_own_optimizer(shapes):
    ds, info = shapes
    m = _method(info)
    before = [p.detach().clone() for p in m.box_net.parameters()]
    logs = m.train_step(collate([ds[i] for i in range(4)]), 0)
    assert "box" in logs and math.isfinite(logs["box"])
    assert any(not torch.equal(a, b) for a, b in zip(before, m.box_net.parameters()))
    assert set(m.optimizer_state()) == {"opt", "box_opt"}


def test_layout_from_a_missing_checkpoint_stops_naming_the_field(shapes):
    _, info = shapes
    m = _method(info, layout_from="/nonexistent/checkpoint.safetensors")
    assert m.box_net is None
    with pytest.raises(FileNotFoundError, match="method.layout_from"):
        m.setup(None)


def test_layout_from_an_sg2im_checkpoint_uses_its_boxes_and_records_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("SG2I_DATA_ROOT", str(tmp_path / "none"))  # shapes needs no files
    src_cfg = build_run_config("sg2im", "shapes", "smoke", seed=0, device="cpu")
    src = train(src_cfg, tmp_path / "sg2im", progress=False)
    ckpt = tmp_path / "sg2im" / "checkpoint.safetensors"
    cfg = build_run_config(
        "layoutdiffusion", "shapes", "smoke", seed=0, device="cpu", sets={"method.layout_from": str(ckpt), "eval.layout": "pred"}
    )
    out = train(cfg, tmp_path / "ld", progress=False)
    m = out.method
    assert m.box_net is None
    ds = build_dataset("shapes", "test", 32)
    batch = collate([ds[i] for i in range(2)])
    gens = lambda: sample_generators(0, "test", [0, 1], 0)  # noqa: E731
    theirs = src.method.predict_boxes(batch, gens())
    mine = m.predict_boxes(batch, gens())
    keep = batch.objs != m.image_obj
    torch.testing.assert_close(mine[keep], usable_boxes(theirs.float())[keep])
    prov = m.weight_provenance()
    assert len(prov) == 1 and prov[0].name == "layout_from" and prov[0].sha256


# ---------------------------------------------------------------------------------------------------------
# determinism, resume


def test_same_seed_same_weights_and_samples(shapes):
    ds, info = shapes
    batches = [collate([ds[i + 4 * s] for i in range(4)]) for s in range(2)]
    states = []
    for _ in range(2):
        m = _method(info)
        torch.manual_seed(5)
        for s, b in enumerate(batches):
            m.train_step(b, s)
        states.append((m.state_dict(), m))
    (a, ma), (b, mb) = states
    assert all(torch.equal(a[k], b[k]) for k in a)
    gens = lambda: sample_generators(0, "test", list(range(4)), 0)  # noqa: E731
    x = ma.sample(batches[0], gens(), layout="gt")
    assert torch.equal(x, mb.sample(batches[0], gens(), layout="gt"))
    assert torch.equal(x, ma.sample(batches[0], gens(), layout="gt"))


def test_resume_after_an_interruption_gives_the_same_weights(tmp_path, monkeypatch):
    sets = {"train.steps": 4, "train.checkpoint_every": 2}
    cfg = build_run_config("layoutdiffusion", "shapes", "smoke", seed=0, device="cpu", sets=sets)
    straight = train(cfg, tmp_path / "a", progress=False).method.state_dict()

    real = LayoutDiffusion.train_step

    def interrupted(self, batch, step):
        if step >= 3:
            raise KeyboardInterrupt
        return real(self, batch, step)

    monkeypatch.setattr(LayoutDiffusion, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", progress=False)
    monkeypatch.setattr(LayoutDiffusion, "train_step", real)
    resumed = train(cfg, tmp_path / "b", progress=False)
    assert resumed.resumed_from == 2
    state = resumed.method.state_dict()
    for k in straight:
        assert torch.equal(straight[k], state[k]), k


# ---------------------------------------------------------------------------------------------------------
# released configurations, protocol


@pytest.mark.parametrize("size,total", [(128, 435_286_278), (256, 568_586_758)])
def test_full_configuration_has_the_released_parameter_count(size, total):
    """Counts of ZGCTroy/LayoutDiffusion's LayoutDiffusionUNetModel + LayoutTransformerEncoder built from
    configs/COCO-stuff_{128x128,256x256}/LayoutDiffusion_large.yaml (185 COCO-Stuff layout classes)."""
    with torch.device("meta"):
        net = LayoutDiffusionUNet(LayoutDiffusionConfig(), num_classes=185, image_size=size)
    assert sum(p.numel() for p in net.parameters()) == total


def test_registered_with_smoke_quick_full_tiers():
    cls = registry.get("method", "layoutdiffusion")
    assert set(cls.tier_overrides) == {"smoke", "quick", "full"}
    assert build_run_config("layoutdiffusion", "shapes", "full").image_size == 128
    assert build_run_config("layoutdiffusion", "shapes", "full", sets={"image_size": 256}).image_size == 256


def test_lostgan_protocol_on_the_coco_stuff_fixture_runs_and_is_recorded(tmp_path, monkeypatch):
    root = tmp_path / "data"
    registry.get("dataset", "coco_stuff").write_fixture(root / "coco_stuff")
    monkeypatch.setenv("SG2I_DATA_ROOT", str(root))
    cfg = build_run_config("layoutdiffusion", "coco_stuff", "smoke", seed=0, device="cpu", protocol="lostgan")
    result, path = run(cfg, tmp_path / "runs", tmp_path / "results", progress=False)
    again = load_result(path)
    assert again.config["protocol"] == "lostgan"
    assert [e.split for e in again.evaluations] == ["test_lostgan"]
    assert all(e.layout == "gt" for e in again.evaluations)


def test_activation_checkpointing_gives_the_same_gradients(shapes):
    """The full tier recomputes the UNet blocks in the backward pass; the layout tokens (a dataclass argument)
    must still receive their gradients."""
    ds, info = shapes
    batch = collate([ds[i] for i in range(2)])
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        net = LayoutDiffusionUNet(_cfg(activation_checkpointing=ckpt), len(info.vocab.object_idx_to_name) + 1, 32)
        _perturb(net)
        m = _method(info)
        tokens = net.fusion(*m.layout_sequence(batch, batch.boxes))
        out = net(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 500]), tokens)
        out.square().mean().backward()
        grads.append({k: p.grad.clone() for k, p in net.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    assert grads[0]["fusion.class_embed.weight"].abs().sum() > 0
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# SceneGenie sampling-time guidance (methods/guidance.py) on the object-aware attention


def test_recorded_object_attention_is_the_softmax_share_of_the_object_keys(shapes):
    from methods.unet import record_cross_attention

    ds, info = shapes
    m = _method(info)
    _perturb(m.ema)
    batch = collate([ds[i] for i in range(2)])
    tokens = m.ema.fusion(*m.layout_sequence(batch, batch.boxes))
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([500, 500])
    with torch.no_grad():
        plain = m.ema(x, t, tokens)
        with record_cross_attention(m.ema.unet) as maps:
            recorded = m.ema(x, t, tokens)
    assert torch.equal(plain, recorded), "recording must not change the output"
    blocks = [b for b in m.ema.unet.modules() if getattr(b, "attends_to_tokens", False)]
    assert len(maps) == len(blocks) > 0
    ln = tokens.content.shape[1]
    for a in maps:
        assert a.shape[0] == 2 and a.shape[-1] == ln
        share = a.sum(-1)  # the object keys' part of each patch's attention: in (0, 1)
        assert bool((share > 0).all()) and bool((share < 1).all())


def test_guidance_weight_zero_is_the_unguided_sample_and_the_box_term_changes_it(shapes):
    ds, info = shapes
    batch = collate([ds[i] for i in range(2)])
    m = _method(info)
    _perturb(m.ema)
    g = lambda: sample_generators(0, "test", [0, 1], 0)  # noqa: E731
    plain = m.sample(batch, g(), layout="gt")
    state = m.state_dict()
    zero = _method(info, guidance="scenegenie", guidance_box_weight=0.0)
    zero.load_state_dict(state)
    assert zero.scenegenie is None and torch.equal(zero.sample(batch, g(), layout="gt"), plain)
    guided = _method(info, guidance="scenegenie", guidance_box_weight=1e4)
    guided.load_state_dict(state)
    out = guided.sample(batch, g(), layout="gt")
    assert not torch.equal(out, plain)
    assert torch.equal(out, guided.sample(batch, g(), layout="gt")), "guided sampling is deterministic"


def test_box_term_step_lowers_the_object_attention_energy(shapes):
    from methods.guidance import box_energy
    from methods.unet import record_cross_attention

    ds, info = shapes
    batch = collate([ds[i] for i in range(2)])
    m = _method(info, guidance="scenegenie", guidance_box_weight=1.0, guidance_scale=0.0)
    _perturb(m.ema)
    tokens = m.ema.fusion(*m.layout_sequence(batch, batch.boxes))
    inputs = m.guidance_inputs(batch, batch.boxes, sample_generators(0, "test", [0, 1], 0))
    plain = lambda x_, t_: m.ema(x_, t_, tokens).float()  # noqa: E731
    guided = m.scenegenie.wrap(plain, m.diffusion.alphas_cumprod, inputs, lambda: record_cross_attention(m.ema.unet))
    x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([600, 600])

    def energy(x_):
        with torch.no_grad(), record_cross_attention(m.ema.unet) as maps:
            plain(x_, t)
        return float(box_energy(maps, inputs.boxes, inputs.obj_to_img, inputs.token_index, inputs.include, 2).sum())

    with torch.no_grad():
        delta = guided(x, t)[:, :3] - plain(x, t)[:, :3]
    assert float(delta.abs().max()) > 0
    # x_{t-1} moves by -c * delta with c > 0 for every eps-parameterised step: a small step must lower E.
    e0 = energy(x)
    step = 1e-2 / float(delta.abs().max())
    assert energy(x - step * delta) < e0
