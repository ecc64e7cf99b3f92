"""sgdiff: each loss against a hand-computed value, the released schedule and DDIM timesteps, the masking, the
CLIP image side (random tiny CLIP), the missing VQ-f8 message, stage resume after a kill and the stage records."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from benchmark.batch import collate
from benchmark.checkpoint import read_metadata
from benchmark.config import build_run_config
from benchmark.protocol import load_protocol
from benchmark.results import load_result
from benchmark.train import CHECKPOINT_NAME, build_dataset, dataset_info, train
from methods import sgdiff as sgd


@pytest.fixture(scope="module")
def shapes():
    proto = load_protocol("shapes", "")
    ds = build_dataset("shapes", proto["train_split"], 32)
    return ds, dataset_info(ds, proto["version"])


def _smoke_cfg(**sets):
    return build_run_config("sgdiff", "shapes", "smoke", seed=0, device="cpu", sets=sets)


# -- losses ------------------------------------------------------------------------------------------------


def test_contrastive_loss_matches_a_hand_computed_value():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    graph = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits = 2 * img @ graph^T = [[2, 1.2], [0, 1.6]]
    rows = [-math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))), -math.log(math.exp(1.6) / (1 + math.exp(1.6)))]
    cols = [-math.log(math.exp(2) / (math.exp(2) + 1)), -math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))]
    want = (sum(rows) / 2 + sum(cols) / 2) / 2
    assert float(sgd.clip_loss(img, graph, torch.tensor(2.0))) == pytest.approx(want, rel=1e-6)


def test_masked_autoencoding_loss_matches_a_hand_computed_value():
    block = sgd.MIMBlock(dim=2, context_dim=3, heads=1, head_dim=2)
    # Zero output layers: every residual branch adds 0, so T(x, tokens) = x and the loss is mean((x_m - x)^2).
    for lin in (block.attn1.to_out, block.attn2.to_out, block.ff_out):
        torch.nn.init.zeros_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
    masked = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    gt = torch.tensor([[[1.0, 2.0], [1.0, 3.0]]])
    tokens, mask = torch.randn(1, 4, 3), torch.tensor([[True, True, False, False]])
    # squared errors 1, 4, 0, 4 -> mean 9 / 4
    assert float(sgd.mim_loss(block, masked, gt, tokens, mask).detach()) == pytest.approx(2.25)
    # and the block does use the tokens once its output layer is not zero
    torch.nn.init.normal_(block.attn2.to_out.weight)
    a = block(masked, tokens, mask)
    b = block(masked, tokens + 1, mask)
    c = block(masked, torch.cat([tokens[:, :2], tokens[:, 2:] + 5], 1), mask)  # padded slots are masked out
    assert not torch.allclose(a, b) and torch.allclose(a, c)


def test_latent_diffusion_loss_matches_a_hand_computed_value():
    noise = torch.zeros(2, 1, 1, 2)
    pred = torch.tensor([[[[1.0, 3.0]]], [[[2.0, 0.0]]]])
    # per image mean((eps - eps_hat)^2): (1 + 9) / 2 = 5 and (4 + 0) / 2 = 2; batch mean 3.5
    assert float(sgd.ldm_loss(pred, noise)) == pytest.approx(3.5)


def test_box_keep_mask_blacks_out_the_selected_boxes():
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    keep = sgd.box_keep_mask(boxes, torch.tensor([0, 0, 1]), torch.tensor([True, False, False]), 2, 4, 4)
    want = torch.ones(2, 1, 4, 4)
    want[0, 0, :2, :2] = 0
    assert torch.equal(keep, want)


def test_schedule_and_ddim_timesteps_are_the_released_ones(shapes):
    b = sgd.ldm_betas(1000, 0.0015, 0.0195)
    assert b[0] == pytest.approx(0.0015) and b[-1] == pytest.approx(0.0195)
    assert np.allclose(np.sqrt(b), np.linspace(0.0015**0.5, 0.0195**0.5, 1000))
    _, info = shapes
    m = sgd.SGDiff(replace(_smoke_cfg().method_cfg, sample_steps=200), info)
    # ldm/models/diffusion/ddim.py: make_ddim_timesteps("uniform", 200, 1000) = range(0, 1000, 5) + 1
    assert m.scheduler().timesteps.tolist() == list(range(996, 0, -5))


# -- image sides and first stage -----------------------------------------------------------------------------


def test_mim_selection_never_masks_the_image_node(shapes):
    ds, info = shapes
    m = sgd.SGDiff(_smoke_cfg().method_cfg, info)
    batch = collate([ds[i] for i in range(4)])
    torch.manual_seed(0)
    sel = torch.stack([m.mim_selection(batch) for _ in range(50)])
    assert not sel[:, batch.objs == m.image_obj].any()
    assert 0.6 < sel[:, batch.objs != m.image_obj].float().mean() < 0.95  # P = 0.8


def test_cgip_with_the_clip_image_side_trains(shapes):
    ds, info = shapes
    cfg = replace(_smoke_cfg().method_cfg, image_encoder="clip", clip_weights="random")
    m = sgd.SGDiff(cfg, info)
    batch = collate([ds[i] for i in range(3)])
    loc, glob = m.image_features(batch.images * 2 - 1)
    assert loc.shape[0] == 3 and loc.shape[2] == m.mim.attn1.to_q.in_features and glob.shape == (3, 32)
    m.train().begin_stage("cgip")
    before = m.encoder.graph_projection.weight.clone()
    out = m.train_step(batch, 2)
    assert all(math.isfinite(v) for v in out.values())
    assert not torch.equal(before, m.encoder.graph_projection.weight)
    assert any(w.random_init for w in m.weight_provenance())


def test_the_full_tier_without_the_vq_f8_file_says_which_file(shapes, tmp_path):
    from benchmark.text_encoders.base import WeightsUnavailable

    _, info = shapes
    cfg = replace(_smoke_cfg().method_cfg, first_stage="vq_f8", image_encoder="clip", clip_weights="random")
    with pytest.raises(WeightsUnavailable, match="method.first_stage_weights.*vq-f8"):
        sgd.SGDiff(cfg, info).setup(None)  # type: ignore[arg-type]
    with pytest.raises(WeightsUnavailable, match="first_stage_weights=/path/to/model.ckpt"):
        sgd.SGDiff(replace(cfg, first_stage_weights=str(tmp_path / "model.ckpt")), info).setup(None)  # type: ignore[arg-type]


def test_the_full_tier_runs_in_a_released_format_vq_file(shapes, tmp_path, monkeypatch):
    """A random-init CompVis VQ checkpoint in the release's Lightning format (the vq_f8 tests' writer, at their
    tiny architecture so that it is written in seconds) as the first stage: plan cgip -> ldm, latents, samples."""
    import importlib.util
    from functools import partial
    from pathlib import Path

    from methods import vq_f8

    spec = importlib.util.spec_from_file_location("vq_f8_tests", Path(__file__).parent / "test_vq_f8.py")
    vt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vt)  # type: ignore[union-attr]
    path = tmp_path / "model.ckpt"
    vt.write_release(path, vt.TINY, monkeypatch)
    monkeypatch.setattr(vq_f8, "load_vq_f8", partial(vq_f8.load_vq_f8, cfg=vt.TINY))
    ds, info = shapes
    cfg = replace(_smoke_cfg().method_cfg, first_stage="vq_f8", image_encoder="clip", clip_weights="random",
                  first_stage_weights=str(path))  # fmt: skip
    m = sgd.SGDiff(cfg, info)
    m.setup(None)  # type: ignore[arg-type]
    assert [n for n, _ in m.stage_plan(5)] == ["cgip", "ldm"] and m.autoencoder is None
    batch = collate([ds[i] for i in range(2)])
    m.train().begin_stage("ldm")
    assert math.isfinite(m.train_step(batch, 0)["loss"])
    assert m.encode_latents(batch.images * 2 - 1).shape == (2, 4, 4, 4)
    from benchmark.seeding import sample_generators

    x = m.eval().sample(batch, sample_generators(0, "t", [0, 1], 0))
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()
    assert any(w.name == "vq_f8" and w.sha256 for w in m.weight_provenance())
    assert not any("vq" in k or k.startswith("_") for k in m.state_dict())  # the user's file stays outside
    again = sgd.SGDiff(cfg, info)
    again.load_state_dict(m.state_dict())
    assert torch.equal(again.eval().sample(batch, sample_generators(0, "t", [0, 1], 0)), x)


# -- stages ----------------------------------------------------------------------------------------------------

STAGE_SETS = {"method.autoencoder_steps": 2, "method.cgip_steps": 3, "train.steps": 3, "train.checkpoint_every": 1}


def test_stage_plan_and_records(tmp_path):
    out = train(_smoke_cfg(**STAGE_SETS), tmp_path, progress=False)
    meta = read_metadata(out.checkpoint)
    assert meta["stages"] == [["autoencoder", 2], ["cgip", 3], ["ldm", 3]]
    assert (meta["step"], meta["stage"], meta["stage_step"]) == (8, "ldm", 3)
    assert out.method.stage == "ldm" and float(out.method.latent_scale) > 0


@pytest.mark.parametrize("kill_at", [2, 3, 6])  # the first cgip step (a stage boundary), mid-cgip, mid-ldm
def test_resume_after_a_kill_in_any_stage_matches_an_uninterrupted_run(tmp_path, monkeypatch, kill_at):
    cfg = _smoke_cfg(**STAGE_SETS)
    ref = train(cfg, tmp_path / "ref", progress=False).method.state_dict()

    real = sgd.SGDiff.train_step

    def dying(self, batch, step):
        if step == kill_at:
            raise KeyboardInterrupt("killed")
        return real(self, batch, step)

    monkeypatch.setattr(sgd.SGDiff, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", progress=False)
    meta = read_metadata(tmp_path / "run" / CHECKPOINT_NAME)
    stage, done = {2: ("autoencoder", 2), 3: ("cgip", 1), 6: ("ldm", 1)}[kill_at]
    assert (meta["step"], meta["stage"], meta["stage_step"]) == (kill_at, stage, done)
    monkeypatch.setattr(sgd.SGDiff, "train_step", real)
    out = train(cfg, tmp_path / "run", progress=False)
    assert out.resumed_from == kill_at
    got = out.method.state_dict()
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


def test_a_changed_stage_plan_refuses_to_resume(tmp_path):
    train(_smoke_cfg(**STAGE_SETS), tmp_path, progress=False)
    from benchmark.checkpoint import CheckpointError

    with pytest.raises(CheckpointError):
        train(_smoke_cfg(**{**STAGE_SETS, "method.cgip_steps": 4}), tmp_path, progress=False)


def test_the_result_records_the_stages(tmp_path, monkeypatch):
    import time

    from benchmark import run as run_mod

    cfg = _smoke_cfg(**STAGE_SETS)
    out = train(cfg, tmp_path / "run", progress=False)
    # Scoring is not what is tested here: no evaluations, so the record is written in seconds.
    monkeypatch.setattr(run_mod, "evaluate", lambda *a, **k: ([], [], {}, 0.0, 0.0))
    _, path = run_mod._record(cfg, out.method, out.checkpoint, out.train_s, tmp_path / "run", tmp_path / "results",
                              False, time.perf_counter(), out.history)  # fmt: skip
    res = load_result(path)
    assert res.stage == "ldm"
    assert res.stages == [{"name": "autoencoder", "steps": 2}, {"name": "cgip", "steps": 3}, {"name": "ldm", "steps": 3}]


# -- SceneGenie guidance (methods/guidance.py) with boxes from a layout predictor's checkpoint ----------------


@pytest.fixture(scope="module")
def guidance_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sgdiff_guidance")
    boxes = train(build_run_config("sg2im", "shapes", "smoke", seed=0, device="cpu"), root / "sg2im", progress=False)
    out = train(_smoke_cfg(**STAGE_SETS), root / "sgdiff", progress=False)
    return out, boxes.checkpoint


def _with(out, **fields):
    m = sgd.SGDiff(replace(out.method.cfg, **fields), out.method.info)
    m.load_state_dict(out.method.state_dict())
    return m.eval()


def test_guidance_needs_the_boxes_of_a_layout_predictor(guidance_setup):
    out, _ = guidance_setup
    with pytest.raises(ValueError, match="method.guidance_boxes_from"):
        _with(out, guidance="scenegenie")


def test_guidance_weight_zero_is_unguided_and_the_box_term_guides_deterministically(guidance_setup, shapes):
    from benchmark.seeding import sample_generators

    out, box_ckpt = guidance_setup
    ds, _ = shapes
    batch = collate([ds[i] for i in range(2)])
    g = lambda: sample_generators(0, "test", [0, 1], 0)  # noqa: E731
    plain = out.method.sample(batch, g())
    zero = _with(out, guidance="scenegenie", guidance_box_weight=0.0, guidance_boxes_from=str(box_ckpt))
    assert torch.equal(zero.sample(batch, g()), plain)
    guided = _with(out, guidance="scenegenie", guidance_box_weight=1e4, guidance_boxes_from=str(box_ckpt))
    inputs = guided.guidance_inputs(batch, g())
    assert bool(inputs.include.any()) and not bool(inputs.include[batch.objs == guided.image_obj].any())
    x = guided.sample(batch, g())
    assert not torch.equal(x, plain) and torch.equal(x, guided.sample(batch, g()))
    assert any(p.name == "layout_from" for p in guided.weight_provenance())
