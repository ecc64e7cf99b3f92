"""The trainer's stage bookkeeping (benchmark/train.py); sgdiff's tests train a real three-stage plan, kill it in
each stage and resume (tests/methods/test_sgdiff.py)."""

from __future__ import annotations

import pytest

from benchmark.checkpoint import read_metadata
from benchmark.config import build_run_config
from benchmark.interfaces import Method
from benchmark.train import check_plan, stage_at, train

PLAN = [("autoencoder", 2), ("empty", 0), ("cgip", 3), ("ldm", 4)]


@pytest.mark.parametrize(
    "step,want",
    [(0, ("autoencoder", 0)), (1, ("autoencoder", 1)), (2, ("autoencoder", 2)), (3, ("cgip", 1)),
     (5, ("cgip", 3)), (6, ("ldm", 1)), (9, ("ldm", 4))],
)  # fmt: skip
def test_stage_at_is_the_stage_of_the_last_completed_step(step, want):
    assert stage_at(PLAN, step) == want


def test_check_plan_refuses_bad_plans():
    assert check_plan([("a", 1), ["b", 0]], "m") == [("a", 1), ("b", 0)]
    for bad in ([], [("a", 1), ("a", 2)], [("a", -1)], [("a", 1.5)], [("a", True)], ["a"]):
        with pytest.raises(ValueError, match="method 'm'"):
            check_plan(bad, "m")  # type: ignore[arg-type]


def test_the_default_plan_is_one_train_stage_of_train_steps():
    assert Method.stage_plan(None, 123) == [("train", 123)]  # type: ignore[arg-type]


def test_a_single_stage_checkpoint_records_the_train_stage(tmp_path):
    cfg = build_run_config("learned_ddpm", "shapes", "smoke", seed=0, device="cpu", sets={"train.steps": 2})
    out = train(cfg, tmp_path, progress=False)
    meta = read_metadata(out.checkpoint)
    assert (meta["stages"], meta["stage"], meta["stage_step"], meta["step"]) == ([["train", 2]], "train", 2, 2)
