"""benchmarks/device_check.py: the CPU tiny mode runs every section and writes one JSON; CUDA mode on a GPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _device_check():
    spec = importlib.util.spec_from_file_location("device_check", REPO / "benchmarks" / "device_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_device_check_tiny_cpu(tmp_path):
    out = tmp_path / "check.json"
    report = _device_check().main(["--dry-run", "--out", str(out), "--work", str(tmp_path / "work")])
    assert json.loads(out.read_text())["device"] == "cpu" == report["device"]
    for name in ("attention", "throughput", "metric_agreement", "runs"):
        assert report[name]["ok"], (name, report[name].get("error"), report[name].get("trace"))
    assert any("scaled_dot_product" in k for k in report["attention"]["result"]["self_attention"])
    tp = report["throughput"]["result"]
    for key in ("sg2im/fp32", "sg2im/bf16", "learned_ddpm/fp32", "learned_ddpm/bf16"):
        assert tp[key]["img_per_s"] > 0 and tp[key]["peak_rss_gib"] > 0, (key, tp[key])
    assert tp["learned_ddpm/bf16"]["accel"]["precision"] == "bf16"
    assert "skipped" in tp["learned_ddpm/bf16+compile"]
    agree = report["metric_agreement"]["result"]
    assert agree["abs_diff"]["test/fid"] == 0.0  # CPU against CPU: the same numbers
    assert agree["inception_bf16"]["fid_fp32"] > 0
    runs = report["runs"]["result"]
    assert all(runs[k]["ok"] for k in ("sg2im/smoke", "minilm_ddpm/smoke")), runs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available (the device check's GPU mode)")
def test_device_check_cuda_tiny(tmp_path):
    report = _device_check().main(["--device", "cuda", "--tiny", "--out", str(tmp_path / "c.json"),
                                   "--work", str(tmp_path / "w"), "--skip", "runs"])
    assert report["throughput"]["ok"] and report["attention"]["ok"] and report["metric_agreement"]["ok"]
    assert "peak_allocated_gib" in report["throughput"]["result"]["learned_ddpm/bf16"]
