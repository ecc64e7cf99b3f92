"""Sweeps (benchmark/sweep.py): a 2-run grid through submitit's LocalExecutor, skipping on re-run, grid files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.config import build_run_config
from benchmark.results import load_result
from benchmark.sweep import ClusterOptions, RunSpec, executor_parameters, expand, load_grid, pending, run_key


def test_two_run_grid_through_submitit_local_then_everything_is_skipped(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs are subprocesses
    grid = tmp_path / "grid.json"
    # One cheap metric: the jobs' own cost is not what is tested here.
    sets = {"eval.metrics": ["object_acc_small"]}
    grid.write_text(json.dumps({"methods": ["retrieval"], "datasets": ["shapes"], "seeds": [0, 1], "tier": "smoke",
                                "sets": sets}))  # fmt: skip
    jobs, results = tmp_path / "jobs", tmp_path / "results"
    common = [str(grid), "--out", str(tmp_path / "runs"), "--results", str(results), "--device", "cpu"]
    assert main(["sweep", *common, "--executor", "submitit-local", "--jobs", str(jobs), "--max-parallel", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 run(s) to do, 0 skipped" in out and "sweep: 2 done" in out
    runs = [load_result(p) for p in sorted((results / "runs").glob("*.json"))]
    assert sorted(r.seed for r in runs) == [0, 1] and {r.tier for r in runs} == {"smoke"}
    with open(results / "leaderboard.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4  # 2 runs x 2 evaluation splits
    job_files = sorted(p.name for p in jobs.rglob("*"))
    assert any(n.endswith("_result.pkl") for n in job_files)  # submitit's own job records

    # Again, with either executor: both results exist, nothing is submitted or run.
    assert main(["sweep", *common, "--executor", "submitit-local", "--jobs", str(jobs)]) == 0
    assert main(["sweep", *common, "--executor", "local"]) == 0
    out = capsys.readouterr().out
    assert out.count("nothing to run (2 of 2 results exist)") == 2
    assert sorted(p.name for p in jobs.rglob("*")) == job_files
    assert len(list((results / "runs").glob("*.json"))) == 2
    assert main(["sweep", *common, "--seeds", "0,1,2", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "1 to run, 2 skipped (result exists)" and lines[2].startswith("run   retrieval/shapes/smoke/s2")


def test_run_key_is_the_resolved_configuration() -> None:
    a = RunSpec("sg2im", "shapes", "smoke", 0)
    cfg = a.config().to_dict()
    assert run_key(cfg) == run_key(json.loads(json.dumps(cfg)))  # tuples in the config == lists in a result file
    assert run_key(cfg) == run_key({**cfg, "device": "cuda"})  # where it ran does not matter
    b = RunSpec("sg2im", "shapes", "smoke", 0, sets={"method.learning_rate": 2e-4})
    assert run_key(b.config().to_dict()) != run_key(cfg) and b.out_dir() != a.out_dir()
    same = build_run_config("sg2im", "shapes", "smoke", 0, sets={"method.learning_rate": 2e-4}).to_dict()
    assert run_key(same) == run_key(b.config().to_dict())
    assert run_key(RunSpec("sg2im", "shapes", "smoke", 1).config().to_dict()) != run_key(cfg)


def test_expand_checks_every_point_before_submitting(tmp_path: Path) -> None:
    specs = expand(["retrieval", "sg2im"], ["shapes"], [0, 1, 2], "smoke", overrides=[{}, {"eval.num_graphs": 4}])
    assert len(specs) == 12 and len({run_key(s.config().to_dict()) for s in specs}) == 12
    todo, done = pending([RunSpec(**{**s.__dict__, "results": str(tmp_path)}) for s in specs])
    assert len(todo) == 12 and not done
    with pytest.raises(ValueError, match=r"sweep point retrieval/shapes/smoke/s0 method.lr=0.1: .*unknown field 'lr'"):
        expand(["retrieval"], ["shapes"], [0], "smoke", overrides=[{"method.lr": 0.1}])
    with pytest.raises(ValueError, match=r"Valid methods:"):
        expand(["nope"], ["shapes"], [0], "smoke")


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"methods": ["a"], "colour": 1}', r"grid.json: unknown field 'colour'"),
        ('{"seeds": "0,1"}', r"grid.json: field 'seeds' must be a list"),
        ('{"seeds": [0, true]}', r"grid.json: field 'seeds' must be a list of integers"),
        ('{"overrides": [1]}', r"grid.json: field 'overrides' must be a list of objects"),
        ('{"methods": [', r"malformed sweep grid file .*grid.json: line 1"),
        ("[1, 2]", r"grid.json: expected an object"),
    ],
)
def test_bad_grid_files_name_file_and_field(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "grid.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        load_grid(tmp_path / "grid.json")


def test_toml_grid(tmp_path: Path) -> None:
    p = tmp_path / "grid.toml"
    p.write_text('methods = ["sg2im"]\nseeds = [0, 1]\ntier = "smoke"\n[sets]\n"eval.num_graphs" = 16\n')
    assert load_grid(p) == {"methods": ["sg2im"], "seeds": [0, 1], "tier": "smoke", "sets": {"eval.num_graphs": 16}}


def test_slurm_parameters_are_submitit_parameters() -> None:
    from submitit import AutoExecutor
    from submitit.slurm.slurm import SlurmExecutor

    opts = ClusterOptions(partition="gpu", account="proj", timeout_min=90, nodes=2, gpus_per_node=4, max_parallel=8,
                          extra={"constraint": "a100"})  # fmt: skip
    params = executor_parameters("slurm", opts)
    generic, slurm = AutoExecutor._typed_parameters(), SlurmExecutor._valid_parameters()
    assert all(k in generic or (k.startswith("slurm_") and k[6:] in slurm) for k in params), params
    assert params["tasks_per_node"] == params["gpus_per_node"] == 4 and params["nodes"] == 2
    assert params["slurm_partition"] == "gpu" and params["slurm_array_parallelism"] == 8
    assert params["slurm_constraint"] == "a100"
    with pytest.raises(ValueError, match="--nodes must be 1"):
        executor_parameters("submitit-local", opts)


def test_slurm_without_a_cluster_fails_clearly(tmp_path: Path, capsys) -> None:
    args = ["sweep", "--method", "retrieval", "--tier", "smoke", "--executor", "slurm", "--jobs", str(tmp_path),
            "--results", str(tmp_path / "r")]  # fmt: skip
    assert main(args) == 2
    assert "slurm" in capsys.readouterr().err.lower()
