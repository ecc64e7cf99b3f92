"""SG2Im baseline (baselines/sg2im.py): crops, losses, CRN layout paths, train loop logic, sampling modes."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
import torch.nn.functional as F

from baselines.sg2im import (
    AcCropDiscriminator,
    PatchDiscriminator,
    RefinementNetwork,
    Sg2Im,
    Sg2ImConfig,
    bce_loss,
    crop_bbox_batch,
    gan_d_loss,
    gan_g_loss,
)
from benchmark import registry
from benchmark.batch import collate
from benchmark.config import build_run_config
from benchmark.nn.layout import object_maps, objects_to_layout
from benchmark.seeding import sample_generators
from benchmark.train import build_dataset, dataset_info

DATASETS = registry.names(
    "dataset"
)  # every registered dataset, via its offline fixture (as tests/test_methods.py)
SG2IM_METHODS = [m for m in registry.names("method") if m.startswith("sg2im")]


def _tiny(**kw) -> Sg2ImConfig:
    base = {k.removeprefix("method."): v for k, v in Sg2Im.tier_overrides["smoke"].items()}
    return dataclasses.replace(Sg2ImConfig(), **{**base, **kw})


def _method(info, seed: int = 0, **kw) -> Sg2Im:
    torch.manual_seed(seed)
    return Sg2Im(_tiny(**kw), info)


# ---------------------------------------------------------------------------------------------------------
# crops, discriminators, GAN losses


def test_crop_bbox_batch_equals_manual_crop_and_resize():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(2, 3, 17, 17, generator=g)
    # box coordinate c maps to pixel c * (W - 1) (align_corners=True): [0.25, 0.75] -> pixels 4..12
    boxes = torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.0, 0.5, 0.5, 1.0], [0.0, 0.0, 1.0, 1.0]])
    owner = torch.tensor([1, 0, 1])
    crops = crop_bbox_batch(imgs, boxes, owner, 9)
    torch.testing.assert_close(crops[0], imgs[1, :, 4:13, 4:13])
    torch.testing.assert_close(crops[1], imgs[0, :, 8:17, 0:9])
    # a whole-image box resized to 9x9 = bilinear interpolation with corners aligned
    torch.testing.assert_close(
        crops[2], F.interpolate(imgs[1:2], size=(9, 9), mode="bilinear", align_corners=True)[0]
    )
    up = crop_bbox_batch(imgs, boxes[:1], owner[:1], 17)  # 9 pixels resized to 17
    manual = F.interpolate(imgs[1:2, :, 4:13, 4:13], size=(17, 17), mode="bilinear", align_corners=True)
    torch.testing.assert_close(up, manual)


def test_object_discriminator_crops_at_the_given_boxes():
    torch.manual_seed(0)
    d = AcCropDiscriminator(5, "C4-8-2,C4-16-2", "batch", "leakyrelu-0.2", "valid", object_size=16).eval()
    imgs = torch.randn(2, 3, 32, 32)
    objs, boxes, owner = (
        torch.tensor([1, 4]),
        torch.tensor([[0.1, 0.2, 0.6, 0.9], [0.3, 0.0, 1.0, 0.5]]),
        torch.tensor([0, 1]),
    )
    scores, ac = d(imgs, objs, boxes, owner)
    crops = crop_bbox_batch(imgs, boxes, owner, 16)
    vecs = d.fc(d.cnn(crops).mean(dim=(2, 3)))
    torch.testing.assert_close(scores, d.real_classifier(vecs))
    torch.testing.assert_close(ac, F.cross_entropy(d.obj_classifier(vecs), objs))
    # pixels outside every box do not matter
    imgs2 = imgs.clone()
    imgs2[0, :, :, 25:] = 100.0  # right of box 0 (x1 = 0.6 -> pixel 18.6), image 0 only
    torch.testing.assert_close(d(imgs2, objs, boxes, owner)[0], scores)


def test_patch_discriminator_output_map():
    d = PatchDiscriminator("C4-64-2,C4-128-2,C4-256-2", "batch", "leakyrelu-0.2", "valid")
    assert d(torch.randn(2, 3, 64, 64)).shape == (2, 256, 6, 6)  # sg2im's PatchDiscriminator: 256 x 6 x 6 at 64 px


def test_gan_losses_are_sg2im_bce():
    x = torch.tensor([-3.0, 0.5, 4.0])
    torch.testing.assert_close(
        bce_loss(x, torch.ones(3)), F.binary_cross_entropy_with_logits(x, torch.ones(3))
    )
    torch.testing.assert_close(gan_g_loss(x.view(1, 3)), F.binary_cross_entropy_with_logits(x, torch.ones(3)))
    torch.testing.assert_close(
        gan_d_loss(x, -x),
        F.binary_cross_entropy_with_logits(x, torch.ones(3))
        + F.binary_cross_entropy_with_logits(-x, torch.zeros(3)),
    )


# ---------------------------------------------------------------------------------------------------------
# generator


@pytest.mark.parametrize("channels_last", [False, True])
def test_factored_crn_equals_dense_layout_crn(channels_last):
    """The factored layout / transposed-conv path is the same function (and gradient) as sg2im's dense CRN."""
    torch.manual_seed(0)
    crn = RefinementNetwork((6 + 2, 16, 8, 4), "batch", "leakyrelu-0.2").double()  # float64: tight tolerances
    crn.channels_last = channels_last
    o2i = torch.tensor([0, 0, 1, 1, 1, 2])
    xy = torch.rand(6, 2) * 0.5
    maps = object_maps(torch.cat([xy, xy + 0.3], 1), (torch.rand(6, 16, 16) > 0.5).float(), 32).double()
    noise = torch.randn(3, 2, 32, 32, dtype=torch.float64)
    if channels_last:
        noise = noise.contiguous(memory_format=torch.channels_last)
    grads = []
    outs = []
    for factored in (False, True):
        vecs = torch.randn(
            6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64
        ).requires_grad_()
        crn.zero_grad()
        if factored:
            out = crn.forward_factored(vecs, maps, o2i, noise, 3)
        else:
            out = crn(torch.cat([objects_to_layout(vecs, maps, o2i), noise], 1))
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append([vecs.grad.clone()] + [p.grad.clone() for p in crn.parameters()])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-9, atol=1e-9)
    for g_fact, g_dense in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_fact, g_dense, rtol=1e-7, atol=1e-9)


def test_unused_mask_net_still_moves_its_batchnorm_statistics(shapes):
    """With GT masks and mask loss 0 the mask net only runs to its last BatchNorm: same stats, same image."""
    ds, info = shapes
    batch = collate([ds[i] for i in range(3)])
    noise = torch.randn(3, 4, 32, 32)
    outs, stats = [], []
    for need in (True, False):
        g = _method(info, seed=5).generator.train()
        img, _, masks = g(
            batch.objs, batch.triples, batch.obj_to_img, 3, noise, batch.boxes, batch.masks, need_masks=need
        )
        outs.append(img)
        stats.append({k: v for k, v in g.mask_net.state_dict().items() if "running" in k})
        assert (masks is None) != need
    torch.testing.assert_close(outs[0], outs[1])
    assert stats[0].keys() == stats[1].keys() and len(stats[0]) == 8
    for k in stats[0]:
        torch.testing.assert_close(stats[0][k], stats[1][k])


def test_full_config_matches_reference_sizes():
    cfg = Sg2ImConfig()
    assert (cfg.embedding_dim, cfg.gconv_dim, cfg.gconv_hidden_dim, cfg.gconv_num_layers) == (
        128,
        128,
        512,
        5,
    )
    assert (
        cfg.refinement_dims == (1024, 512, 256, 128, 64)
        and cfg.layout_noise_dim == 32
        and cfg.mask_size == 16
    )
    assert (cfg.l1_pixel_loss_weight, cfg.bbox_pred_loss_weight, cfg.mask_loss_weight) == (1.0, 10.0, 0.0)
    assert (cfg.ac_loss_weight, cfg.discriminator_loss_weight, cfg.d_obj_weight, cfg.d_img_weight) == (
        0.1,
        0.01,
        1,
        1,
    )
    assert (cfg.learning_rate, cfg.eval_mode_after, cfg.gan_loss_type) == (1e-4, 100_000, "gan")
    full = build_run_config("sg2im", "shapes", tier="full")
    assert (full.train.steps, full.train.batch_size, full.image_size) == (1_000_000, 32, 64)


def test_generator_loss_is_the_weighted_sum_of_named_terms(shapes):
    ds, info = shapes
    m = _method(info, mask_loss_weight=0.5, l1_pixel_loss_weight=2.0).train()
    batch = collate([ds[i] for i in range(4)])
    imgs = m.preprocess(batch.images)
    noise = torch.randn(4, m.cfg.layout_noise_dim, 32, 32)
    total, terms, pred = m.generator_losses(batch, imgs, noise)
    assert set(terms) == {
        "L1_pixel_loss",
        "bbox_pred",
        "mask_loss",
        "ac_loss",
        "g_gan_obj_loss",
        "g_gan_img_loss",
    }
    torch.testing.assert_close(total, sum(terms.values()))
    torch.testing.assert_close(terms["L1_pixel_loss"], 2.0 * F.l1_loss(pred, imgs))
    g = m.generator
    with torch.no_grad():
        vecs = g.encode(batch.objs, batch.triples)
    torch.testing.assert_close(
        terms["bbox_pred"], 10.0 * F.mse_loss(g.box_net(vecs), batch.boxes), rtol=1e-4, atol=1e-6
    )
    d_obj = m.obj_discriminator
    scores, ac = d_obj(pred, batch.objs, batch.boxes, batch.obj_to_img)
    torch.testing.assert_close(terms["ac_loss"], 0.1 * ac, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["g_gan_obj_loss"], 0.01 * gan_g_loss(scores), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(
        terms["g_gan_img_loss"], 0.01 * gan_g_loss(m.img_discriminator(pred)), rtol=1e-4, atol=1e-7
    )
    assert "mask_loss" not in m.generator_losses(batch, imgs, noise)[1] or m.cfg.mask_loss_weight > 0
    assert "mask_loss" not in _method(info).generator_losses(batch, imgs, noise)[1]  # weight 0 (reference)


# ---------------------------------------------------------------------------------------------------------
# training


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    """Tiny on-disk copies of every dataset (``SceneGraphDataset.write_fixture``)."""
    root = tmp_path_factory.mktemp("data_root")
    for name in DATASETS:
        registry.get("dataset", name).write_fixture(root / name)
    return root


@pytest.mark.parametrize("dataset", DATASETS)
def test_train_step_on_every_dataset_fixture(dataset, fixture_root, monkeypatch):
    monkeypatch.setenv("SG2I_DATA_ROOT", str(fixture_root))
    cfg = build_run_config("sg2im", dataset, tier="smoke", device="cpu")
    ds = build_dataset(dataset, "train", cfg.image_size)
    m = registry.get("method", "sg2im")(cfg.method_cfg, dataset_info(ds, "test"))
    m.setup(ds)
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    batch = collate([ds[i] for i in range(min(cfg.train.batch_size, len(ds)))])
    out = m.train_step(batch, 0)
    expected = {"L1_pixel_loss", "bbox_pred", "ac_loss", "g_gan_obj_loss", "g_gan_img_loss", "total_loss"}
    expected |= {"d_obj_gan_loss", "d_ac_loss_real", "d_ac_loss_fake", "d_img_gan_loss"}
    assert expected <= set(out) and all(torch.isfinite(torch.tensor(v)) for v in out.values())
    changed = {k.split(".")[0] for k, v in m.state_dict().items() if not torch.equal(before[k], v)}
    assert {"generator", "obj_discriminator", "img_discriminator"} <= changed


def test_training_is_deterministic_for_a_fixed_seed(shapes):
    ds, info = shapes
    batch = collate([ds[i] for i in range(4)])
    states = []
    for _ in range(2):
        m = _method(info, seed=3).train()
        torch.manual_seed(7)  # the trainer seeds the global RNG (layout noise in training)
        for step in range(2):
            m.train_step(batch, step)
        states.append(m.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_image_discriminator_sees_fake_then_real_as_sg2im_train_py(shapes):
    """sg2im train.py's D_img step: ``scores_fake = img_discriminator(imgs_fake)`` before the real images; the
    BatchNorm running statistics after a step equal a replay in that order (and not in the opposite one)."""
    import copy

    ds, info = shapes
    batch = collate([ds[i] for i in range(4)])
    m = _method(info, seed=3).train()
    d0 = copy.deepcopy(m.img_discriminator)
    seen: list[torch.Tensor] = []
    hook = m.img_discriminator.register_forward_pre_hook(lambda _mod, args: seen.append(args[0].detach().clone()))
    torch.manual_seed(7)
    m.train_step(batch, 0)
    hook.remove()
    assert len(seen) == 3  # G's adversarial term on the fakes, then the D step's two calls
    fake, real = seen[0], m.preprocess(batch.images)

    def replay(order: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        d = copy.deepcopy(d0).train()
        with torch.no_grad():
            for x in order:
                d(x)
        return {k: v for k, v in d.state_dict().items() if "running" in k}

    stats = {k: v for k, v in m.img_discriminator.state_dict().items() if "running" in k}
    assert stats
    reference, swapped = replay([fake, fake, real]), replay([fake, real, fake])
    for k, v in stats.items():
        torch.testing.assert_close(v, reference[k], rtol=0, atol=1e-6)
    assert any(not torch.allclose(v, swapped[k], atol=1e-6) for k, v in stats.items())


def test_eval_mode_switch_creates_a_new_optimizer(shapes):
    ds, info = shapes
    batch = collate([ds[i] for i in range(4)])
    m = _method(info, eval_mode_after=2).train()
    opt0, d_opt0 = m.optimizer, m.optimizer_d_obj
    m.train_step(batch, 0)
    m.train_step(batch, 1)
    assert m.optimizer is opt0 and m.generator.training
    assert len(opt0.state) > 0
    m.train_step(batch, 2)  # t == eval_mode_after: G.eval() and a fresh Adam
    assert m.optimizer is not opt0 and not m.generator.training
    assert m.obj_discriminator.training and m.img_discriminator.training and m.optimizer_d_obj is d_opt0
    assert all(st["step"] == 1 for st in m.optimizer.state.values())  # one step of the new Adam
    opt1 = m.optimizer
    m.train()  # the trainer puts the whole method in train mode before every run (also on resume)
    m.train_step(batch, 3)
    assert m.optimizer is opt1 and not m.generator.training
    assert set(m.optimizer_state()) == {"optimizer", "optimizer_d_obj", "optimizer_d_img"}


def test_nonfinite_generator_loss_skips_the_iteration(shapes):
    ds, info = shapes
    batch = collate([ds[i] for i in range(2)])
    batch.images = torch.full_like(batch.images, float("nan"))
    m = _method(info).train()
    before = {
        k: v.clone() for k, v in m.state_dict().items() if "running" not in k and "num_batches" not in k
    }
    assert m.train_step(batch, 0) == {"skipped": 1.0}
    assert all(torch.equal(before[k], m.state_dict()[k]) for k in before)


# ---------------------------------------------------------------------------------------------------------
# sampling


def test_gt_and_pred_layouts_differ_and_samples_are_batch_independent(shapes):
    ds, info = shapes
    m = _method(info).eval()
    items = [ds[i] for i in range(3)]
    batch = collate(items)
    gens = lambda idx: sample_generators(0, "test", idx, 0)  # noqa: E731
    pred = m.sample(batch, gens([0, 1, 2]), layout="pred")
    gt = m.sample(batch, gens([0, 1, 2]), layout="gt")
    for x in (pred, gt):
        assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert not torch.equal(pred, gt)
    torch.testing.assert_close(m.sample(batch, gens([0, 1, 2]), layout="gt"), gt, rtol=0, atol=0)
    alone = m.sample(collate(items[1:2]), gens([1]), layout="gt")
    torch.testing.assert_close(alone[0], gt[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="layout"):
        m.sample(batch, gens([0, 1, 2]), layout="boxes")


def test_gt_layout_uses_batch_boxes_only_where_known(shapes):
    ds, info = shapes
    m = _method(info).eval()
    batch = collate([ds[i] for i in range(2)])
    gens = sample_generators(0, "test", [0, 1], 0)
    gt = m.sample(batch, gens, layout="gt")
    boxes_pred, masks_pred = m.predict_layout(batch)
    unknown = dataclasses.replace(batch, has_layout=torch.zeros_like(batch.has_layout))
    all_pred = m.sample(unknown, sample_generators(0, "test", [0, 1], 0), layout="gt")
    torch.testing.assert_close(
        all_pred, m.sample(batch, sample_generators(0, "test", [0, 1], 0), layout="pred")
    )
    assert not torch.equal(gt, all_pred) and boxes_pred.shape == batch.boxes.shape
    assert masks_pred is not None and masks_pred.shape == batch.masks.shape


# ---------------------------------------------------------------------------------------------------------
# text-encoder variants


def test_variants_are_registered_with_their_encoders():
    assert {"sg2im", "sg2im_clip", "sg2im_data2vec", "sg2im_minilm"} <= set(SG2IM_METHODS)
    for name, enc in [
        ("sg2im", "learned"),
        ("sg2im_clip", "clip"),
        ("sg2im_data2vec", "data2vec"),
        ("sg2im_minilm", "minilm"),
    ]:
        assert registry.get("method", name).Config().text_encoder == enc
    for name in ("sg2im_clip", "sg2im_data2vec"):
        cls = registry.get("method", name)
        for tier in ("smoke", "quick", "full"):  # random weights only when asked for by name
            assert "method.text_encoder_weights" not in cls.tier_overrides.get(tier, {})


@pytest.mark.skipif(bool(os.environ.get("SG2I_CLIP_WEIGHTS")), reason="real CLIP weights configured")
def test_clip_variant_without_weights_stops_with_weights_unavailable(shapes):
    from benchmark.text_encoders.base import WeightsUnavailable

    ds, info = shapes
    cls = registry.get("method", "sg2im_clip")
    with pytest.raises(WeightsUnavailable):
        m = cls(
            dataclasses.replace(cls.Config(), **{k.removeprefix("method."): v for k, v in _tiny_items()}),
            info,
        )
        m.setup(ds)


def _tiny_items():
    return [(k, v) for k, v in Sg2Im.tier_overrides["smoke"].items() if k.startswith("method.")]


def test_random_encoder_weights_are_flagged_random_init(shapes):
    ds, info = shapes
    cls = registry.get("method", "sg2im_data2vec")
    cfg = dataclasses.replace(cls.Config(), **{k.removeprefix("method."): v for k, v in _tiny_items()})
    m = cls(dataclasses.replace(cfg, text_encoder_weights="random"), info)
    m.setup(ds)
    prov = m.weight_provenance()
    assert prov and all(p.random_init for p in prov)
    assert _method(info).weight_provenance() == []
