"""Plug-ins from another installed distribution: entry points in the group ``sg2i_bench.plugins``.

``tests/plugin_pkg`` is a throw-away distribution (a method, a dataset with its data folder, a metric and a text
encoder). It is built and installed with pip into a temporary folder that is put on ``sys.path``, so the
registry finds it through ``importlib.metadata`` exactly as it finds a package installed by a user.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark import registry

REPO = Path(__file__).resolve().parents[1]
PKG = Path(__file__).resolve().parent / "plugin_pkg"
TOY = {"method": "toy_paint", "dataset": "toy_blocks", "metric": "toy_color_gap", "text_encoder": "toy_chars"}


def _forget(site: Path, prefix: str, names: dict[str, str]) -> None:
    sys.path.remove(str(site))
    for mod in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[mod]
    for kind, name in names.items():
        registry._REGISTRY[kind].pop(name, None)
    importlib.invalidate_caches()
    registry.entries.cache_clear()


def _use(site: Path) -> None:
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    registry.entries.cache_clear()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """``pip install --target`` of the toy distribution (built from a copy: pip builds in the source tree)."""
    tmp = tmp_path_factory.mktemp("plugin")
    src, site = tmp / "src", tmp / "site"
    shutil.copytree(PKG, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
           "--no-cache-dir", "--disable-pip-version-check", "--target", str(site), str(src)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _use(site)
    yield site
    _forget(site, "sg2i_toy", TOY)


def test_the_plugin_is_an_installed_distribution_with_an_entry_point(site):
    dist = importlib.metadata.distribution("sg2i-toy-plugin")
    (ep,) = [e for e in dist.entry_points if e.group == registry.PLUGIN_GROUP]
    assert ep.value == "sg2i_toy" and Path(str(dist.locate_file("sg2i_toy/toy_method.py"))).is_file()


def test_registry_lists_plugin_names_and_their_distribution(site):
    table = registry.entries()
    for kind, name in TOY.items():
        entry = table[kind][name]
        assert entry.plugin.startswith("sg2i-toy-plugin") and entry.module.startswith("sg2i_toy.")
        assert Path(entry.path).parent == site / "sg2i_toy"
    assert table["method"]["toy_paint"].family == "toy_paint"
    assert table["method"]["retrieval"].plugin == ""  # the suite's own names are unchanged
    assert "sg2i_toy.toy_method" not in sys.modules  # listed from the source, not imported


def test_ls_lists_plugins_without_importing_them(site):
    code = (
        "import sys; from benchmark.cli import main; main(['ls']); "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert not [m for m in sys.modules if m.startswith('sg2i_toy')], 'plug-in imported'"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(site)])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    for name in TOY.values():
        line = next(x for x in out.stdout.splitlines() if x.split()[:1] == [name])
        assert "[plug-in sg2i-toy-plugin]" in line


def test_plugin_method_dataset_and_metric_run_end_to_end(site, tmp_path):
    from benchmark.config import build_run_config
    from benchmark.results import load_result
    from benchmark.run import run
    from benchmark.train import load_method

    cfg = build_run_config("toy_paint", "toy_blocks", tier="smoke", seed=0, device="cpu")
    assert cfg.eval.metrics == ("toy_color_gap",) and cfg.train.steps == 3  # the plug-in's protocol file
    assert cfg.method_cfg.learning_rate == 0.5  # the plug-in method's smoke tier
    result, path = run(cfg, out=tmp_path / "runs", results_dir=tmp_path / "results", progress=False)
    assert path.parent == tmp_path / "results" / "runs" and load_result(path).family == "toy_paint"
    assert result.method == "toy_paint" and result.family == "toy_paint" and not result.random_init
    (ev,) = result.evaluations
    assert (ev.split, ev.num_graphs, ev.n_generated) == ("test", 6, 12)
    gap = ev.metrics["toy_color_gap"]
    assert gap.value is not None and math.isfinite(gap.value) and gap.higher_is_better is False
    board = (tmp_path / "results" / "leaderboard.csv").read_text(encoding="utf-8")
    assert "toy_paint" in board and "toy_blocks" in board
    method, meta = load_method(result.checkpoint["path"])  # the self-describing checkpoint rebuilds it
    assert type(method).__module__ == "sg2i_toy.toy_method" and meta["method"] == "toy_paint"
    assert [h["step"] for h in result.train_history or []] == [1, 2, 3]  # log_every=1 in the plug-in's smoke tier


def test_plugin_text_encoder_is_usable_by_name(site, tmp_path, monkeypatch):
    from benchmark.text_encoders.base import embedding_table

    monkeypatch.setenv("SG2I_CACHE", str(tmp_path / "cache"))
    table, prov = embedding_table("toy_chars", ["red block", "blue block"])
    assert table.shape == (2, 26) and prov.name == "text_encoder:toy_chars"


def _handwritten_dist(root: Path, name: str, value: str, module_text: str) -> Path:
    """A minimal installed distribution (dist-info with METADATA and entry_points.txt) for the error paths."""
    site = root / name
    (site / f"{name}-0.1.dist-info").mkdir(parents=True)
    (site / f"{name}-0.1.dist-info" / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (site / f"{name}-0.1.dist-info" / "entry_points.txt").write_text(f"[{registry.PLUGIN_GROUP}]\nx = {value}\n")
    (site / f"{name}_mod.py").write_text(module_text)
    return site


def test_plugin_reusing_a_suite_name_stops_with_the_file_and_the_name(tmp_path):
    site = _handwritten_dist(
        tmp_path, "clashing", "clashing_mod",
        'from benchmark.registry import register\n\n\n@register("method", "retrieval")\nclass R:\n    """x"""\n',
    )  # fmt: skip
    _use(site)
    try:
        with pytest.raises(ValueError, match=r"plug-in clashing .*clashing_mod\.py: method 'retrieval' is already"):
            registry.entries()
    finally:
        _forget(site, "clashing_mod", {})


def test_plugin_entry_point_must_name_a_module(tmp_path):
    site = _handwritten_dist(tmp_path, "objref", "objref_mod:thing", "thing = 1\n")
    _use(site)
    try:
        with pytest.raises(ValueError, match=r"plug-in objref \(x = objref_mod:thing\): .*module or package path"):
            registry.entries()
    finally:
        _forget(site, "objref_mod", {})
    site = _handwritten_dist(tmp_path / "b", "missing", "no_such_module", "")
    _use(site)
    try:
        with pytest.raises(ValueError, match=r"plug-in missing .*'no_such_module' not found"):
            registry.entries()
    finally:
        _forget(site, "missing_mod", {})


def test_protocol_of_a_plugin_dataset_is_its_own_data_folder(site):
    from benchmark.protocol import dataset_folder, load_protocol

    assert dataset_folder("toy_blocks") == site / "sg2i_toy" / "datasets" / "toy_blocks"
    assert load_protocol("toy_blocks")["metrics"] == ["toy_color_gap"]
    assert json.loads((dataset_folder("shapes") / "protocol.json").read_text())["dataset"] == "shapes"
