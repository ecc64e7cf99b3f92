"""benchmarks/side_by_side.py: the figures a side-by-side pair reports."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

# benchmarks/ is not an installed package: load the file itself, as tests/test_device_check.py does.
_spec = importlib.util.spec_from_file_location(
    "side_by_side", Path(__file__).resolve().parents[1] / "benchmarks" / "side_by_side.py"
)
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
format_table, summarize = _mod.format_table, _mod.summarize


def test_summarize_ratio_of_medians_and_per_round_range():
    out = summarize([2.0, 3.0, 2.4], [1.0, 2.0, 2.0], items=32)
    assert out["peer_s_median"] == 2.4 and out["ours_s_median"] == 2.0
    assert out["ratio_peer_over_ours"] == pytest.approx(1.2)
    assert out["ratio_of_minima"] == pytest.approx(2.0)
    # per round: 2.0, 1.5, 1.2
    assert (out["ratio_round_min"], out["ratio_round_median"], out["ratio_round_max"]) == pytest.approx(
        (1.2, 1.5, 2.0)
    )
    assert out["rounds"] == 3 and out["ours_items_per_s"] == pytest.approx(16.0)


@pytest.mark.parametrize("peer,ours", [([], []), ([1.0], [1.0, 2.0])])
def test_summarize_rejects_unpaired_timings(peer, ours):
    with pytest.raises(ValueError, match="paired"):
        summarize(peer, ours)


def test_format_table_fits_120_columns_and_keeps_every_figure():
    out = summarize([2.2, 2.5], [2.0, 1.9])
    label = "UNet training step (iDDPM 9.9M, 32 px, batch 32, fp32)"
    rows = format_table([(label, "diffusers UNet2DModel", out, 2)])
    assert all(len(r) <= 120 for r in rows), max(map(len, rows))
    assert rows[1].startswith(label) and "2.350" in rows[1] and "1.950" in rows[1]
    assert f"{out['ratio_peer_over_ours']:.2f}" in rows[1] and f"{out['ratio_of_minima']:.2f}" in rows[1]
    assert rows[2] == "  vs diffusers UNet2DModel, 2 threads"


def test_format_table_puts_a_long_label_on_its_own_line():
    label = "minilm_ddpm quick sampling, 50 steps, 16 images: off vs box guidance, a long label"
    rows = format_table([(label, "guidance off", summarize([1.0], [2.0]), 2)])
    assert rows[1] == label and rows[2].split() == ["1.000", "2.000", "0.50", "0.50", "0.50-0.50", "1"]
    assert all(len(r) <= 120 for r in rows)
