"""Tests of benchmark/reproduce.py: a recorded smoke run re-run from its result file alone, bit for bit on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.config import build_run_config
from benchmark.reproduce import compare, preflight, run_config_of
from benchmark.results import RunResult, load_result
from benchmark.run import run


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, Path]:
    """A trained (smoke-tier) SG2Im run: GAN training, layout noise, discriminators, optimizer states."""
    tmp = tmp_path_factory.mktemp("recorded")
    cfg = build_run_config("sg2im", "shapes", "smoke", seed=3, device="cpu", sets={"eval.num_graphs": 8})
    return run(cfg, tmp / "runs", tmp / "results", progress=False)


def test_reproduce_a_smoke_run_exactly(recorded: tuple[RunResult, Path], tmp_path: Path, capsys) -> None:
    rec, path = recorded
    assert main(["reproduce", str(path), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "verdict: exact" in out and "differs" not in out
    assert "checkpoint tensors_sha256" in out and "test/pred fid" in out
    (new_path,) = (tmp_path / "again" / "results" / "runs").glob("*.json")
    new = load_result(new_path)
    assert new.checkpoint is not None and rec.checkpoint is not None
    assert new.checkpoint["tensors_sha256"] == rec.checkpoint["tensors_sha256"]
    as_json = lambda c: json.loads(json.dumps(c))  # noqa: E731  (tuples in memory, lists in the file)
    assert as_json(new.config) == as_json({**rec.config, "device": "cpu"}) and new.run_id != rec.run_id
    rows = compare(rec, new)
    assert rows and all(r.verdict == "exact" for r in rows)
    # the folder now holds a checkpoint: a second reproduction into it would resume, not reproduce
    assert main(["reproduce", str(path), "--out", str(tmp_path / "again"), "--quiet"]) == 2
    assert "trains from scratch" in capsys.readouterr().err


def test_compare_flags_a_changed_metric_and_digest(recorded: tuple[RunResult, Path]) -> None:
    rec, _ = recorded
    d = json.loads(json.dumps(rec.to_json()))
    d["evaluations"][0]["metrics"]["fid"]["value"] += 1e-9
    d["checkpoint"]["tensors_sha256"] = "0" * 64
    rows = {r.what: r.verdict for r in compare(rec, RunResult.from_json(d))}
    split = rec.evaluations[0].split
    assert rows[f"{split}/pred fid"] == "differs" and rows["checkpoint tensors_sha256"] == "differs"
    assert sum(v == "differs" for v in rows.values()) == 2
    (fid,) = [r for r in compare(rec, RunResult.from_json(d)) if r.what == f"{split}/pred fid"]
    assert 0 < float(fid.rel_diff) < 1e-9


def test_preflight_warns_about_commit_protocol_and_config(recorded: tuple[RunResult, Path]) -> None:
    rec, _ = recorded
    d = json.loads(json.dumps(rec.to_json()))
    d["environment"]["git_commit"] = "f" * 40
    d["protocol"]["version"] = "0.1"
    d["config"]["method_cfg"]["retired_option"] = 1
    d["environment"]["packages"]["torch"] = "0.4.0"
    d["environment"]["platform"] = "another-machine"
    old = RunResult.from_json(d)
    cfg, unknown = run_config_of(old, "cpu")
    assert unknown == ["method.retired_option"] and cfg.method_cfg == rec_cfg(rec)
    warnings: list[str] = []
    preflight(old, cfg, unknown, warnings.append)
    text = "\n".join(warnings)
    assert "recorded at commit ffffffffffff" in text and "protocol shapes is now version" in text
    assert "retired_option" in text and "torch 0.4.0 -> " in text and "'platform' differs" in text


def rec_cfg(rec: RunResult):
    return run_config_of(rec, "cpu")[0].method_cfg
