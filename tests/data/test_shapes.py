"""Tests of the embedded procedural ``shapes`` dataset (benchmark/data/shapes.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark import registry
from benchmark.batch import collate
from benchmark.data import shapes
from benchmark.data.shapes import (
    OBJECT_NAMES,
    PREDICATES,
    SPLITS,
    UNSEEN_COMBINATIONS,
    ShapesDataset,
    generate_scene,
    relation_from_geometry,
    render,
    split_ids,
)
from benchmark.paths import assets_dir
from benchmark.protocol import load_protocol, tier_settings

ASSETS = assets_dir() / "shapes"


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SG2I_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def scenes() -> dict[str, list[shapes.Scene]]:
    return {split: [generate_scene(i) for i in split_ids(split)] for split in SPLITS}


def _erode(m: np.ndarray, border: bool) -> np.ndarray:
    """3x3 binary erosion; cells outside the grid count as ``border``."""
    p = np.pad(m, 1, constant_values=border)
    h, w = m.shape
    return np.all([p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0)


# --- registry, vocabulary, protocol ----------------------------------------------------------------------


def test_registry_finds_shapes() -> None:
    assert registry.get("dataset", "shapes") is ShapesDataset
    entry = registry.entries()["dataset"]["shapes"]
    assert entry.module == "benchmark.data.shapes" and entry.summary


def test_vocab_and_factors() -> None:
    assert OBJECT_NAMES[0] == "__image__" and PREDICATES[0] == "__in_image__"
    assert PREDICATES[1:] == ("left of", "right of", "above", "below", "inside", "surrounding")
    assert len(shapes.SHAPES) >= 4 and len(shapes.COLOURS) == 6
    assert shapes.BACKGROUND not in shapes.COLOURS.values()
    ds = ShapesDataset.build("val", 32)
    factors = ds.object_factors()
    assert len(factors) == ds.vocab.num_objects
    assert factors[0] == ("__image__", "__image__")
    assert factors[OBJECT_NAMES.index("red circle")] == ("red", "circle")
    assert len(set(factors)) == len(factors)
    # One unseen combination per shape, all with different colours.
    unseen = [shapes.object_factors(n) for n in UNSEEN_COMBINATIONS]
    assert sorted(s for _, s in unseen) == sorted(shapes.SHAPES)
    assert len({c for c, _ in unseen}) == len(unseen)
    phrases, pred_phrases = ds.phrases()
    assert phrases[1] == "red circle" and pred_phrases[1] == "left of"


def test_protocol() -> None:
    proto = load_protocol("shapes")
    assert proto["mask_size"] == ShapesDataset.mask_size == 16
    assert proto["eval_splits"] == ["test", "test_unseen"]
    for tier in ("smoke", "quick", "full"):
        t = tier_settings(proto, tier)
        assert t["image_size"] in shapes.IMAGE_SIZES
        for split in proto["eval_splits"]:
            assert t["eval"]["num_graphs"] <= SPLITS[split][2]


# --- generator -------------------------------------------------------------------------------------------


def test_generator_is_deterministic() -> None:
    ids = ["seen-000007", "seen-000123", "unseen-000045"]
    first = [(generate_scene(i), render(generate_scene(i), 64).tobytes()) for i in ids]
    second = [(generate_scene(i), render(generate_scene(i), 64).tobytes()) for i in reversed(ids)][::-1]
    assert first == second
    assert len({img for _, img in first}) == len(ids)
    assert len({sc.to_json().__repr__() for sc, _ in first}) == len(ids)
    # Same pool index in the two pools gives different scenes.
    assert generate_scene("seen-000045").to_json()[1:] != generate_scene("unseen-000045").to_json()[1:]


def test_scene_layout_properties(scenes: dict[str, list[shapes.Scene]]) -> None:
    counts = {p: 0 for p in PREDICATES}
    for sc in scenes["val"] + scenes["test_unseen"]:
        n = len(sc.objs) - 1
        assert 2 <= n <= 5
        assert sc.objs[-1] == 0 and sc.boxes[-1] == (0.0, 0.0, 1.0, 1.0)
        assert 0 not in sc.objs[:-1]
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in sc.boxes[:-1]]
        assert areas == sorted(areas, reverse=True)  # bigger first
        for i in range(n):
            bi = sc.boxes[i]
            assert 0 <= bi[0] < bi[2] <= 1 and 0 <= bi[1] < bi[3] <= 1
            assert bi[2] - bi[0] >= 0.18 - 1e-9
            for j in range(i + 1, n):
                bj = sc.boxes[j]
                overlap = bi[0] < bj[2] and bj[0] < bi[2] and bi[1] < bj[3] and bj[1] < bi[3]
                contained = bi[0] < bj[0] and bj[2] < bi[2] and bi[1] < bj[1] and bj[3] < bi[3]
                assert not overlap or contained, (sc.image_id, i, j)
                if contained:
                    assert bi[2] - bi[0] >= 0.45
                    ci, cj = (shapes.object_factors(OBJECT_NAMES[sc.objs[k]])[0] for k in (i, j))
                    assert ci != cj
                    # The inner box lies within the (convex) container silhouette, not just its box.
                    shape = shapes.object_factors(OBJECT_NAMES[sc.objs[i]])[1]
                    u = (np.array([bj[0], bj[2]]) - bi[0]) / (bi[2] - bi[0])
                    v = (np.array([bj[1], bj[3]]) - bi[1]) / (bi[3] - bi[1])
                    assert shapes._inside_shape(shape, u[None, :], v[:, None]).all(), sc.image_id
        for _, p, _ in sc.triples:
            counts[PREDICATES[p]] += 1
        # One relation per object, then (i, __in_image__, image) for every object (sg2im order).
        assert [t for t in sc.triples[n:]] == [(i, 0, n) for i in range(n)]
        assert all(p != 0 and s != o for s, p, o in sc.triples[:n])
    assert all(counts[p] > 0 for p in PREDICATES), counts


def test_relation_from_geometry_rule() -> None:
    full = np.ones((16, 16))
    big, small = [0.1, 0.1, 0.9, 0.9], [0.3, 0.3, 0.5, 0.5]
    assert relation_from_geometry(big, small, full, full) == "surrounding"
    assert relation_from_geometry(small, big, full, full) == "inside"
    # Touching edges is not strict containment: falls through to the angle rule.
    assert relation_from_geometry([0.3, 0.1, 0.9, 0.9], small, full, full) != "surrounding"
    a, b = [0.0, 0.4, 0.2, 0.6], [0.6, 0.4, 0.8, 0.6]
    assert relation_from_geometry(a, b, full, full) == "left of"
    assert relation_from_geometry(b, a, full, full) == "right of"
    top, bottom = [0.4, 0.0, 0.6, 0.2], [0.4, 0.6, 0.6, 0.8]
    assert relation_from_geometry(top, bottom, full, full) == "above"
    assert relation_from_geometry(bottom, top, full, full) == "below"
    # sg2im's boundaries: theta = pi/4 -> below, -pi/4 -> right of, 3pi/4 -> left of, -3pi/4 -> left of.
    # A one-cell mask at [0, 0] puts the centre exactly on (x0, y0), so the angles are exact.
    corner = np.zeros((16, 16))
    corner[0, 0] = 1
    o = [0.375, 0.375, 0.5, 0.5]
    boundary = {(1, 1): "below", (1, -1): "right of", (-1, 1): "left of", (-1, -1): "left of"}
    for (dx, dy), want in boundary.items():
        s = [0.375 + dx * 0.25, 0.375 + dy * 0.25, 0.5 + dx * 0.25, 0.5 + dy * 0.25]
        cs, co = shapes.mask_centroid(s, corner), shapes.mask_centroid(o, corner)
        assert abs(math.atan2(cs[1] - co[1], cs[0] - co[0])) in (math.pi / 4, 3 * math.pi / 4)
        assert relation_from_geometry(s, o, corner, corner) == want, (dx, dy)
    # The centre is the mask centroid on linspace(x0, x1, M), not the box centre.
    left_half = np.zeros((16, 16))
    left_half[:, :8] = 1
    wide = [0.0, 0.4, 1.0, 0.6]
    assert shapes.mask_centroid(wide, left_half)[0] == pytest.approx(np.linspace(0, 1, 16)[:8].mean())
    assert shapes.mask_centroid(wide, np.zeros((16, 16))) == pytest.approx((0.5, 0.5))  # empty -> box centre
    dot = [0.45, 0.40, 0.55, 0.6]
    assert relation_from_geometry(dot, wide, full, left_half) == "right of"
    as_torch = [torch.tensor(dot), torch.tensor(wide), torch.ones(16, 16), torch.tensor(left_half)]
    assert relation_from_geometry(*as_torch) == "right of"


@pytest.mark.parametrize("size", [32, 64])
def test_items_relations_and_pixels_agree(size: int) -> None:
    ds = ShapesDataset.build("test_unseen", size)
    c = (np.arange(size) + 0.5) / size
    checked = 0
    for idx in range(0, len(ds), 4):
        it = ds[idx]
        n = len(it.objs) - 1
        for s, p, o in it.triples.tolist():
            if p != 0:
                want = relation_from_geometry(it.boxes[s], it.boxes[o], it.masks[s], it.masks[o])
                assert PREDICATES[p] == want, (it.image_id, s, p, o)
        img = (it.image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        for i in range(n):
            x0, y0, x1, y1 = it.boxes[i].tolist()
            colour = np.array(shapes.COLOURS[shapes.object_factors(OBJECT_NAMES[it.objs[i]])[0]])
            jx, iy = np.nonzero((c >= x0) & (c <= x1))[0], np.nonzero((c >= y0) & (c <= y1))[0]
            u = np.clip(((c[jx] - x0) / (x1 - x0) * 16).astype(int), 0, 15)
            v = np.clip(((c[iy] - y0) / (y1 - y0) * 16).astype(int), 0, 15)
            mask = it.masks[i].numpy() > 0.5
            # Cells whose 3x3 neighbourhood is uniform: the (convex) shape's colour must be there exactly.
            sure_in = _erode(mask, border=False)[v[:, None], u[None, :]]
            sure_out = _erode(~mask, border=True)[v[:, None], u[None, :]]
            free = np.ones((len(iy), len(jx)), dtype=bool)
            for k in range(i + 1, n):  # drawn on top
                a0, b0, a1, b1 = it.boxes[k].tolist()
                free &= ~(((c[iy] >= b0) & (c[iy] <= b1))[:, None] & ((c[jx] >= a0) & (c[jx] <= a1))[None, :])
            has = (img[iy[:, None], jx[None, :]] == colour).all(-1)
            assert has[sure_in & free].all() and not has[sure_out & free].any(), (it.image_id, i)
            assert (sure_in & free).sum() > 0
            checked += 1
        # Background elsewhere.
        covered = np.zeros((size, size), dtype=bool)
        for x0, y0, x1, y1 in it.boxes[:-1].tolist():
            covered |= ((c >= y0) & (c <= y1))[:, None] & ((c >= x0) & (c <= x1))[None, :]
        assert (img[~covered] == np.array(shapes.BACKGROUND)).all()
    assert checked > 100


def test_32_and_64_show_the_same_scene() -> None:
    a, b = ShapesDataset.build("val", 32), ShapesDataset.build("val", 64)
    for i in range(0, len(a), 8):
        x, y = a[i], b[i]
        assert x.image_id == y.image_id
        assert (
            torch.equal(x.objs, y.objs)
            and torch.equal(x.boxes, y.boxes)
            and torch.equal(x.triples, y.triples)
        )
        colours = [
            {tuple(px) for px in (it.image * 255).round().int().flatten(1).T.tolist()} for it in (x, y)
        ]
        assert colours[0] == colours[1]


# --- splits ----------------------------------------------------------------------------------------------


def test_committed_files_match_generator(tmp_path: Path) -> None:
    written = shapes.write_split_files(tmp_path)
    assert {p.relative_to(tmp_path).as_posix() for p in written} == {
        "vocab.json",
        *(f"splits/{s}.json" for s in SPLITS),
    }
    for path in written:
        rel = path.relative_to(tmp_path)
        assert (ASSETS / rel).read_bytes() == path.read_bytes(), f"committed {rel} differs from the generator"


def test_split_files_content(scenes: dict[str, list[shapes.Scene]]) -> None:
    import json

    for split, (_, _, n) in SPLITS.items():
        meta = json.loads((ASSETS / "splits" / f"{split}.json").read_text())
        assert meta["ids"] == split_ids(split) and meta["num_images"] == n == len(set(meta["ids"]))
        assert meta["version"] == "1.0" and meta["generator_version"] == shapes.GENERATOR_VERSION
        assert meta["annotations_sha256"] == shapes.annotations_sha256(scenes[split])
    assert [len(v) for v in scenes.values()] == [4000, 256, 512, 512]


def test_splits_disjoint_and_unseen_property(scenes: dict[str, list[shapes.Scene]]) -> None:
    ids = {s: set(split_ids(s)) for s in SPLITS}
    for s in SPLITS:
        for t in SPLITS:
            if s < t:
                assert not ids[s] & ids[t], (s, t)
    unseen = {OBJECT_NAMES.index(n) for n in UNSEEN_COMBINATIONS}
    for split in ("train", "val", "test"):
        assert all(not unseen & set(sc.objs) for sc in scenes[split]), split
    assert all(unseen & set(sc.objs) for sc in scenes["test_unseen"])
    # The seen splits cover all 20 seen combinations; test_unseen covers all 4 unseen ones.
    seen_used = {o for sc in scenes["train"] for o in sc.objs[:-1]}
    assert seen_used == set(range(1, len(OBJECT_NAMES))) - unseen
    assert unseen <= {o for sc in scenes["test_unseen"] for o in sc.objs}


# --- dataset, cache, errors ------------------------------------------------------------------------------


def test_item_shapes_and_dtypes() -> None:
    ds = ShapesDataset.build("val", 32)
    assert len(ds) == 256 and ds.split == "val" and ds.image_size == 32 and ds.split_version == "1.0"
    assert ds.split_sha256 == shapes.split_sha256(split_ids("val"))
    it = ds[0]
    o, t = len(it.objs), len(it.triples)
    assert it.image.shape == (3, 32, 32) and it.image.dtype == torch.float32
    assert 0 <= float(it.image.min()) and float(it.image.max()) <= 1
    assert it.objs.dtype == torch.int64 and it.objs[-1] == 0
    assert it.boxes.shape == (o, 4) and it.boxes.dtype == torch.float32
    assert torch.equal(it.boxes[-1], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert it.masks.shape == (o, 16, 16) and it.masks.dtype == torch.float32 and bool(it.masks[-1].all())
    assert set(it.masks.unique().tolist()) <= {0.0, 1.0}
    assert it.triples.shape == (t, 3) and it.triples.dtype == torch.int64 and t == 2 * (o - 1)
    assert it.has_layout.dtype == torch.bool and bool(it.has_layout.all())
    assert it.image_id == "seen-004000" and ds[-1].image_id == "seen-004255"
    with pytest.raises(IndexError):
        ds[256]
    batch = collate([ds[i] for i in range(4)])
    assert batch.images.shape == (4, 3, 32, 32) and batch.image_ids == split_ids("val")[:4]
    assert torch.equal(batch.split()[2].triples, ds[2].triples)


def test_cache_reused_and_truncated_cache_regenerated(monkeypatch: pytest.MonkeyPatch) -> None:
    first = ShapesDataset.build("val", 32)
    path = shapes.cache_path("val", 32)
    assert path.is_file()
    original = shapes._generate

    def fail(*args: object, **kwargs: object) -> float:
        raise AssertionError("regenerated although the cache is valid")

    monkeypatch.setattr(shapes, "_generate", fail)
    second = ShapesDataset.build("val", 32)
    assert torch.equal(first[5].image, second[5].image)

    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    calls = []

    def counting(*args: object, **kwargs: object) -> float:
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(shapes, "_generate", counting)
    with pytest.warns(UserWarning, match=r"val_32\.npz"):
        third = ShapesDataset.build("val", 32)
    assert len(calls) == 1 and torch.equal(first[5].image, third[5].image)
    assert path.read_bytes() == data  # regenerated file is byte-identical

    path.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="corrupt"):
        assert torch.equal(ShapesDataset.build("val", 32)[5].image, first[5].image)


def test_prepare_report(monkeypatch: pytest.MonkeyPatch) -> None:
    # Restrict to the small splits so the test stays fast: prepare iterates over SPLITS.
    small = {k: v for k, v in shapes.SPLITS.items() if k != "train"}
    monkeypatch.setattr(shapes, "SPLITS", small)
    report = ShapesDataset.prepare()
    assert "test_unseen" in report and "generated" in report and "1280 images" in report
    for split in small:
        for size in (32, 64):
            assert shapes.cache_path(split, size).is_file()
    assert "cached" in ShapesDataset.prepare() and "generated" not in ShapesDataset.prepare()


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match="32, 64"):
        ShapesDataset.build("val", 48)
    with pytest.raises(ValueError, match="test_unseen"):
        ShapesDataset.build("testing", 32)
    with pytest.raises(ValueError, match="invalid shapes image id"):
        generate_scene("seen-12")
    with pytest.raises(TypeError, match="max_samples"):
        ShapesDataset.build("val", 32, max_samples=3)


def test_generator_change_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shapes, "SEED", shapes.SEED + 1)
    with pytest.raises(RuntimeError, match="generator changed"):
        ShapesDataset.build("val", 32)
    assert not shapes.cache_path("val", 32).exists()
