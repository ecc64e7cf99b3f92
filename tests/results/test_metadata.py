"""Declared metric facts (registry keyword arguments), their recording in every result, and the fallback that
fills them in schema-1 files (benchmark/registry.py, benchmark/evaluate.py, benchmark/results/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark import registry
from benchmark.evaluate import score
from benchmark.interfaces import Metric
from benchmark.results import load_result, producer

REPO = Path(__file__).resolve().parents[2]
METRICS = registry.names("metric")


@pytest.mark.parametrize("name", METRICS)
def test_declared_facts_parse_without_imports_and_match_the_class(name: str) -> None:
    entry = registry.entries()["metric"][name]
    assert entry.outputs and all(isinstance(v, bool) for v in entry.outputs.values()) and entry.mode
    cls = registry.get("metric", name)
    assert cls.outputs == entry.outputs and cls.mode == entry.mode
    assert cls().unavailable == {}  # initialised by the interface
    for key in entry.outputs:
        assert producer(key) == (name, entry.mode)


def test_non_literal_or_missing_facts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keyword 'mode'"):
        registry.register("metric", "t_no_mode", outputs={"x": True})
    src = tmp_path / "m.py"
    src.write_text('@register("metric", "t_bad", outputs=OUTPUTS, mode="m")\nclass M: ...\n')
    import ast

    with pytest.raises(ValueError, match=rf"{src}:1: @register keyword 'outputs' must be a literal"):
        registry._decorator_names(ast.parse(src.read_text()), str(src))


class _Const(Metric):
    def compute(self, inputs: object) -> dict[str, float | None]:
        self.unavailable["t_const_b"] = "nothing to measure"
        return {"t_const_a": 0.25, "t_const_b": None}


def test_values_record_the_metric_and_its_mode() -> None:
    registry.register("metric", "t_const", outputs={"t_const_a": True, "t_const_b": False}, mode="constant, test")(_Const)
    try:
        values, _ = score(None, ("t_const",))  # type: ignore[arg-type]
    finally:
        registry._REGISTRY["metric"].pop("t_const")
    a, b = values["t_const_a"], values["t_const_b"]
    assert (a.value, a.higher_is_better, a.metric, a.mode) == (0.25, True, "t_const", "constant, test")
    assert (b.value, b.unavailable, b.metric, b.mode) == (None, "nothing to measure", "t_const", "constant, test")
    assert json.loads(json.dumps(a.to_json()))["mode"] == "constant, test"


def test_schema_1_files_get_the_facts_from_the_registry() -> None:
    path = next((REPO / "results" / "runs").glob("learned_ddpm__*.json"))
    assert json.loads(path.read_text())["schema_version"] == "1"
    r = load_result(path)
    m = r.evaluations[0].metrics
    assert (m["is"].metric, m["is"].mode) == ("inception_score", registry.entries()["metric"]["inception_score"].mode)
    assert m["box_recall@0.5"].metric == "box_recall" and m["fid"].mode.startswith("clean-fid")
    assert r.schema_version == "1" and r.config_changes is None
