"""Multi-process training and sharded evaluation (benchmark/distributed.py) with torchrun and gloo on CPU.

SG2Im is run in a configuration whose step is a deterministic function of the batch with an image-mean loss
(no layout noise, no normalisation layers in the CRN, pixel L1 only), so one process with a global batch of 4
and two processes with 2 each compute the same gradient up to float summation order: the weights agree to
~1e-7 and the metrics are compared with a relative tolerance of 1e-6 (they come out identical).
Evaluation sharding is exact: the same checkpoint scored by 1 or 2 processes gives identical metrics.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark import registry
from benchmark.checkpoint import load_checkpoint
from benchmark.config import build_run_config
from benchmark.evaluate import sample_split
from benchmark.results import load_result
from benchmark.train import build_dataset, dataset_info

REPO = Path(__file__).resolve().parents[1]
DETERMINISTIC = {
    "method.layout_noise_dim": 0, "method.normalization": "none", "method.d_normalization": "none",
    "method.bbox_pred_loss_weight": 0, "method.discriminator_loss_weight": 0, "train.steps": 4,
    "eval.metrics": "fid,kid,object_acc_small",
}  # fmt: skip
SETS = [x for k, v in DETERMINISTIC.items() for x in ("--set", f"{k}={v}")]
ARGS = ["--method", "sg2im", "--dataset", "shapes", "--tier", "smoke", "--device", "cpu", "--quiet", *SETS]


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-8000:]


def _metrics(results: Path) -> dict[tuple[str, str], float]:
    [path] = (results / "runs").glob("*.json")
    r = load_result(path)
    return {(ev.split, k): m.value for ev in r.evaluations for k, m in ev.metrics.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("dist")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    _run([*torchrun, "-m", "benchmark", "run", *ARGS, "--out", str(tmp / "two"), "--results", str(tmp / "res2")])
    _run([sys.executable, "-m", "benchmark", "run", *ARGS, "--out", str(tmp / "one"), "--results", str(tmp / "res1")])
    ckpt = tmp / "two" / "sg2im__shapes__smoke__s0" / "checkpoint.safetensors"
    _run([sys.executable, "-m", "benchmark", "eval", str(ckpt), "--device", "cpu", "--quiet", "--results", str(tmp / "res_eval"),
          "--set", f"eval.metrics={DETERMINISTIC['eval.metrics']}"])  # eval takes the protocol's metrics otherwise
    return tmp


@pytest.mark.slow
def test_two_processes_train_like_one(runs: Path) -> None:
    two, one = _metrics(runs / "res2"), _metrics(runs / "res1")
    assert two.keys() == one.keys() and ("test", "fid") in two
    assert two == pytest.approx(one, rel=1e-6)
    _, a, ea = load_checkpoint(runs / "two" / "sg2im__shapes__smoke__s0" / "checkpoint.safetensors")
    _, b, eb = load_checkpoint(runs / "one" / "sg2im__shapes__smoke__s0" / "checkpoint.safetensors")
    params = [k for k in a if "running_" not in k and a[k].is_floating_point()]
    moved = [k for k in params if not torch.equal(a[k], b[k])]
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in params), moved
    assert ea["history"][-1]["L1_pixel_loss"] == pytest.approx(eb["history"][-1]["L1_pixel_loss"], rel=1e-6)
    assert len(ea["torch_rng_ranks"]) == 2  # each rank's RNG stream is kept for a resume


@pytest.mark.slow
def test_only_rank_zero_writes(runs: Path) -> None:
    [path] = (runs / "res2" / "runs").glob("*.json")
    data = json.loads(path.read_text())
    assert data["environment"]["world_size"] == 2
    with open(runs / "res2" / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["split"] for r in rows) == ["test", "test_unseen"]
    run_dir = runs / "two" / "sg2im__shapes__smoke__s0"
    named = sorted(ev["samples"] for ev in data["evaluations"])
    assert [n.split("__")[0] for n in named] == ["samples/test", "samples/test_unseen"]
    assert sorted(f"samples/{p.name}" for p in (run_dir / "samples").iterdir()) == named


@pytest.mark.slow
def test_sharded_evaluation_is_exact(runs: Path) -> None:
    """The 2-process run sampled and scored in two shards; 1 process scoring its checkpoint agrees exactly."""
    assert _metrics(runs / "res2") == _metrics(runs / "res_eval")


def test_finished_chunks_are_reused_and_bad_ones_regenerated(tmp_path: Path) -> None:
    cfg = build_run_config("sg2im", "shapes", "smoke", device="cpu", sets={"eval.batch_size": 3})
    ds = build_dataset("shapes", "test", cfg.image_size)
    torch.manual_seed(0)
    method = registry.get("method", "sg2im")(cfg.method_cfg, dataset_info(ds, "1.0")).eval()
    dev = torch.device("cpu")
    real, fake, owners, _ = sample_split(method, ds, cfg, dev, progress=False, cache=tmp_path)
    assert owners.tolist() == list(range(8)) and fake.shape == (8, 3, 32, 32)
    [folder] = tmp_path.iterdir()
    chunks = sorted(folder.glob("chunk_*.npz"))
    assert [p.name for p in chunks] == ["chunk_00000.npz", "chunk_00001.npz", "chunk_00002.npz"]
    with np.load(chunks[1]) as z:
        edited = dict(z)
    edited["images"] = np.full_like(edited["images"], 7)
    np.savez(chunks[1], **edited)  # a finished chunk is read, not generated again
    chunks[2].write_bytes(b"truncated")  # an unreadable one is generated again
    _, again, _, _ = sample_split(method, ds, cfg, dev, progress=False, cache=tmp_path)
    assert torch.equal(again[:3], fake[:3]) and torch.equal(again[6:], fake[6:])
    assert bool((again[3:6] == 7).all())
    other = build_run_config("sg2im", "shapes", "smoke", device="cpu", sets={"eval.batch_size": 3, "seed": 1})
    sample_split(method, ds, other, dev, progress=False, cache=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2  # other settings: another key, nothing reused


_WORKER = r'''
import json, sys
import torch
import torch.distributed as dist
from torch import nn
from benchmark import distributed

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
g, d = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3)), nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
unused = nn.Linear(3, 3)  # gets a gradient on rank 0 only
model = nn.ModuleDict({"g": g, "d": d, "unused": unused})
x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))


def step(batch: torch.Tensor, use_unused: bool) -> dict[str, torch.Tensor]:
    """A GAN-like step: a G pass with D frozen, then a D pass on detached fakes; two backward passes."""
    for p in model.parameters():
        p.grad = None
    d.requires_grad_(False)
    fake = g(batch)
    loss_g = -d(fake).mean() + (unused(batch).pow(2).mean() if use_unused else 0)
    loss_g.backward()
    d.requires_grad_(True)
    loss_d = (d(fake.detach()) - d(batch)).pow(2).mean()
    loss_d.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


full = step(x, True)  # one process, the whole batch (every rank computes it for reference)
avg = distributed.GradientAverager(model)
part = step(torch.stack(distributed.batch_slice(list(x))), rank == 0)  # this rank's half of the batch
# The unused layer is used by rank 0 only, on its half: its averaged gradient is half of rank 0's.
ok = sorted(full) == sorted(part) and all(torch.allclose(full[k], part[k], atol=1e-6) for k in full if "unused" not in k)
if rank == 0:
    json.dump({"ok": ok, "passes": avg.passes, "keys": sorted(part)}, open(sys.argv[1], "w"))
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_gradient_averager_matches_the_full_batch_gradient(tmp_path: Path) -> None:
    """Two backward passes per step (G with D frozen, then D), one parameter used on one rank only."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
          str(tmp_path / "out.json")])  # fmt: skip
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["ok"] and out["passes"] == 2 and "unused.weight" in out["keys"]
