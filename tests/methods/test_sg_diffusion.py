"""The scene-graph diffusion methods (methods/sg_diffusion.py): registry plumbing, CFG, layout, ablation switches."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmark import registry
from benchmark.batch import collate
from benchmark.config import build_run_config
from benchmark.preflight import random_weights_if_needed
from benchmark.protocol import load_protocol
from benchmark.seeding import sample_generators
from benchmark.train import build_dataset, dataset_info, load_method, train
from methods.sg_diffusion import SGDiffusion, combine_guidance

FIXTURE_DATASETS = ["shapes"]  # as tests/test_methods.py: datasets whose smoke fixture exists offline
METHODS = sorted(n for n, e in registry.entries()["method"].items() if e.module == "methods.sg_diffusion")
CASES = [(m, d) for m in METHODS for d in FIXTURE_DATASETS]


def test_the_four_methods_are_registered_with_their_encoders():
    assert METHODS == ["clip_ddpm", "data2vec_ddpm", "learned_ddpm", "minilm_ddpm"]
    for name, enc in zip(METHODS, ["clip", "data2vec", "learned", "minilm"]):
        cls = registry.get("method", name)
        assert issubclass(cls, SGDiffusion) and cls.Config().text_encoder == enc
        assert cls.Config().diffusion_steps == 1000 and cls.Config().model_channels == 192


def build(
    name: str = "learned_ddpm", dataset: str = "shapes", **method_sets: object
) -> tuple[SGDiffusion, object]:
    """A smoke-tier method built directly (no training loop), with its training split."""
    sets = {f"method.{k}": v for k, v in method_sets.items()}
    cfg = build_run_config(name, dataset, tier="smoke", seed=0, device="cpu", sets=sets)
    ds = build_dataset(dataset, "train", cfg.image_size)
    m = registry.get("method", name)(cfg.method_cfg, dataset_info(ds, load_protocol(dataset)["version"]))
    m.setup(ds)
    return m, ds


def gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return sample_generators(seed, "test", list(range(n)), 0)


@pytest.fixture(scope="module")
def batch():
    ds = build_dataset("shapes", "train", 32)
    return collate([ds[i] for i in range(4)])


@pytest.fixture(scope="module")
def trained(batch):
    """learned_ddpm after 3 smoke training steps (so the zero-initialised output layer is non-zero)."""
    torch.manual_seed(0)
    m, _ = build()
    for step in range(3):
        m.train_step(batch, step)
    return m.eval()


@pytest.mark.parametrize("method_name,dataset", CASES)
def test_trains_a_step_samples_and_reloads(method_name, dataset, tmp_path):
    sets = {"train.steps": 1, **random_weights_if_needed(method_name)}
    cfg = build_run_config(method_name, dataset, tier="smoke", seed=0, device="cpu", sets=sets)
    out = train(cfg, tmp_path, progress=False)
    assert out.history == [] or all(v == v for v in out.history[-1].values())
    ds = build_dataset(dataset, "test", cfg.image_size)
    b = collate([ds[i] for i in range(2)])
    x1, x2 = out.method.sample(b, gens(2)), out.method.sample(b, gens(2))
    assert x1.shape == (2, 3, cfg.image_size, cfg.image_size) and x1.dtype == torch.float32
    assert 0 <= float(x1.min()) and float(x1.max()) <= 1
    assert torch.equal(x1, x2), "same generators must give identical samples"
    assert not torch.equal(x1, out.method.sample(b, gens(2, seed=1)))
    reloaded, _ = load_method(out.checkpoint, "cpu")
    assert torch.equal(reloaded.sample(b, gens(2)), x1), "a reloaded checkpoint must sample the same images"
    prov = out.method.weight_provenance()
    if method_name == "learned_ddpm":
        assert prov == []
    else:
        assert prov and all(p.name.startswith("text_encoder:") for p in prov)
        assert all(p.random_init for p in prov) == (method_name in ("clip_ddpm", "data2vec_ddpm"))
    assert [p.random_init for p in reloaded.weight_provenance()] == [p.random_init for p in prov]


@pytest.mark.parametrize(
    "name,env", [("clip_ddpm", "SG2I_CLIP_WEIGHTS"), ("data2vec_ddpm", "SG2I_DATA2VEC_DIR")]
)
def test_default_weights_stop_with_the_encoders_message(name, env, monkeypatch):
    from benchmark.text_encoders.base import WeightsUnavailable

    monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        build(name, text_encoder_weights="")
    except WeightsUnavailable as e:
        assert "weights" in str(e).lower()
    else:
        pytest.skip(f"{name}: real weights are available on this machine")


def test_sampling_is_per_image_and_uses_the_ema(trained, batch):
    x = trained.sample(batch, gens(4))
    one = trained.sample(collate(batch.split()[2:3]), gens(4)[2:3])
    torch.testing.assert_close(
        one[0], x[2], rtol=0, atol=1e-4
    )  # independent of the other images in the batch
    with torch.no_grad():
        for p in trained.net.parameters():
            p.add_(1.0)  # the training weights do not matter for sampling ...
    try:
        assert torch.equal(trained.sample(batch, gens(4)), x)
    finally:
        with torch.no_grad():
            for p in trained.net.parameters():
                p.sub_(1.0)
    assert any(not torch.equal(a, b) for a, b in zip(trained.net.parameters(), trained.ema.parameters()))


def test_guidance_scale_one_is_the_conditional_prediction(trained, batch):
    net = trained.ema
    cond = net.cond(batch, layout="gt")
    null = net.cond.null(cond)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([10, 200, 500, 999])
    with torch.no_grad():
        c_out, u_out = net(x, t, cond), net(x, t, null)
        assert float((c_out - u_out).abs().max()) > 1e-4, "condition and null condition must differ"
        assert torch.equal(trained.guided_output(net, x, t, cond, null, scale=1.0), c_out)
        torch.testing.assert_close(combine_guidance(c_out, u_out, 1.0), c_out)
        torch.testing.assert_close(combine_guidance(c_out, u_out, 0.0)[:, :3], u_out[:, :3])
        two = trained.guided_output(net, x, t, cond, null, scale=3.0)  # one batched pass of 2B
        torch.testing.assert_close(
            two[:, :3], u_out[:, :3] + 3.0 * (c_out[:, :3] - u_out[:, :3]), rtol=1e-4, atol=1e-4
        )
        torch.testing.assert_close(two[:, 3:], c_out[:, 3:], rtol=1e-4, atol=1e-4)
    guided = dataclasses.replace(trained.cfg, guidance_scale=2.0)
    old = trained.cfg
    trained.cfg = guided
    try:
        y = trained.sample(batch, gens(4))
    finally:
        trained.cfg = old
    assert y.shape == (4, 3, 32, 32) and not torch.equal(y, trained.sample(batch, gens(4)))


@torch.no_grad()
def test_condition_dropout_gives_the_null_condition(trained, batch):
    cond = trained.net.cond(batch, layout="gt")
    drop = torch.tensor([True, False, True, False])
    d = trained.net.cond.drop(cond, drop)
    assert d.token_mask[drop, :-1].sum() == 0 and bool(
        d.token_mask[:, -1].all()
    )  # only the null token is left
    assert torch.equal(d.token_mask[~drop], cond.token_mask[~drop])
    assert float(d.layout[drop].abs().max()) == 0 and torch.equal(d.layout[~drop], cond.layout[~drop])
    assert torch.equal(d.glob[0], trained.net.cond.null_glob.detach()) and torch.equal(
        d.glob[1], cond.glob[1]
    )
    # the number of real tokens per image is the number of its objects (incl. __image__)
    counts = torch.bincount(batch.obj_to_img, minlength=4)
    assert cond.token_mask[:, :-1].sum(1).tolist() == counts.tolist()


def test_predicted_layout_is_valid_and_differs_from_ground_truth(trained, batch):
    cond_pred = trained.ema.cond(batch, layout="pred")
    cond_gt = trained.ema.cond(batch, layout="gt")
    boxes = trained.ema.cond._usable_boxes(cond_pred.box_pred, batch.objs)
    assert bool((boxes >= 0).all() and (boxes <= 1).all())
    assert bool(
        (boxes[:, 2] - boxes[:, 0] >= 1 / 32 - 1e-6).all()
        and (boxes[:, 3] - boxes[:, 1] >= 1 / 32 - 1e-6).all()
    )
    img = batch.objs == trained.info.vocab.object_name_to_idx["__image__"]
    assert torch.equal(boxes[img], torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(int(img.sum()), 4))
    assert cond_pred.layout.shape == cond_gt.layout.shape == (4, trained.cfg.layout_channels, 32, 32)
    assert not torch.equal(cond_pred.layout, cond_gt.layout)
    x = trained.sample(batch, gens(4), layout="gt")
    assert not torch.equal(x, trained.sample(batch, gens(4), layout="pred"))


def test_layout_heads_learn_the_boxes(batch):
    torch.manual_seed(0)
    m, _ = build(learning_rate=3e-3)
    first = [m.train_step(batch, i) for i in range(2)]
    for i in range(2, 25):
        last = m.train_step(batch, i)
    assert last["box"] < 0.5 * first[0]["box"] and last["mask"] < first[0]["mask"]


@pytest.mark.parametrize(
    "switch,absent",
    [
        ({"use_gcn": False}, "net.cond.gcn."),
        ({"use_layout": False}, "net.cond.box_head."),
        ({"use_masks": False}, "net.cond.mask_head."),
    ],
)
def test_ablation_switches_change_the_model_and_still_run(switch, absent, batch):
    base, _ = build()
    m, _ = build(**switch)
    keys, base_keys = set(m.state_dict()), set(base.state_dict())
    assert any(k.startswith(absent) for k in base_keys) and not any(k.startswith(absent) for k in keys)
    in_ch = m.net.unet.input_blocks[0][0].in_channels
    assert in_ch == (3 if switch.get("use_layout") is False else 3 + m.cfg.layout_channels)
    losses = m.train_step(batch, 0)
    assert all(v == v and abs(v) < 1e6 for v in losses.values())
    x = m.eval().sample(batch, gens(4))
    assert x.shape == (4, 3, 32, 32) and torch.equal(x, m.sample(batch, gens(4)))


@pytest.mark.parametrize("sampler,steps", [("ddpm", 5), ("ddim", 5), ("dpmsolver++", 5)])
def test_every_sampler_runs_on_the_method(sampler, steps, trained, batch):
    old = trained.cfg
    trained.cfg = dataclasses.replace(old, sampler=sampler, sample_steps=steps, ddim_eta=1.0)
    try:
        x = trained.sample(batch, gens(4))
        assert x.shape == (4, 3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
        assert torch.equal(x, trained.sample(batch, gens(4)))
    finally:
        trained.cfg = old


def test_invalid_sampler_settings_fail_early():
    with pytest.raises(ValueError, match="sampler"):
        build(sampler="euler")
    with pytest.raises(ValueError, match="sample_steps"):
        build(sample_steps=0)


def test_eval_overrides_reach_the_sampler(tmp_path):
    cfg = build_run_config(
        "learned_ddpm", "shapes", tier="smoke", seed=0, device="cpu", sets={"train.steps": 1}
    )
    out = train(cfg, tmp_path, progress=False)
    m, _ = load_method(out.checkpoint, "cpu", {"sampler": "ddim", "sample_steps": 3})
    assert m.cfg.sampler == "ddim" and m.cfg.sample_steps == 3
    ds = build_dataset("shapes", "test", 32)
    b = collate([ds[i] for i in range(2)])
    assert not torch.equal(m.sample(b, gens(2)), out.method.sample(b, gens(2)))


@torch.no_grad()
def test_eps_skip_starts_from_the_linear_mmse_estimate(batch):
    """eps_skip: at initialisation (zero output layer) the eps output is c_skip(t) x_t; off, it is 0 (ADM)."""
    from methods.sg_diffusion import SIGMA_DATA

    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 100, 500, 999])
    on, _ = build(eps_skip=True)
    off, _ = build(eps_skip=False)
    ab = on.net.alphas_cumprod[t].view(-1, 1, 1, 1)
    c_skip = (1 - ab).sqrt() / (ab * SIGMA_DATA**2 + 1 - ab)
    torch.testing.assert_close(on.net(x, t, on.net.cond(batch))[:, :3], c_skip * x)
    assert float(off.net(x, t, off.net.cond(batch))[:, :3].abs().max()) == 0.0


@torch.no_grad()
def test_unknown_or_degenerate_ground_truth_boxes_stay_finite(trained, batch):
    import dataclasses as dc

    boxes = batch.boxes.clone()
    boxes[0] = torch.tensor([0.3, 0.3, 0.3, 0.5])  # zero width
    has_layout = torch.ones_like(batch.objs, dtype=torch.bool)
    has_layout[1] = False
    boxes[1] = 0.0
    odd = dc.replace(batch, boxes=boxes, has_layout=has_layout)
    cond = trained.ema.cond(odd, layout="gt")
    assert bool(torch.isfinite(cond.layout).all()) and bool(torch.isfinite(cond.tokens).all())


@torch.no_grad()
def test_final_denoise_is_the_x0_estimate_at_t0_of_the_sample(trained, batch):
    """final_denoise=k: k Tweedie steps at t = 0 on the sampler's output, x <- (sqrt(ab0) x - sqrt(1 - ab0) eps) / sqrt(ab0)."""
    old = trained.cfg
    plain = trained.sample(batch, gens(4))
    try:
        trained.cfg = dataclasses.replace(old, final_denoise=2)
        twice = trained.sample(batch, gens(4))
    finally:
        trained.cfg = old
    ab = float(trained.diffusion.alphas_cumprod[0])
    cond = trained.ema.cond(batch, layout="pred")
    x = plain * 2 - 1
    for _ in range(2):  # by hand, in float64 arithmetic on the scalars
        eps = trained.ema(ab**0.5 * x, torch.zeros(4, dtype=torch.long), cond).float()[:, :3]
        x = ((ab**0.5 * x - (1 - ab) ** 0.5 * eps) / ab**0.5).clamp(-1, 1)
    # the reference starts from the uint8-free [0, 1] output, i.e. after the sampler's own clamp: same input
    torch.testing.assert_close(twice, ((x + 1) / 2).clamp(0, 1), rtol=0, atol=1e-5)
    assert not torch.equal(twice, plain)


def test_timestep_power_draws_low_noise_steps_more_often(batch, monkeypatch):
    """timestep_power=p: t = floor(T u^p); p = 1 keeps torch.randint (bit-identical to earlier checkpoints)."""
    seen: list[torch.Tensor] = []
    for p, expect in ((1.0, 0.02), (2.0, 0.02**0.5)):
        m, _ = build(timestep_power=p)
        q_sample = m.diffusion.q_sample
        monkeypatch.setattr(m.diffusion, "q_sample", lambda x0, t, n, q=q_sample: (seen.append(t), q(x0, t, n))[1])
        big = collate(batch.split() * 64)  # 256 images, one step
        torch.manual_seed(0)
        m.train_step(big, 0)
        t, T = seen.pop(), m.diffusion.num_timesteps
        assert 0 <= int(t.min()) and int(t.max()) < T
        frac = float((t < 0.02 * T).float().mean())  # P(t < 0.02 T) = 0.02^(1/p)
        assert abs(frac - expect) < 0.06, (p, frac)
        if p == 1.0:
            torch.manual_seed(0)
            assert torch.equal(t, torch.randint(0, T, (256,)))


def test_object_pixel_weight_is_the_union_of_the_ground_truth_masks(batch):
    """object_loss_weight=w: L_simple weight 1 + (w - 1) m with m the rendered ground-truth object masks; on
    `shapes` (flat shapes on a grey background) m covers the pixels whose colour is not the background's."""
    m, _ = build(object_loss_weight=4.0)
    w = m.object_pixel_weight(batch, 32, 32)
    assert w.shape == (4, 1, 32, 32) and m.object_pixel_weight(batch, 16, 24).shape == (4, 1, 16, 24)
    assert float(w.min()) == 1.0 and float(w.max()) == 4.0
    drawn = ((batch.images * 255 - 200).abs().sum(1) > 10).float()  # not background grey
    inside = (w[:, 0] > 2.5).float()
    assert float((inside == drawn).float().mean()) > 0.95  # disagreement only on the bilinear mask edges
    # the __image__ node (whole-image box and mask) is not an object
    assert float((w[:, 0] == 1.0).float().mean()) > 0.5


def test_object_loss_weight_one_is_the_unweighted_loss(batch):
    """object_loss_weight=1 (ADM) takes the unweighted path; a weight that rounds to a uniform 1 gives the same loss
    through the weighted mean, and a real weight changes it."""
    losses = []
    for w in (1.0, 1.0 + 1e-9, 3.0):
        torch.manual_seed(0)
        m, _ = build(object_loss_weight=w)
        torch.manual_seed(1)
        losses.append(m.train_step(batch, 0)["mse"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)  # the weighted mean with uniform-ish weight
    assert losses[2] != pytest.approx(losses[0], rel=1e-3)


def test_recipe_fields_are_checked():
    with pytest.raises(ValueError, match="timestep_power"):
        build(timestep_power=0.0)
    with pytest.raises(ValueError, match="object_loss_weight"):
        build(object_loss_weight=0.0)
    with pytest.raises(ValueError, match="final_denoise"):
        build(final_denoise=-1)
    with pytest.raises(ValueError, match="sample_spacing"):
        build(sample_spacing=2.0, sampler="ddim")
    with pytest.raises(ValueError, match="sample_spacing"):
        build(sample_spacing=0.0)
