"""LostGAN-V2 baseline (baselines/lostgan_v2.py): ISLA-Norm, architecture sizes, the gt/pred layout switch,
determinism, resume, and the LostGAN protocol variant."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from baselines.lostgan_v2 import (
    IslaNorm,
    LostGanDiscriminator,
    LostGanGenerator,
    LostGanV2,
    LostGanV2Config,
    box_masks,
)
from benchmark import registry
from benchmark.batch import collate
from benchmark.config import build_run_config
from benchmark.nn.layout_predictor import usable_boxes
from benchmark.protocol import load_protocol
from benchmark.seeding import sample_generators
from benchmark.train import train


def _method(info, seed: int = 0, **kw) -> LostGanV2:
    smoke = {k.removeprefix("method."): v for k, v in LostGanV2.tier_overrides["smoke"].items() if k.startswith("method.")}
    torch.manual_seed(seed)
    return LostGanV2(dataclasses.replace(LostGanV2Config(), **{**smoke, **kw}), info)


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data_root")
    for name in registry.names("dataset"):
        registry.get("dataset", name).write_fixture(root / name)
    return root


# ---------------------------------------------------------------------------------------------------------
# ISLA-Norm and layers


def _linear(weight: float, bias: float | None) -> nn.Linear:
    lin = nn.Linear(1, 1, bias=bias is not None)
    with torch.no_grad():
        lin.weight.fill_(weight)
        if bias is not None:
            lin.bias.fill_(bias)
    return lin


def test_isla_norm_against_hand_computed_values():
    """Two objects on a 4x4 map: A covers columns 0-1, B columns 1-2, nobody column 3.

    ``w_A = 1``, ``w_B = 2``; ``gamma = 2 w`` (A: 2, B: 4), ``beta = 3 - 2 w`` (A: 1, B: -1). The input is +1 on
    the top two rows and -1 below, so batch norm gives ``x / sqrt(1 + 1e-5)``. Per column the affine is the
    mask-weighted average: gamma ``1 + (2, 3, 4, 0)`` and beta ``(1, 0, -1, 0)`` (denominators + 1e-6).
    """
    norm = IslaNorm(1, 1)
    norm.weight_proj, norm.bias_proj = _linear(2.0, None), _linear(-2.0, 3.0)
    x = torch.tensor([1.0, 1.0, -1.0, -1.0]).view(1, 1, 4, 1).expand(1, 1, 4, 4).contiguous()
    masks = torch.zeros(1, 2, 4, 4)
    masks[0, 0, :, 0:2] = 1
    masks[0, 1, :, 1:3] = 1
    w = torch.tensor([[[1.0], [2.0]]])  # [N=1, S=2, num_w=1]
    out = norm(x, w, masks)
    x_hat = x / math.sqrt(1 + 1e-5)
    e = 1e-6
    gamma = torch.tensor([1 + 2 / (1 + e), 1 + 6 / (2 + e), 1 + 4 / (1 + e), 1.0])
    beta = torch.tensor([1 / (1 + e), 0.0, -1 / (1 + e), 0.0])
    torch.testing.assert_close(out, gamma.view(1, 1, 1, 4) * x_hat + beta.view(1, 1, 1, 4), rtol=0, atol=1e-5)
    # masks at another resolution are resized to the features' (bilinear): an all-ones 2x2 map stays all ones
    out2 = norm(x, torch.tensor([[[1.0]]]), torch.ones(1, 1, 2, 2))
    torch.testing.assert_close(out2, (1 + 2 / (1 + e)) * x_hat + 1 / (1 + e), rtol=0, atol=1e-5)


def test_box_masks_are_the_released_hard_masks():
    m = box_masks(torch.tensor([[0.25, 0.0, 0.75, 0.5]]), 5)  # pixel centres 0, .25, .5, .75, 1
    want = torch.zeros(5, 5)
    want[0:3, 1:4] = 1
    assert torch.equal(m[0], want)


@pytest.mark.parametrize(
    "size,g_params,d_params",
    # the released ResnetGenerator128/256 and ResnetDiscriminator128/256 with COCO's 184 classes (resnet_generator_v2.py,
    # rcnn_discriminator.py): parameters counted from their layer shapes
    [(128, 40_471_888, 57_881_538), (256, 46_154_960, 66_665_154)],
)
def test_full_architectures_build_and_have_the_released_shapes(size, g_params, d_params):
    cfg = LostGanV2Config()
    with torch.device("meta"):
        g = LostGanGenerator(cfg, 184, size)
        d = LostGanDiscriminator(cfg.ch, 184, size)
    # generator: fc to 16 ch x 4 x 4, ch x 2^k blocks, label embedding 180, num_w = 308, stage masks 184 classes
    assert g.fc.weight_orig.shape == (4 * 4 * 16 * 64, 128)
    assert g.label_embedding.weight.shape == (184, 180)
    assert g.res[0].b1.weight_proj.weight_orig.shape == (1024, 308)
    assert len(g.res) == (5 if size == 128 else 6) and len(g.alpha) == len(g.res) - 1
    assert g.res[-1].conv_mask is None and g.res[0].conv_mask is not None
    assert g.mask_regress.fc.weight_orig.shape == (256 * 16, 308)
    psp = [i for i, b in enumerate(g.res) if b.conv_mask is not None and len(b.conv_mask) == 2]
    assert psp == ([3] if size == 128 else [])
    assert d.l_im.weight_orig.shape == (1, 1024) and d.l_y.weight_orig.shape == (184, 1024)
    assert len(d.trunk) == (6 if size == 128 else 7)
    assert sum(p.numel() for p in g.parameters()) == g_params
    assert sum(p.numel() for p in d.parameters()) == d_params


# ---------------------------------------------------------------------------------------------------------
# layouts


def _spy(m: LostGanV2) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    forward = m.generator.forward

    def spy(z_obj, labels, boxes, obj_to_img, z_im):
        seen.append(boxes.clone())
        return forward(z_obj, labels, boxes, obj_to_img, z_im)

    m.generator.forward = spy  # type: ignore[method-assign]
    return seen


def test_gt_and_pred_boxes_reach_the_generator(shapes):
    ds, info = shapes
    m = _method(info).eval()
    batch = collate([ds[i] for i in range(3)])
    keep = batch.objs != info.vocab.object_name_to_idx["__image__"]
    seen = _spy(m)
    gens = lambda: sample_generators(0, "test", [0, 1, 2], 0)  # noqa: E731
    gt = m.sample(batch, gens(), layout="gt")
    pred = m.sample(batch, gens(), layout="pred")
    with torch.no_grad():
        predicted = usable_boxes(m.layout_predictor(batch))
    assert torch.equal(seen[0], batch.boxes[keep])  # __image__ is not a generator object
    torch.testing.assert_close(seen[1], predicted[keep])
    assert not torch.allclose(seen[0], seen[1]) and not torch.equal(gt, pred)
    torch.testing.assert_close(m.predict_boxes(batch, gens()), predicted)
    # objects without a known box take the predicted one in gt mode (SG2Im's use_gt rule)
    has = batch.has_layout.clone()
    has[1] = False
    m.sample(dataclasses.replace(batch, has_layout=has), gens(), layout="gt")
    want = torch.where(has.view(-1, 1), batch.boxes, predicted)
    torch.testing.assert_close(seen[2], want[keep])
    with pytest.raises(ValueError, match="layout"):
        m.sample(batch, gens(), layout="boxes")


def test_predicted_layout_from_a_checkpoint(shapes, tmp_path, fixture_root, monkeypatch):
    monkeypatch.setenv("SG2I_DATA_ROOT", str(fixture_root))
    cfg = build_run_config("sg2im", "shapes", tier="smoke", device="cpu")
    src = train(cfg, tmp_path / "sg2im", progress=False)
    ds, info = shapes
    own = _method(info).eval()
    m = _method(info, layout_from=str(src.checkpoint)).eval()
    m.load_state_dict(own.state_dict())  # a sampling-time switch: the same weights take either box source
    batch = collate([ds[i] for i in range(2)])
    gens = sample_generators(0, "test", [0, 1], 0)
    theirs = usable_boxes(src.method.predict_boxes(batch, gens))
    torch.testing.assert_close(m.predict_boxes(batch, gens), theirs)
    assert not torch.allclose(own.predict_boxes(batch, gens), theirs)
    [prov] = m.weight_provenance()
    assert prov.name == "layout_from" and prov.sha256
    bad = _method(info, layout_from=str(tmp_path / "missing.safetensors"))
    with pytest.raises(FileNotFoundError, match="layout_from"):
        bad.setup(ds)


# ---------------------------------------------------------------------------------------------------------
# determinism, training, resume


def test_samples_are_deterministic_and_batch_independent(shapes):
    ds, info = shapes
    m = _method(info).eval()
    items = [ds[i] for i in range(3)]
    gens = lambda idx: sample_generators(0, "test", idx, 0)  # noqa: E731
    a = m.sample(collate(items), gens([0, 1, 2]), layout="gt")
    b = m.sample(collate(items), gens([0, 1, 2]), layout="gt")
    assert a.shape == (3, 3, 32, 32) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b)
    alone = m.sample(collate(items[1:2]), gens([1]), layout="gt")
    torch.testing.assert_close(alone[0], a[1], rtol=1e-5, atol=1e-5)
    assert not torch.equal(m.sample(collate(items), sample_generators(1, "test", [0, 1, 2], 0), layout="gt"), a)


def test_train_step_updates_every_network_with_hinge_losses(shapes):
    ds, info = shapes
    m = _method(info).train()
    batch = collate([ds[i] for i in range(4)])
    before = {k: v.clone() for k, v in m.state_dict().items()}
    out = m.train_step(batch, 0)
    assert {"d_loss_real", "d_loss_fake", "d_loss_robj", "d_loss_fobj", "g_loss_fake", "g_loss_obj",
            "pixel_loss", "box_loss"} <= set(out)  # fmt: skip
    assert out["d_loss_real"] >= 0 and out["d_loss_fake"] >= 0  # hinge terms
    changed = {k.split(".")[0] for k, v in m.state_dict().items() if not torch.equal(before[k], v)}
    assert {"generator", "discriminator", "layout_predictor"} <= changed


def test_resume_after_two_steps_equals_four_straight_steps(tmp_path, fixture_root, monkeypatch):
    monkeypatch.setenv("SG2I_DATA_ROOT", str(fixture_root))
    cfg = build_run_config("lostgan_v2", "shapes", tier="smoke", device="cpu",
                           sets={"train.steps": 4, "train.checkpoint_every": 2})  # fmt: skip
    straight = train(cfg, tmp_path / "straight", progress=False)

    original = LostGanV2.train_step

    def crash_at_two(self, batch, step):
        if step == 2:
            raise KeyboardInterrupt("simulated crash after the step-2 checkpoint")
        return original(self, batch, step)

    monkeypatch.setattr(LostGanV2, "train_step", crash_at_two)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(LostGanV2, "train_step", original)
    resumed = train(cfg, tmp_path / "resumed", progress=False)
    assert resumed.resumed_from == 2
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for name in ("optimizer_g", "optimizer_d", "optimizer_layout"):
        sa = getattr(straight.method, name).state_dict()["state"]
        sb = getattr(resumed.method, name).state_dict()["state"]
        assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa), name


# ---------------------------------------------------------------------------------------------------------
# tiers and protocols


def test_every_tier_defaults_to_the_ground_truth_layout():
    for tier in ("smoke", "quick", "full"):
        cfg = build_run_config("lostgan_v2", "shapes", tier=tier, device="cpu")
        assert cfg.eval.layout == "gt", tier
    assert build_run_config("lostgan_v2", "shapes", "full", device="cpu").image_size == 128
    pred = build_run_config("lostgan_v2", "shapes", "quick", device="cpu", sets={"eval.layout": "pred"})
    assert pred.eval.layout == "pred"


def test_vgg_loss_without_weights_stops_before_training(shapes, monkeypatch, tmp_path):
    from benchmark.text_encoders.base import WeightsUnavailable

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("SG2I_VGG19", raising=False)
    ds, info = shapes
    with pytest.raises(WeightsUnavailable, match="vgg19-dcbb9e9d.pth"):
        _method(info, vgg_loss_weight=1.0).setup(ds)
    m = _method(info, vgg_loss_weight=1.0, vgg_weights="random")
    m.setup(ds)
    out = m.train().train_step(collate([ds[i] for i in range(2)]), 0)
    assert out["feat_loss"] > 0 and any(p.random_init for p in m.weight_provenance())


@pytest.mark.parametrize("protocol", ["", "lostgan"])
def test_coco_stuff_protocols_are_recorded(protocol, tmp_path, fixture_root, monkeypatch):
    from benchmark.run import run

    monkeypatch.setenv("SG2I_DATA_ROOT", str(fixture_root))
    cfg = build_run_config("lostgan_v2", "coco_stuff", tier="smoke", device="cpu", protocol=protocol,
                           sets={"eval.metrics": ("fid",)})  # fmt: skip
    result, _ = run(cfg, tmp_path / "runs", tmp_path / "results", progress=False)
    proto = load_protocol("coco_stuff", protocol)
    assert result.config["protocol"] == protocol and result.protocol["sha256"] == proto["sha256"]
    assert [e.split for e in result.evaluations] == proto["eval_splits"]
    spg = proto["tiers"]["smoke"]["eval"]["samples_per_graph"]
    for ev in result.evaluations:
        assert ev.n_generated == spg * ev.n_real and ev.layout == "gt"
