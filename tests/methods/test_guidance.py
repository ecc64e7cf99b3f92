"""SceneGenie guidance (methods/guidance.py) and its wiring into the scene-graph diffusion methods."""

from __future__ import annotations

import json

import pytest
import torch

from benchmark import registry
from benchmark.batch import collate
from benchmark.config import build_run_config
from benchmark.protocol import load_protocol
from benchmark.results.groups import variant_of
from benchmark.run import eval_checkpoint
from benchmark.scene_graph import IMAGE_TOKEN
from benchmark.seeding import sample_generators
from benchmark.text_encoders.base import WeightsUnavailable
from benchmark.train import build_dataset, dataset_info, load_method, train
from methods.guidance import box_coverage, box_energy, graph_captions, spherical_dist
from methods.unet import record_cross_attention

T_MID = 500  # a mid-noise timestep of the smoke model's T = 1000


def build(name: str = "learned_ddpm", **method_sets: object):
    """A smoke-tier method on ``shapes`` built directly (no training loop), with its training split."""
    sets = {f"method.{k}": v for k, v in method_sets.items()}
    cfg = build_run_config(name, "shapes", tier="smoke", seed=0, device="cpu", sets=sets)
    ds = build_dataset("shapes", "train", cfg.image_size)
    m = registry.get("method", name)(cfg.method_cfg, dataset_info(ds, load_protocol("shapes")["version"]))
    m.setup(ds)
    return m, ds


def gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return sample_generators(seed, "test", list(range(n)), 0)


@pytest.fixture(scope="module")
def data():
    train_set = build_dataset("shapes", "train", 32)
    test_set = build_dataset("shapes", "test", 32)
    return collate([train_set[i] for i in range(8)]), collate([test_set[i] for i in range(3)])


@pytest.fixture(scope="module")
def trained_state(data):
    """learned_ddpm smoke weights after 5 training steps (non-zero output layers)."""
    torch.manual_seed(0)
    m, _ = build()
    for step in range(5):
        m.train_step(data[0], step)
    return m.state_dict()


def guided_method(state, **sets):
    m, _ = build("learned_ddpm", guidance="scenegenie", **sets)
    m.load_state_dict(state)
    return m.eval()


def step_pieces(m, batch, seed=0):
    """x_t, t, the unguided and the guided model functions of ``m`` at T_MID, and the guidance inputs."""
    net = m.ema
    g = gens(batch.num_images, seed)
    cond = net.cond(batch, layout="pred")
    plain = lambda x, t: m.guided_output(net, x, t, cond, None).float()  # noqa: E731
    inputs = m.guidance_inputs(batch, cond, g)
    guided = m.scenegenie.wrap(plain, m.diffusion.alphas_cumprod, inputs, lambda: record_cross_attention(net.unet))
    x = torch.randn((batch.num_images, 3, 32, 32), generator=torch.Generator().manual_seed(seed))
    t = torch.full((batch.num_images,), T_MID, dtype=torch.long)
    return net, cond, x, t, plain, guided, inputs


def ddim_shift(m, t: int, t_prev: int) -> float:
    """How far one DDIM step (eta = 0) from t to t_prev moves x_{t_prev} per unit change of eps:
    ``sqrt(1 - abar_prev) - sqrt(abar_prev) sqrt(1 - abar_t) / sqrt(abar_t)`` (< 0)."""
    ab, ab_prev = (float(m.diffusion.alphas_cumprod[i]) for i in (t, t_prev))
    return (1 - ab_prev) ** 0.5 - ab_prev**0.5 * ((1 - ab) / ab) ** 0.5


def test_box_term_step_lowers_the_box_energy_and_the_released_sign_raises_it(trained_state, data):
    m = guided_method(trained_state, guidance_box_weight=1.0)
    batch = data[1]
    net, cond, x, t, plain, guided, inputs = step_pieces(m, batch)

    def energy(x_):
        with torch.no_grad(), record_cross_attention(net.unet) as maps:
            plain(x_, t)
        return float(box_energy(maps, inputs.boxes, inputs.obj_to_img, inputs.token_index, inputs.include, 3).sum())

    with torch.no_grad():
        eps_u, eps_g = plain(x, t)[:, :3], guided(x, t)[:, :3]
    delta = eps_g - eps_u
    assert float(delta.abs().max()) > 0
    shift = ddim_shift(m, T_MID, T_MID - 20)  # the step moves x by shift * delta (shift < 0)
    e0 = energy(x)
    assert energy(x + shift * delta) < e0, "our sign: a guided step must lower the box energy"
    assert energy(x - shift * delta) > e0, "the released sign (eps - sqrt(1-abar) grad) raises it"


# The tiny random CLIP (32 px input) and ViT-B/32's architecture with random weights (224 px cutouts of the
# released 256 px canvas); real weights cannot be had offline.
@pytest.mark.parametrize("clip_weights,cutouts", [("random", 4), ("random:ViT-B-32", 2)])
def test_clip_term_step_lowers_the_clip_loss_and_the_released_sign_raises_it(
    trained_state, data, clip_weights, cutouts
):
    m = guided_method(
        trained_state, guidance_box_weight=0.0, guidance_clip_weight=1.0, guidance_clip_weights=clip_weights,
        guidance_cutouts=cutouts,
    )
    batch = data[1] if cutouts > 2 else collate(data[1].split()[:2])
    _, _, x, t, plain, guided, inputs = step_pieces(m, batch)
    sg = m.scenegenie
    ab = float(m.diffusion.alphas_cumprod[T_MID])

    def loss(eps):  # the CLIP loss of x0_hat(eps) with the same cutouts and canvas noise each time
        x0 = (x - (1 - ab) ** 0.5 * eps) / ab**0.5
        return float(sg.clip_loss(x0, inputs, sg.guidance_generators(inputs.generators)).sum())

    with torch.no_grad():
        eps_u, eps_g = plain(x, t)[:, :3], guided(x, t)[:, :3]
    assert float((eps_g - eps_u).abs().max()) > 0
    base = loss(eps_u)
    assert loss(eps_g) < base, "our sign: a guided step must lower the CLIP loss"
    assert loss(2 * eps_u - eps_g) > base, "the released sign raises it"


@pytest.mark.parametrize("sets", [
    {"guidance_box_weight": 0.0, "guidance_clip_weight": 0.0},
    {"guidance_until": 1.0},  # no step has t >= T
])  # fmt: skip
def test_weight_zero_or_no_guided_step_reproduces_the_unguided_samples(trained_state, data, sets):
    plain, _ = build("learned_ddpm")
    plain.load_state_dict(trained_state)
    ref = plain.eval().sample(data[1], gens(3))
    assert torch.equal(guided_method(trained_state, **sets).sample(data[1], gens(3)), ref)
    assert not torch.equal(guided_method(trained_state).sample(data[1], gens(3)), ref)


def test_guided_sampling_is_deterministic(trained_state, data):
    m = guided_method(trained_state, guidance_clip_weight=1.0, guidance_clip_weights="random", guidance_cutouts=2)
    a = m.sample(data[1], gens(3))
    assert torch.equal(a, m.sample(data[1], gens(3)))
    assert not torch.equal(a, m.sample(data[1], gens(3, seed=1)))
    assert 0 <= float(a.min()) and float(a.max()) <= 1


def test_minilm_with_the_box_term_samples_offline(data):
    # with classifier-free guidance too: the energy reads the conditional half of the 2B attention maps
    m, _ = build("minilm_ddpm", guidance="scenegenie", guidance_scale=1.5)
    x = m.eval().sample(data[1], gens(3), layout="gt")
    assert x.shape == (3, 3, 32, 32) and torch.isfinite(x).all()


def test_clip_term_without_weights_stops_before_sampling(tmp_path, monkeypatch):
    monkeypatch.delenv("SG2I_CLIP_WEIGHTS", raising=False)
    with pytest.raises(WeightsUnavailable) as e:
        build("learned_ddpm", guidance="scenegenie", guidance_clip_weight=1.0)
    assert "\n" not in str(e.value) and str(e.value).startswith("method.guidance_clip_weights")
    cfg = build_run_config("learned_ddpm", "shapes", tier="smoke", seed=0, device="cpu", sets={"train.steps": 1})
    ckpt = train(cfg, tmp_path, progress=False).checkpoint
    with pytest.raises(WeightsUnavailable):
        load_method(ckpt, "cpu", {"guidance": "scenegenie", "guidance_clip_weight": 1.0})
    load_method(ckpt, "cpu", {"guidance": "scenegenie"})  # the box term needs no weights


def test_bad_guidance_fields_name_the_field():
    with pytest.raises(ValueError, match="method.guidance"):
        build("learned_ddpm", guidance="scene_genie")
    with pytest.raises(ValueError, match="method.guidance_until"):
        build("learned_ddpm", guidance="scenegenie", guidance_until=1.5)
    with pytest.raises(ValueError, match="use_layout"):
        build("learned_ddpm", guidance="scenegenie", use_layout=False)


def test_guided_eval_writes_a_result_that_is_its_own_variant(tmp_path):
    cfg = build_run_config("learned_ddpm", "shapes", tier="smoke", seed=0, device="cpu", sets={"train.steps": 1})
    ckpt = train(cfg, tmp_path / "runs", progress=False).checkpoint
    sets = {"eval.num_graphs": 8, "eval.splits": ("test",), "eval.metrics": ("box_recall",), "method.sample_steps": 2}
    plain, _ = eval_checkpoint(ckpt, "cpu", dict(sets), tmp_path / "results", progress=False)
    guided, path = eval_checkpoint(ckpt, "cpu", {**sets, "method.guidance": "scenegenie"}, tmp_path / "results",
                                   progress=False)  # fmt: skip
    stored = json.loads(path.read_text())
    assert stored["config"]["method_cfg"]["guidance"] == "scenegenie"
    assert stored["config_changes"]["method_cfg.guidance"] == "scenegenie"
    assert "method_cfg.guidance" not in (plain.config_changes or {})
    assert "method.guidance=scenegenie" in variant_of(guided)[0]
    assert "guidance" not in variant_of(plain)[0]


def test_recording_attention_leaves_the_output_unchanged(trained_state, data):
    m, _ = build()
    m.load_state_dict(trained_state)
    net = m.ema.eval()
    cond = net.cond(data[1], layout="gt")
    x = torch.randn((3, 3, 32, 32), generator=torch.Generator().manual_seed(1))
    t = torch.full((3,), 300, dtype=torch.long)
    with torch.no_grad():
        ref = net(x, t, cond)
        with record_cross_attention(net.unet) as maps:
            out = net(x, t, cond)
    assert torch.equal(out, ref) and maps
    assert all(u.record is None for u in net.unet.modules() if hasattr(u, "record"))
    for a in maps:  # [B, heads, H, W, L]: probabilities, zero on padded tokens
        assert a.shape[0] == 3 and a.shape[-1] == cond.tokens.shape[1]
        assert float(a.min()) >= 0 and float(a.sum(-1).max()) <= 1 + 1e-5
        assert float(a.permute(0, 2, 3, 1, 4)[~cond.token_mask[:, None, None, None, :].expand(-1, *a.shape[2:4], a.shape[1], -1)].abs().max()) == 0


def test_box_energy_and_coverage_by_hand():
    cov = box_coverage(torch.tensor([[0.0, 0.0, 0.5, 0.25], [0.1, 0.0, 0.3, 1.0]]), 4, 4)
    assert torch.allclose(cov[0], torch.tensor([[1.0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    assert torch.allclose(cov[1, 0], torch.tensor([0.6, 0.2, 0.0, 0.0]))
    # one image, one object at token 0; its attention: 0.3 inside the left half, 0.1 outside -> ratio 0.75
    a = torch.zeros(1, 1, 2, 2, 2)
    a[0, 0, :, 0, 0], a[0, 0, :, 1, 0] = 0.3, 0.1
    e = box_energy([a], torch.tensor([[0.0, 0.0, 0.5, 1.0]]), torch.tensor([0]), torch.tensor([0]),
                   torch.tensor([True]), 1)  # fmt: skip
    assert torch.allclose(e, torch.tensor([0.25**2]))
    u = torch.tensor([[1.0, 0.0]])
    assert torch.allclose(spherical_dist(u, torch.tensor([[0.0, 2.0]])), torch.tensor([2 * (torch.pi / 4) ** 2]))


def test_graph_captions_from_triples(data):
    ds = build_dataset("shapes", "test", 32)
    info = dataset_info(ds, load_protocol("shapes")["version"])
    b = data[1]
    image_obj = info.vocab.object_name_to_idx[IMAGE_TOKEN]
    caps = graph_captions(b, info.phrases, info.pred_phrases, image_obj)
    assert len(caps) == 3
    objs = b.objs.tolist()
    s, p, o = next(tr for tr, i in zip(b.triples.tolist(), b.triple_to_img.tolist())
                   if i == 0 and objs[tr[0]] != image_obj and objs[tr[2]] != image_obj)  # fmt: skip
    assert caps[0].startswith(f"{info.phrases[objs[s]]} {info.pred_phrases[p]} {info.phrases[objs[o]]}")
    assert "image" not in caps[0]
