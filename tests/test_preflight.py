"""``run`` checks everything it needs before training (benchmark/preflight.py) and the CLI's argument checks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from benchmark import registry
from benchmark.cli import build_parser, main
from benchmark.config import build_run_config
from benchmark.preflight import PreflightError, check_run, method_needs_pretrained_encoder
from benchmark.results import RunResult, load_result


def test_clip_ddpm_on_4dor_on_an_empty_machine_lists_every_missing_file_and_weight_at_once(tmp_path, capsys,
                                                                                          monkeypatch):
    monkeypatch.setenv("SG2I_DATA_ROOT", str(tmp_path / "data"))
    out = tmp_path / "runs"
    rc = main(["run", "--method", "clip_ddpm", "--dataset", "4dor", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0 and not out.exists()  # nothing was trained
    assert err.startswith("error: run clip_ddpm on 4dor: cannot start; nothing was trained")
    for needed in (
        "relationships_train.json",  # annotations (4D-OR code repository)
        "export_holistic_take1_processed",  # image takes (the dataset download)
        "forms.gle",  # 4D-OR's access form
        "segmentation_export_1",  # the panoptic archive
        "4D-OR_panoptic_segmentations.zip",
        "clip weights for clip_ddpm",  # the text encoder
        "SG2I_CLIP_WEIGHTS",
    ):
        assert needed in err, needed
    # metric weights only inform
    assert "informs only" in err and "inception_score will be recorded as unavailable" in err


def _or4d_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    registry.get("dataset", "4dor").write_fixture(root / "4dor")
    monkeypatch.setenv("SG2I_DATA_ROOT", str(root))
    return root


def test_a_dataset_smaller_than_the_protocol_runs_only_when_allowed_and_is_never_ranked(tmp_path, monkeypatch,
                                                                                        capsys):
    _or4d_fixture(tmp_path, monkeypatch)
    sets = {"eval.num_graphs": 2, "eval.metrics": ("fid",)}
    cfg = build_run_config("retrieval", "4dor", "smoke", device="cpu", sets=sets)
    with pytest.raises(PreflightError, match=r"split sizes differ from the protocol's \(train \d+ of 4,024"):
        check_run(cfg)
    pre = check_run(cfg, allow_partial_data=True)
    assert pre.partial_data and pre.partial_data["train"][1] == 4024
    results = tmp_path / "results"
    argv = ["run", "--method", "retrieval", "--dataset", "4dor", "--tier", "smoke", "--device", "cpu", "--quiet",
            "--out", str(tmp_path / "runs"), "--results", str(results), "--set", "eval.num_graphs=2",
            "--set", "eval.metrics=fid"]  # fmt: skip
    assert main(argv) == 2 and "--allow-partial-data" in capsys.readouterr().err
    assert main([*argv, "--allow-partial-data"]) == 0
    assert "PARTIAL DATA" in capsys.readouterr().err
    (path,) = (results / "runs").glob("*.json")
    result = load_result(path)
    assert result.partial_data == pre.partial_data and result.unranked
    assert RunResult.from_json(result.to_json()).partial_data == result.partial_data
    board = (results / "leaderboard.csv").read_text().splitlines()
    assert len(board) == 1  # the header only: never ranked


def test_random_encoder_weights_only_by_name_and_announced(tmp_path, capsys):
    names = [m for m in registry.names("method") if method_needs_pretrained_encoder(m)]
    assert {"clip_ddpm", "sg2im_clip", "data2vec_ddpm", "sg2im_data2vec"} <= set(names)
    for name in names:
        cfg = build_run_config(name, "shapes", "smoke", device="cpu")
        assert cfg.method_cfg.text_encoder_weights == ""  # no tier falls back to random weights
        with pytest.raises(PreflightError, match="weights"):
            check_run(cfg, train=False)
    cfg = build_run_config("clip_ddpm", "shapes", "smoke", device="cpu",
                           sets={"method.text_encoder_weights": "random"})  # fmt: skip
    from benchmark.preflight import announce

    announce(check_run(cfg, train=False))
    assert "RANDOM weights" in capsys.readouterr().err


def test_cli_rejects_bad_arguments_in_one_line(tmp_path, capsys):
    parser = build_parser()
    for argv in (["run", "--method", "retrieval", "--seed", "-1"], ["generate", "c", "g", "--samples", "0"],
                 ["generate", "c", "g", "--samples", "-2"]):  # fmt: skip
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert "must be >=" in capsys.readouterr().err
    assert main(["run", "--method", "retrieval", "--dataset", "coco"]) == 2
    assert "Did you mean coco_stuff?" in capsys.readouterr().err
    folder = tmp_path / "run_folder"
    folder.mkdir()
    graphs = tmp_path / "g.json"
    graphs.write_text("[]")
    assert main(["generate", str(folder), str(graphs), "--out", str(tmp_path / "img"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "a folder, not a checkpoint file" in err and "no *.safetensors" in err and "Traceback" not in err
    assert main(["eval", str(folder), "--device", "cpu"]) == 2
    assert "a folder, not a checkpoint file" in capsys.readouterr().err
    existing = tmp_path / "a_file"
    existing.write_text("x")
    assert main(["generate", str(folder), str(graphs), "--out", str(existing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a file of that name exists" in err


def test_help_shows_defaults_and_its_examples_are_valid_for_every_method():
    text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()  # type: ignore[union-attr]
    assert "(default: quick)" in text and "(default: shapes)" in text
    assert "method.lr" not in text and "method_cfg" not in text
    for name in registry.names("method"):
        sets = {"train.steps": 100, "eval.num_graphs": 64}
        if name != "retrieval":  # the methods that train share the name of their learning rate
            sets["method.learning_rate"] = 2e-4
        build_run_config(name, "shapes", "smoke", sets=sets)


def test_prepare_prints_its_header_then_the_error_and_never_done(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SG2I_DATA_ROOT", str(tmp_path))
    assert main(["prepare", "4dor"]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("4dor: root ") and "error" not in out and "done" not in out.lower()
    assert err.startswith("error: 4dor is not ready") and "forms.gle" in err and "done" not in err.lower()


def test_files_are_written_with_the_umask(tmp_path):
    from benchmark.io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600
