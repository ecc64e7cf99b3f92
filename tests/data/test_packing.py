"""Tests of the packing module every dataset stores its splits with (benchmark/data/packing.py)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmark import registry
from benchmark.data.packing import (
    PACKED_KEYS,
    PackedDataset,
    cached,
    check_image_array,
    check_index,
    check_packed,
    pack,
    read_npz,
    split_sha256,
    write_image_array,
    write_npz,
)
from benchmark.interfaces import SceneGraphDataset
from benchmark.io import sha256_json

M = 4


def _graphs() -> dict[str, list[Any]]:
    """Two graphs (2 objects + 1 triple, 3 objects + 0 triples) in the per-graph form ``pack`` takes."""
    rng = np.random.default_rng(0)
    return {
        "objs": [[3, 0], [1, 2, 0]],
        "boxes": [rng.random((2, 4)), rng.random((3, 4))],
        "masks": [rng.integers(0, 2, (2, M, M)), rng.integers(0, 2, (3, M, M))],
        "triples": [[(0, 1, 1)], []],
        "has_layout": [[True, True], [False, True, True]],
    }


class _Tiny(PackedDataset):
    name = "tiny"

    def __init__(self, arrays: dict[str, np.ndarray], ids: list[str]) -> None:
        self._a, self.image_ids, self.split = arrays, ids, "val"

    @classmethod
    def build(cls, split: str, image_size: int, root: Path | None = None, **kwargs: Any) -> _Tiny:
        raise NotImplementedError

    @classmethod
    def prepare(cls, root: Path | None = None, raw: Path | None = None) -> str:
        return ""

    @classmethod
    def write_fixture(cls, root: Path) -> None:
        pass


def test_pack_layout_and_items() -> None:
    g = _graphs()
    a = pack(g["objs"], g["boxes"], g["masks"], g["triples"], M, has_layout=g["has_layout"])
    assert a["obj_ptr"].tolist() == [0, 2, 5] and a["triple_ptr"].tolist() == [0, 1, 1]
    assert a["objs"].dtype == np.int64 and a["boxes"].dtype == np.float32 and a["masks"].dtype == np.uint8
    assert a["triples"].shape == (1, 3) and a["has_layout"].dtype == bool
    check_packed(a, 2, M)
    images = np.arange(2 * 3 * 2 * 2, dtype=np.uint8).reshape(2, 3, 2, 2)
    ds = _Tiny({**a, "images": images}, ["a", "b"])
    it = ds[-1]
    assert it.image_id == "b" and torch.equal(it.objs, torch.tensor([1, 2, 0]))
    assert torch.equal(it.boxes, torch.from_numpy(g["boxes"][1].astype(np.float32)))
    assert torch.equal(it.masks, torch.from_numpy(g["masks"][1]).float())
    assert it.triples.shape == (0, 3) and it.has_layout.tolist() == [False, True, True]
    assert torch.equal(it.image, torch.from_numpy(images[1]).float() / 255)
    assert ds[0].triples.tolist() == [[0, 1, 1]]
    without = {k: v for k, v in a.items() if k != "has_layout"}
    assert bool(_Tiny({**without, "images": images}, ["a", "b"])[1].has_layout.all())
    with pytest.raises(IndexError, match="tiny val"):
        ds[2]


def test_pack_of_no_graphs_and_inconsistent_arrays() -> None:
    a = pack([], [], [], [], M)
    assert a["boxes"].shape == (0, 4) and a["masks"].shape == (0, M, M) and a["triples"].shape == (0, 3)
    check_packed(a, 0, M)
    g = _graphs()
    b = pack(g["objs"], g["boxes"], g["masks"], g["triples"], M)
    with pytest.raises(ValueError, match="inconsistent"):
        check_packed(b, 3, M)
    with pytest.raises(ValueError, match="inconsistent"):
        check_packed({**b, "boxes": b["boxes"][:-1]}, 2, M)


def test_npz_round_trip_and_damage(tmp_path: Path) -> None:
    g = _graphs()
    a = pack(g["objs"], g["boxes"], g["masks"], g["triples"], M)
    path = tmp_path / "x.npz"
    write_npz(path, a, {"version": "1", "size": 32})
    back, meta = read_npz(path, PACKED_KEYS)
    assert meta == {"version": "1", "size": 32} and all(np.array_equal(back[k], a[k]) for k in PACKED_KEYS)
    with pytest.raises(ValueError, match=r"missing arrays \['images'\]"):
        read_npz(path, (*PACKED_KEYS, "images"))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="unreadable"):
        read_npz(path, PACKED_KEYS)


def test_cached_builds_once_and_rebuilds_damaged_files(tmp_path: Path) -> None:
    built: list[list[int]] = []

    def build(todo: list[int]) -> dict[int, tuple[dict[str, np.ndarray], dict[str, Any]]]:
        built.append(list(todo))
        return {s: ({"x": np.full(s, s)}, {"size": s}) for s in todo}

    def read(path: Path, s: int) -> dict[str, np.ndarray]:
        a, meta = read_npz(path, ("x",))
        if meta != {"size": s}:
            raise ValueError("stale")
        return a

    def run() -> tuple[dict[Any, dict[str, np.ndarray]], float | None]:
        return cached((2, 3), lambda s: tmp_path / f"{s}.npz", read, build, tmp_path / ".lock", "tiny")

    out, seconds = run()
    assert built == [[2, 3]] and seconds is not None and out[3]["x"].tolist() == [3, 3, 3]
    out, seconds = run()
    assert built == [[2, 3]] and seconds is None and out[2]["x"].tolist() == [2, 2]
    (tmp_path / "3.npz").write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match=r"tiny: cache file .*3\.npz is corrupt or stale"):
        out, _ = run()
    assert built[-1] == [3] and out[3]["x"].tolist() == [3, 3, 3]
    with pytest.raises(RuntimeError, match="does not read back"):
        cached((4,), lambda s: tmp_path / f"{s}.npz", read, lambda todo: {4: ({"x": 0}, {"size": 5})},
               tmp_path / ".lock", "tiny")  # fmt: skip


def test_image_array_round_trip(tmp_path: Path) -> None:
    images = [np.full((3, 8, 8), k, dtype=np.uint8) for k in range(3)]
    path = tmp_path / "images" / "x_8.npy"
    write_image_array(path, iter(images), 3, 8)
    check_image_array(path, 3, 8)
    assert np.array_equal(np.load(path), np.stack(images)) and list(path.parent.iterdir()) == [path]
    with pytest.raises(ValueError, match="has shape"):
        check_image_array(path, 4, 8)
    with pytest.raises(ValueError, match="image cache"):
        check_image_array(tmp_path / "missing.npy", 3, 8)


def test_split_sha256_and_index() -> None:
    assert split_sha256(["10", "9"]) == sha256_json(["10", "9"])  # strings sort as strings
    assert split_sha256([10, 9]) == sha256_json([9, 10])  # VG's integer ids numerically
    assert split_sha256(["b", "a"]) == split_sha256(["a", "b"])
    assert check_index(-1, 3, "x") == 2 and check_index(0, 3, "x") == 0
    with pytest.raises(IndexError, match=r"index -4 out of range for x \(3 images\)"):
        check_index(-4, 3, "x")


@pytest.mark.parametrize("name", registry.names("dataset"))
def test_every_dataset_writes_its_fixture(name: str) -> None:
    cls = registry.get("dataset", name)
    assert issubclass(cls, SceneGraphDataset) and not inspect.isabstract(cls)
    assert not getattr(cls.write_fixture, "__isabstractmethod__", False)
