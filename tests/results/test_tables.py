"""Leaderboard tables (benchmark/results/tables.py, groups.py): width, ranking, the ± rule, variant labels
against the tier's defaults, off-protocol rows, and the committed results printed by the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from benchmark import cli
from benchmark.results import (
    MetricValue,
    RunResult,
    SplitEvaluation,
    fmt_mean_std,
    format_tables,
    group_runs,
    producer,
    tier_defaults,
    views,
)

REPO = Path(__file__).resolve().parents[2]
SHA = "ab" * 32
DEFAULTS = tier_defaults("learned_ddpm", "shapes", "smoke")


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in flat.items():
        *path, last = k.split(".")
        d = out
        for p in path:
            d = d.setdefault(p, {})
        d[last] = list(v) if isinstance(v, tuple) else v
    return out


def run(seed: int = 0, fid: float = 100.0, acc: float = 0.5, split: str = "test", **sets: Any) -> RunResult:
    """A learned_ddpm shapes smoke result whose config is the tier's default config with ``sets`` applied;
    config_changes is left unrecorded, so the labels are computed against the tier's defaults."""
    assert DEFAULTS is not None
    cfg = nested({**DEFAULTS, "seed": seed, **sets})
    metrics = {
        "fid": MetricValue(fid, False, None, *producer("fid")),
        "object_acc_small": MetricValue(acc, True, None, *producer("object_acc_small")),
        "sg_consistency": MetricValue(acc / 2, True, None, *producer("sg_consistency")),
        "clip_score": MetricValue(None, True, "no CLIP weights", *producer("clip_score")),
        "box_recall@0.3": MetricValue(0.25, True, None, *producer("box_recall@0.3")),
        "box_recall@0.5": MetricValue(0.125, True, None, *producer("box_recall@0.5")),
    }
    return RunResult(
        method="learned_ddpm", dataset="shapes", tier="smoke", seed=seed, image_size=cfg["image_size"],
        protocol={"version": "1.1", "sha256": SHA}, splits={split: {"version": "1.0", "sha256": SHA}}, config=cfg,
        evaluations=[SplitEvaluation(split, cfg["eval"]["layout"], 8, 1, 8, 8, metrics, 0.1)],
        environment={"git_commit": "c" * 40}, timings={"train_s": 1.0, "sample_s": 1.0, "eval_s": 1.0, "total_s": 3.0},
    )  # fmt: skip


def test_cells_show_plus_minus_only_with_two_seeds() -> None:
    assert fmt_mean_std(123.456789, None) == "123.5" and fmt_mean_std(None, None) == "-"
    assert fmt_mean_std(0.123456, 0.0123456) == "0.1235 ± 0.012"
    one, two = group_runs([run(0, 100.0)]), group_runs([run(0, 100.0), run(1, 110.0)])
    rows = [line for line in format_tables(one).splitlines() if line[:1].isdigit()]
    assert len(rows) == 1 and "±" not in rows[0]
    assert "105 ± 7.1" in format_tables(two)


def test_rows_ranked_by_the_first_primary_metric_best_marked() -> None:
    runs = [
        run(fid=120.0, acc=0.9),
        run(fid=90.0, acc=0.4, **{"method_cfg.guidance_scale": 2.0}),
        run(fid=150.0, acc=0.2, **{"method_cfg.guidance_scale": 3.0}),
    ]
    (view,) = views(group_runs(runs))
    assert view.header[:6] == ["#", "method", "seeds", "fid ↓", "kid ↓", "object_acc_small ↑"][:3] + [
        "fid ↓", "object_acc_small ↑", "sg_consistency ↑"
    ]  # the protocol's primary metrics first, in its order (kid is absent here)
    assert [r[0] for r in view.rows] == ["1", "2", "3"]
    assert [r[3] for r in view.rows] == ["90*", "120", "150"]  # lower FID ranks first, best marked
    assert view.rows[1][4] == "0.9*"  # best of a higher-is-better column
    assert any("Unavailable in every row: clip_score" in n for n in view.notes)
    assert not any("clip_score" in h for h in view.header)


def test_variant_labels_are_differences_from_the_tier_defaults() -> None:
    default, guided = run(), run(seed=1, **{"method_cfg.guidance_scale": 2.0, "eval.layout": "pred"})
    alone = {g.variant for g in group_runs([default])}
    together = {g.seeds: g.variant for g in group_runs([default, guided])}
    assert alone == {""} and together == {(0,): "", (1,): "method.guidance_scale=2.0"}  # not relative to rows
    recorded = run(**{"method_cfg.sampler": "ddim"}).model_copy(update={"config_changes": {"method_cfg.sampler": "x"}})
    assert group_runs([recorded])[0].variant == "method.sampler=x"  # a recorded label wins over today's defaults


def test_off_protocol_budget_is_labelled_and_never_ranked() -> None:
    runs = [run(fid=120.0), run(fid=50.0, **{"train.steps": 200})]
    groups = group_runs(runs)
    off = next(g for g in groups if g.flags)
    assert off.flags == ("off-protocol",) and off.variant == "train.steps=200"
    (view,) = views(groups)
    ranks = {r[1]: r[0] for r in view.rows}
    assert ranks["learned_ddpm"] == "1" and ranks["learned_ddpm (train.steps=200) †"] == "-"
    assert [r[3] for r in view.rows] == ["120", "50"]  # the better off-protocol FID is not marked best
    assert any(n.startswith("† not ranked: off-protocol") for n in view.notes)


def test_tables_fit_the_width_and_fold_long_labels() -> None:
    runs = [run(seed=s, fid=100.0 + s, **{"method_cfg.guidance_scale": 1.0 + s / 3, "method_cfg.sample_steps": 7 + s,
                                          "method_cfg.sampler": "dpmsolver++"}) for s in range(6)]  # fmt: skip
    runs += [run(seed=s, fid=80.0 + s, split="test_unseen") for s in range(3)]
    text = format_tables(group_runs(runs), width=120)
    assert max(len(line) for line in text.splitlines()) <= 120
    assert "\n[a] method.sample_steps=7\n" in text  # guidance 1.0 and dpmsolver++ are the tier's defaults
    assert "\n[b] method.guidance_scale=1.3333333333333333, method.sample_steps=8\n" in text
    narrow = format_tables(group_runs(runs), width=70)
    assert "Not shown for width: box_recall@0.3, box_recall@0.5" in narrow and "sg_consistency ↑" in narrow


def test_leaderboard_of_the_committed_results_fits_120_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(REPO / "results", tmp_path / "results")
    assert cli.main(["leaderboard", "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 120
    assert "shapes / test · quick tier · 32 px · pred layout" in out and "Published numbers" in out
    assert out.index("fid ↓") < out.index("object_acc_small ↑")
    # the committed per-run CSV is what the committed run files rebuild to
    assert (tmp_path / "results" / "leaderboard.csv").read_text() == (REPO / "results" / "leaderboard.csv").read_text()


def test_a_result_written_before_a_field_existed_groups_with_the_fields_default() -> None:
    new = run(seed=1, fid=110.0).model_copy(update={"config_changes": {}})
    old_cfg = nested({k: v for k, v in {**DEFAULTS, "seed": 0}.items() if not k.startswith("method_cfg.guidance_")})
    old = run(seed=0).model_copy(update={"config": old_cfg, "config_changes": None})
    changed = {"method_cfg.guidance": "scenegenie"}
    guided = run(seed=0, **changed).model_copy(update={"config_changes": changed})
    groups = group_runs([old, new, guided])
    assert sorted((g.seeds, g.variant) for g in groups) == [((0,), "method.guidance=scenegenie"), ((0, 1), "")]


@pytest.mark.parametrize(
    ("method", "version"),
    [("minilm_ddpm", "1.1"), ("minilm_ddpm", "1.2"), ("sg2im", "1.1"), ("sg2im", "1.2"), ("sg2im", "1.3")],
)
def test_results_of_an_earlier_protocol_are_labelled_against_its_recipe(method: str, version: str) -> None:
    """A quick-tier result written under an earlier protocol without recorded changes is measured against that
    version's recipe (``Method.tier_history``): its defaults give no label there, and the same config stamped
    with the current version is labelled with every field the recipe changed."""
    from benchmark import registry
    from benchmark.config import historical_overrides
    from benchmark.protocol import load_protocol
    from benchmark.results.groups import run_changes

    old = tier_defaults(method, "shapes", "quick", version=version)
    new = tier_defaults(method, "shapes", "quick")
    assert old is not None and new is not None
    recipe = historical_overrides(registry.get("method", method).tier_history, "quick", version)
    changed = {k for k in new if old[k] != new[k]}
    assert changed and all(k.startswith("method_cfg.") or k.startswith("train.") for k in changed)
    current = load_protocol("shapes")["version"]
    assert current != version and recipe  # the recipe moved on with the protocol version

    def result(version: str) -> RunResult:
        r = run()
        return RunResult(**{**r.__dict__, "method": method, "tier": "quick", "config": nested(old),
                            "protocol": {"version": version, "sha256": SHA}})  # fmt: skip

    assert run_changes(result(version)) == {}
    assert set(run_changes(result(current))) == changed


@pytest.mark.parametrize(("method", "version"), [("learned_ddpm", "1.3"), ("minilm_ddpm", "1.3")])
def test_a_recipe_unchanged_since_an_earlier_protocol_gives_no_label(method: str, version: str) -> None:
    """The diffusion quick recipe did not change from 1.3 to the current protocol: a 1.3 result run with it
    has no config changes, without a ``tier_history`` entry for 1.3."""
    from benchmark import registry
    from benchmark.config import historical_overrides
    from benchmark.results.groups import run_changes

    assert historical_overrides(registry.get("method", method).tier_history, "quick", version) is None
    cfg = tier_defaults(method, "shapes", "quick")
    assert cfg is not None and tier_defaults(method, "shapes", "quick", version=version) == cfg
    r = run()
    r = RunResult(**{**r.__dict__, "method": method, "tier": "quick", "config": nested(cfg),
                     "protocol": {"version": version, "sha256": SHA}})  # fmt: skip
    assert run_changes(r) == {}
