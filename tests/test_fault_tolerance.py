"""Fault tolerance: SIGKILL mid-training and mid-evaluation, concurrent runs, divergence, bad checkpoints and data.

The kill test runs the real CLI in subprocesses and kills them with SIGKILL at moments read from the files the
run writes (a checkpoint before the last step; the first finished evaluation chunk).
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from benchmark.checkpoint import CheckpointError, load_checkpoint, read_metadata
from benchmark.cli import main
from benchmark.config import build_run_config
from benchmark.results import load_result
from benchmark.train import TrainingDiverged, load_method, train

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--dataset", "shapes", "--tier", "smoke", "--device", "cpu", "--quiet"]
# Fields that describe when, how fast and where a run happened, not what it computed: run_id/created (new
# per result), timings and evaluations[].time_s (wall clock), environment (git_dirty changes while the
# checkout is edited), checkpoint (its path is the run's folder; its bytes hold train_s). The checkpoints'
# tensors are compared separately.
NOT_COMPARED = ("run_id", "created", "timings", "environment", "checkpoint")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "benchmark", *args], cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT
        )


def _kill_when(args: list[str], log: Path, ready: Callable[[], bool], timeout: float = 240) -> None:
    """Start the command and SIGKILL it as soon as ``ready()`` holds; fail if it ends first."""
    p = _start(args, log)
    deadline = time.monotonic() + timeout
    try:
        while p.poll() is None and time.monotonic() < deadline:
            if ready():
                p.send_signal(signal.SIGKILL)
                p.wait()
                return
            time.sleep(0.005)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    pytest.fail(f"the run ended (rc={p.returncode}) before the kill point; log:\n{log.read_text()[-3000:]}")


def _step(ckpt: Path) -> int:
    try:
        return int(read_metadata(ckpt)["step"]) if ckpt.exists() else -1
    except CheckpointError:
        return -1


def _comparable(path: Path) -> dict[str, Any]:
    d = json.loads(path.read_text())
    for k in NOT_COMPARED:
        d.pop(k)
    for ev in d["evaluations"]:
        ev.pop("time_s")
    return d


@pytest.mark.slow
def test_sigkill_mid_training_and_mid_evaluation_resumes_to_the_same_result(tmp_path: Path) -> None:
    steps = 100
    args = [
        "run", "--method", "sg2im", *SMOKE, "--set", f"train.steps={steps}", "--set", "train.checkpoint_every=5",
        "--set", "eval.num_graphs=16", "--set", "eval.batch_size=2", "--set", "eval.metrics=fid,kid,object_acc_small",
    ]  # fmt: skip
    ref = _start([*args, "--out", str(tmp_path / "ref"), "--results", str(tmp_path / "ref_results")], tmp_path / "ref.log")
    out, results, log = tmp_path / "runs", tmp_path / "results", tmp_path / "killed.log"
    mine = [*args, "--out", str(out), "--results", str(results)]
    run_dir = out / "sg2im__shapes__smoke__s0"
    ckpt = run_dir / "checkpoint.safetensors"

    _kill_when(mine, log, lambda: 0 < _step(ckpt) < steps)  # mid-training
    assert 0 < _step(ckpt) < steps and not (results / "runs").exists()

    chunks = lambda: list((run_dir / "samples").glob("*/*/chunk_*.npz"))  # noqa: E731
    _kill_when(mine, log, lambda: bool(chunks()))  # mid-evaluation, after the first finished chunk
    assert _step(ckpt) == steps and chunks() and not (results / "runs").exists()

    done = _start(mine, log)
    assert done.wait(timeout=240) == 0, log.read_text()[-3000:]
    assert ref.wait(timeout=240) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    assert not chunks(), "the resumable chunks are removed once every split is scored"

    [got] = (results / "runs").glob("*.json")
    [want] = (tmp_path / "ref_results" / "runs").glob("*.json")
    assert _comparable(got) == _comparable(want)
    meta_a, state_a, extra_a = load_checkpoint(ckpt)
    meta_b, state_b, extra_b = load_checkpoint(tmp_path / "ref" / run_dir.name / "checkpoint.safetensors")
    assert meta_a["step"] == meta_b["step"] == steps
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert extra_a["history"] == extra_b["history"]
    opt_a, opt_b = extra_a["optimizers"]["optimizer"]["state"], extra_b["optimizers"]["optimizer"]["state"]
    assert all(torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]) for i in opt_a)
    import numpy as np

    named = [ev["samples"] for ev in json.loads(got.read_text())["evaluations"]]
    assert named == [ev["samples"] for ev in json.loads(want.read_text())["evaluations"]] and len(named) == 2
    for rel in named:
        with np.load(run_dir / rel) as a, np.load(tmp_path / "ref" / run_dir.name / rel) as b:
            assert np.array_equal(a["images"], b["images"])


@pytest.mark.slow
def test_concurrent_runs_share_one_intact_leaderboard(tmp_path: Path) -> None:
    seeds = range(3)
    procs = [
        _start(["run", "--method", "retrieval", *SMOKE, "--seed", str(s), "--out", str(tmp_path / "runs"),
                "--results", str(tmp_path / "results"), "--set", "eval.metrics=object_acc_small"],
               tmp_path / f"s{s}.log")  # fmt: skip
        for s in seeds
    ]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0] * len(procs), [(tmp_path / f"s{s}.log").read_text()[-2000:] for s in seeds]
    files = sorted((tmp_path / "results" / "runs").glob("*.json"))
    results = [load_result(f) for f in files]
    assert sorted(r.seed for r in results) == list(seeds)
    with open(tmp_path / "results" / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["run_id"], r["split"]) for r in rows) == sorted(
        (r.run_id, s) for r in results for s in ("test", "test_unseen")
    )
    metric_cols = [c for c in rows[0] if c.endswith(("(lower)", "(higher)"))]
    assert metric_cols and all(math.isfinite(float(r[c])) for r in rows for c in metric_cols)
    assert not list(tmp_path.glob("**/.*.tmp"))


def test_non_finite_loss_stops_naming_step_and_keeps_the_last_checkpoint(tmp_path: Path, capsys) -> None:
    args = [
        "run", "--method", "learned_ddpm", *SMOKE, "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "r"),
        "--set", "method.learning_rate=1e10", "--set", "train.steps=8", "--set", "train.checkpoint_every=1",
    ]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "non-finite loss at step 1: {'loss': nan" in err and "last good checkpoint" in err
    ckpt = tmp_path / "runs" / "learned_ddpm__shapes__smoke__s0" / "checkpoint.safetensors"
    before = ckpt.read_bytes()
    meta, state, _ = load_checkpoint(ckpt)
    assert meta["step"] == 1 and all(v.isfinite().all() for v in state.values() if v.is_floating_point())
    # Resuming from the kept checkpoint diverges again at the same step and leaves the file untouched.
    cfg = build_run_config("learned_ddpm", "shapes", "smoke", device="cpu",
                           sets={"method.learning_rate": 1e10, "train.steps": 8, "train.checkpoint_every": 1})  # fmt: skip
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 1"):
        train(cfg, ckpt.parent, progress=False)
    assert ckpt.read_bytes() == before
    assert not (tmp_path / "r" / "runs").exists()


# --- bad checkpoints --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def retrieval_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = build_run_config("retrieval", "shapes", "smoke", device="cpu")
    return train(cfg, tmp_path_factory.mktemp("ckpt") / "run", progress=False).checkpoint


def _rewrite(src: Path, dst: Path, **meta_changes: Any) -> Path:
    """Copy a checkpoint with changed metadata fields (tensors and their digest untouched)."""
    with safe_open(str(src), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = json.loads(f.metadata()["sg2i"])
    meta.update(meta_changes)
    save_file(tensors, str(dst), metadata={"sg2i": json.dumps(meta)})
    return dst


def test_tampered_tensor_bytes_are_refused(retrieval_ckpt: Path, tmp_path: Path) -> None:
    data = bytearray(retrieval_ckpt.read_bytes())
    header = int.from_bytes(data[:8], "little")
    data[8 + header + 17] ^= 0x01  # one bit of the tensor payload
    bad = tmp_path / "tampered.safetensors"
    bad.write_bytes(bytes(data))
    read_metadata(bad)  # the header is intact ...
    with pytest.raises(CheckpointError, match=r"tampered.safetensors: the tensor data does not match .*'tensors_sha256'"):
        load_checkpoint(bad)  # ... but the payload is not
    with pytest.raises(CheckpointError, match="tampered.safetensors"):
        load_method(bad)


def test_pickles_are_refused_without_being_unpickled(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    path = tmp_path / "model.safetensors"
    torch.save({"weights": torch.zeros(3), "x": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a readable safetensors checkpoint"):
        load_checkpoint(path)
    assert main(["eval", str(path), "--device", "cpu", "--results", str(tmp_path / "r")]) == 2
    assert "model.safetensors" in capsys.readouterr().err
    assert not marker.exists(), "the pickle was executed"


def test_wrong_or_unknown_method_is_refused(retrieval_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"field 'method': unknown method 'nope'"):
        load_method(_rewrite(retrieval_ckpt, tmp_path / "a.safetensors", method="nope"))
    with pytest.raises(CheckpointError, match=r"b.safetensors: weights do not fit method 'sg2im'"):
        load_method(_rewrite(retrieval_ckpt, tmp_path / "b.safetensors", method="sg2im", method_cfg={}))
    with pytest.raises(CheckpointError, match=r"c.safetensors: metadata field 'format_version' is '9'"):
        load_method(_rewrite(retrieval_ckpt, tmp_path / "c.safetensors", format_version="9"))
    skel = {"__dict__": [["optimizers", {"__tensor__": "state.missing"}]]}
    with pytest.raises(CheckpointError, match=r"d.safetensors: metadata field 'extra_state'"):
        load_checkpoint(_rewrite(retrieval_ckpt, tmp_path / "d.safetensors", extra_state=skel))
    # Resuming another method's run folder: refused, the checkpoint is left as it was.
    before = retrieval_ckpt.read_bytes()
    cfg = build_run_config("sg2im", "shapes", "smoke", device="cpu")
    with pytest.raises(CheckpointError, match=r"field 'method' is 'retrieval' but this run trains 'sg2im'"):
        train(cfg, retrieval_ckpt.parent, progress=False)
    assert retrieval_ckpt.read_bytes() == before


# --- bad dataset files --------------------------------------------------------------------------------------


def test_broken_dataset_files_fail_clearly_and_lose_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    from benchmark.data.vg import VgDataset

    root = tmp_path / "data"
    VgDataset.write_fixture(root / "vg")
    monkeypatch.setenv("SG2I_DATA_ROOT", str(root))
    results = tmp_path / "results"
    assert main(["run", "--method", "retrieval", "--dataset", "vg", "--tier", "smoke", "--device", "cpu", "--quiet",
                 "--out", str(tmp_path / "runs"), "--results", str(results)]) == 0  # fmt: skip
    capsys.readouterr()
    ckpt = tmp_path / "runs" / "retrieval__vg__smoke__s0" / "checkpoint.safetensors"
    written = {p: p.read_bytes() for p in [ckpt, results / "leaderboard.csv", *results.glob("runs/*.json")]}
    image = root / "vg" / "images" / VgDataset.build("test", 32, root=root / "vg").image_paths[0]

    image.write_bytes(image.read_bytes()[:100])  # truncated JPEG
    assert main(["eval", str(ckpt), "--device", "cpu", "--quiet", "--results", str(results)]) == 2
    assert f"cannot read image file {image}" in capsys.readouterr().err
    image.unlink()
    assert main(["eval", str(ckpt), "--device", "cpu", "--quiet", "--results", str(results)]) == 2
    assert f"image file not found: {image}" in capsys.readouterr().err
    h5 = root / "vg" / "test.h5"
    h5.write_bytes(h5.read_bytes()[:2000])  # truncated HDF5
    assert main(["eval", str(ckpt), "--device", "cpu", "--quiet", "--results", str(results)]) == 2
    assert "test.h5" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in written} == written
    assert sorted(results.glob("runs/*.json")) == sorted(p for p in written if p.suffix == ".json")
