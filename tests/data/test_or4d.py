"""Tests of the 4D-OR loader (benchmark/data/or4d.py) on its fixture in the real on-disk format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark import registry
from benchmark.batch import collate
from benchmark.data import or4d
from benchmark.data.fixtures import or4d as or4d_fixture
from benchmark.data.fixtures.or4d import FIXTURE_TAKES, fixture_color_index
from benchmark.data.or4d import (
    ANNOTATION_FILES,
    DEFAULT_CAMERA,
    EXPECTED_SIZES,
    LAYOUT_EXPORT,
    LAYOUT_INTERPOLATED,
    LAYOUT_NONE,
    OBJECT_NAMES,
    PREDICATES,
    SOURCE_CLASSES,
    SOURCE_PREDICATES,
    TAKE_SPLIT,
    VOCAB,
    Or4dDataset,
    layout_from_label_map,
    parse_relationships,
    resolve,
)
from benchmark.protocol import load_protocol, tier_settings
from benchmark.scene_graph import SceneGraphError

OBJ, PRED = VOCAB.object_name_to_idx, VOCAB.pred_name_to_idx


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SG2I_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "4dor"
    Or4dDataset.write_fixture(r)
    return r


def _names(objs: torch.Tensor) -> list[str]:
    return [OBJECT_NAMES[o] for o in objs.tolist()]


def _item(ds: Or4dDataset, sample_id: str):
    return ds[ds.image_ids.index(sample_id)]


def _edit_scans(root: Path, split: str, edit) -> Path:
    path = root / "data" / ANNOTATION_FILES[split]
    data = json.loads(path.read_text())
    edit(data["scans"])
    path.write_text(json.dumps(data, indent=2))
    return path


# --- registry, vocabulary, protocol ----------------------------------------------------------------------


def test_registry_finds_4dor() -> None:
    assert registry.get("dataset", "4dor") is Or4dDataset
    entry = registry.entries()["dataset"]["4dor"]
    assert entry.module == "benchmark.data.or4d" and entry.summary


def test_vocabulary_sizes_and_natural_phrases(root: Path) -> None:
    assert len(SOURCE_CLASSES) == 12 and len(SOURCE_PREDICATES) == 14
    # 12 source classes: six human_k replaced by 4 roles + "person" -> 11 node names, + __image__.
    assert VOCAB.num_objects == 12 and VOCAB.num_predicates == 15
    assert OBJECT_NAMES[0] == "__image__" and PREDICATES[0] == "__in_image__"
    assert "none" not in PREDICATES and not any(n.startswith("human_") for n in OBJECT_NAMES)
    objs, preds = Or4dDataset.build("val", 32, root=root).phrases()
    for name in ("head surgeon", "assistant surgeon", "circulating nurse", "anaesthetist", "patient",
                 "anesthesia equipment", "operating table", "person"):  # fmt: skip
        assert name in objs
    for name in ("lying on", "close to", "holding", "touching"):
        assert name in preds
    assert objs == tuple(n.strip("_").replace("_", " ") for n in OBJECT_NAMES)


def test_protocol() -> None:
    proto = load_protocol("4dor")
    assert proto["version"] == "1.4" and proto["eval_splits"] == ["test"] and proto["mask_size"] == 16
    assert (
        proto["metrics"]
        == [
            "fid",
            "kid",
            "object_acc_small",
            "inception_score",
            "lpips_diversity",
            "object_acc_resnet",
            "box_recall",
            "clip_score",
        ]
        and proto["camera"] == DEFAULT_CAMERA
    )
    full = tier_settings(proto, "full")
    assert full["image_size"] == 64 and full["eval"]["samples_per_graph"] == 1
    assert full["eval"]["num_graphs"] == EXPECTED_SIZES["test"]
    assert {tier_settings(proto, t)["image_size"] for t in ("smoke", "quick", "full")} <= set(
        or4d.IMAGE_SIZES
    )
    assert (
        EXPECTED_SIZES == {"train": 4024, "val": 1332, "test": 1378} and sum(EXPECTED_SIZES.values()) == 6734
    )


# --- the fixture follows the real format -----------------------------------------------------------------


def test_fixture_files_in_exact_real_format(root: Path) -> None:
    data = root / "data"
    assert (data / "classes.txt").read_text() == "\n".join(SOURCE_CLASSES)
    assert (data / "relationships.txt").read_text() == "\n".join(SOURCE_PREDICATES)
    for split in ANNOTATION_FILES.values():
        text = (data / split).read_text()
        parsed = json.loads(text)
        assert text == json.dumps(parsed, indent=2) and not text.endswith("\n")
        for scan in parsed["scans"]:
            assert list(scan) == ["take_idx", "scan", "objects", "relationships", "human_idx_to_name"]
            assert len(scan["scan"]) == 6 and scan["scan"].isdigit()
            assert list(scan["objects"]) == [str(i) for i in range(1, len(scan["objects"]) + 1)]
            assert list(scan["objects"].values()) == sorted(scan["objects"].values())
            for s, o, p_idx, p_name in scan["relationships"]:
                assert (
                    SOURCE_PREDICATES[p_idx] == p_name
                    and str(s) in scan["objects"]
                    and str(o) in scan["objects"]
                )
    dummy = json.loads((data / "relationships_test_dummy.json").read_text())
    assert all(list(s) == ["take_idx", "scan"] for s in dummy["scans"])
    frames = json.loads(
        (root / "export_holistic_take1_processed" / "timestamp_to_pcd_and_frames_list.json").read_text()
    )
    assert frames[3][1]["pcd"] == "000003" and set(frames[3][1]) >= {f"color_{c}" for c in range(1, 7)}


# --- splits, image paths, scene graphs -------------------------------------------------------------------


def test_split_by_take(root: Path) -> None:
    for split, takes in FIXTURE_TAKES.items():
        ds = Or4dDataset.build(split, 32, root=root)
        found = {int(i.split("/")[0].removeprefix("take")) for i in ds.image_ids}
        assert found == set(takes) and found <= set(TAKE_SPLIT[split])
        assert len(ds) == 4 * len(takes) and ds.split_version == "1.0"
        assert ds.split_sha256 == or4d.sha256_json(sorted(ds.image_ids))
        assert ds.image_ids == sorted(ds.image_ids, key=or4d._order_key)  # evaluation order: hash of the id
    assert set().union(*TAKE_SPLIT.values()) == set(range(1, 11))


def test_scan_in_wrong_split_is_an_error(root: Path) -> None:
    path = _edit_scans(root, "val", lambda scans: scans[1].update(take_idx=1))
    with pytest.raises(
        SceneGraphError,
        match=r"relationships_validation\.json: scan take1/000003: take 1 belongs to split 'train'",
    ):
        Or4dDataset.build("val", 32, root=root)
    assert path.name in str(path)


def test_image_path_resolved_through_timestamp_list(root: Path) -> None:
    res = resolve(root, "train", camera=2)
    smp = next(s for s in res.samples if s.id == "take3/000005")
    assert (
        smp.image
        == root
        / "export_holistic_take3_processed"
        / "colorimage"
        / f"camera02_colorimage-{fixture_color_index(5, 2)}.jpg"
    )
    # The list entry, not the scan number, decides: point scan 5 of take 3 at scan 1's image.
    lst_path = root / "export_holistic_take3_processed" / "timestamp_to_pcd_and_frames_list.json"
    lst = json.loads(lst_path.read_text())
    lst[5][1]["color_2"] = lst[1][1]["color_2"]
    lst_path.write_text(json.dumps(lst))
    smp = next(s for s in resolve(root, "train", camera=2).samples if s.id == "take3/000005")
    assert smp.image.name == f"camera02_colorimage-{fixture_color_index(1, 2)}.jpg"


def test_camera_choice(root: Path) -> None:
    a, b = Or4dDataset.build("test", 32, root=root), Or4dDataset.build("test", 32, root=root, camera=5)
    assert a.camera == 1 and b.camera == 5 and b.split_version == "1.0+camera5" and a.image_ids == b.image_ids
    assert not torch.equal(a[0].image, b[0].image)
    c = Or4dDataset.build("test", 32, root=root, camera=3)  # no panoptic exports for camera 3
    assert not any(c[i].has_layout[:-1].any() for i in range(len(c)))


def test_relationships_roles_and_triples(root: Path) -> None:
    ds = Or4dDataset.build("train", 32, root=root)
    it = _item(ds, "take1/000003")  # objects Patient, human_0 (head-surgeon), instrument, tables
    names = _names(it.objs)
    assert names == ["patient", "head surgeon", "instrument", "instrument table", "operating table",
                     "secondary table", "__image__"]  # fmt: skip
    rels = {(names[s], VOCAB.pred_idx_to_name[p], names[o]) for s, p, o in it.triples.tolist()}
    assert {("patient", "lying on", "operating table"), ("head surgeon", "operating", "patient"),
            ("head surgeon", "holding", "instrument")} <= rels  # fmt: skip
    in_image = [t for t in it.triples.tolist() if t[1] == PRED["__in_image__"]]
    assert in_image == [[i, 0, 6] for i in range(6)] and len(it.triples) == 3 + 6
    # human_1 has role 'none' -> person; human_2's role entry has no object and is ignored.
    it = _item(ds, "take1/000007")
    assert _names(it.objs) == ["patient", "assistant surgeon", "person", "operating table", "__image__"]
    it = _item(ds, "take1/000001")  # no relationships at all
    assert _names(it.objs)[-1] == "__image__" and len(it.triples) == len(it.objs) - 1


def test_human_without_role_entry_is_a_person(root: Path) -> None:
    path = _edit_scans(root, "train", lambda scans: scans[1]["human_idx_to_name"].clear())
    scans, notes = parse_relationships(path, "train")
    assert [OBJECT_NAMES[o] for o in scans[1].objs][1] == "person"
    assert notes["humans without a role entry (named 'person')"] == 1


def test_none_relationships_skipped_and_counted(root: Path) -> None:
    path = _edit_scans(root, "train", lambda scans: scans[1]["relationships"].append([2, 1, 14, "none"]))
    scans, notes = parse_relationships(path, "train")
    assert len(scans[1].triples) == 3 and notes["relationships labelled 'none' (skipped)"] == 1


# --- layout ----------------------------------------------------------------------------------------------


def test_bounding_box_and_mask_from_panoptic_label_map() -> None:
    lm = np.zeros((30, 40), dtype=np.uint8)  # any resolution: boxes are normalised by the map's size
    lm[3:9, 10:30] = 5  # patient: rows 3..8, cols 10..29
    lm[12:30, 0:8] = 10  # head surgeon, an L shape: a column plus a foot
    lm[26:30, 8:16] = 10
    lm[20:22, 30:32] = 28  # two secondary tables in one scan: ambiguous
    objs = [
        OBJ[n]
        for n in (
            "patient",
            "head surgeon",
            "instrument",
            "operating table",
            "secondary table",
            "secondary table",
        )
    ]
    boxes, masks, has = layout_from_label_map(lm, objs)
    assert has.tolist() == [True, True, False, False, False, False]
    np.testing.assert_allclose(boxes[0], [10 / 40, 3 / 30, 30 / 40, 9 / 30], rtol=1e-6)
    np.testing.assert_allclose(boxes[1], [0, 12 / 30, 16 / 40, 1], rtol=1e-6)
    assert masks[0].all() and masks.shape == (6, 16, 16) and masks.dtype == np.uint8
    assert masks[1][:, :8].all() and masks[1][-3:, :].all() and not masks[1][:10, 8:].any()
    assert (boxes[2:] == [0, 0, 1, 1]).all() and not masks[2:].any()  # placeholders


def test_has_layout_flags_and_boxes_on_fixture(root: Path) -> None:
    ds = Or4dDataset.build("train", 64, root=root)
    src = dict(zip(ds.image_ids, ds.layout_sources().tolist()))
    # Take 1: scans k=0..3 -> (k + 1) % 3 = 1, 2, 0, 1: interpolated, none, export, interpolated.
    assert [src[f"take1/{2 * k + 1:06d}"] for k in range(4)] == [
        LAYOUT_INTERPOLATED,
        LAYOUT_NONE,
        LAYOUT_EXPORT,
        LAYOUT_INTERPOLATED,
    ]
    none = _item(ds, "take1/000003")
    assert none.has_layout.tolist() == [False] * 6 + [True]
    assert (none.boxes[:-1] == torch.tensor([0.0, 0.0, 1.0, 1.0])).all() and not none.masks[:-1].any()
    it = _item(
        ds, "take1/000007"
    )  # patient, assistant surgeon, person, operating table (interpolated export)
    assert it.has_layout.tolist() == [True, True, False, True, True]
    x0, y0, x1, y1 = or4d_fixture._FIXTURE_BOXES["patient"]
    w, h = 64, 48
    expected = [round(x0 * w) / w, round(y0 * h) / h, round(x1 * w) / w, round(y1 * h) / h]
    torch.testing.assert_close(it.boxes[0], torch.tensor(expected))
    assert it.masks[0].all() and it.masks[-1].all() and (it.boxes[-1] == torch.tensor([0.0, 0, 1, 1])).all()
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch.has_layout.dtype == torch.bool and batch.images.shape == (8, 3, 64, 64)
    assert 0 <= batch.images.min() and batch.images.max() <= 1 and batch.masks.shape[1:] == (16, 16)


# --- bad inputs ------------------------------------------------------------------------------------------


def test_missing_files_are_named_with_how_to_get_them(root: Path, tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"relationships_train\.json[\s\S]*github\.com/egeozsoy/4D-OR"
    ):
        Or4dDataset.build("train", 32, root=tmp_path / "empty")
    img = (
        root
        / "export_holistic_take2_processed"
        / "colorimage"
        / f"camera01_colorimage-{fixture_color_index(3, 1)}.jpg"
    )
    img.unlink()
    with pytest.raises(FileNotFoundError, match=rf"missing image \(1\): {img}[\s\S]*forms\.gle"):
        Or4dDataset.build("test", 32, root=root)
    (root / "export_holistic_take6_processed" / "timestamp_to_pcd_and_frames_list.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"take6_processed/timestamp_to_pcd_and_frames_list\.json"):
        Or4dDataset.build("test", 32, root=root)


def test_malformed_json_names_the_file(root: Path) -> None:
    path = root / "data" / ANNOTATION_FILES["test"]
    path.write_text(path.read_text()[:-20])
    with pytest.raises(ValueError, match=rf"malformed 4D-OR relationships file {path}"):
        Or4dDataset.build("test", 32, root=root)


def test_unknown_names_name_the_scan(root: Path) -> None:
    _edit_scans(root, "train", lambda scans: scans[0]["objects"].update({"2": "instrumnet"}))
    with pytest.raises(
        SceneGraphError, match=r"scan take1/000001: objects\['2'\]: unknown object 'instrumnet'.*'instrument'"
    ):
        Or4dDataset.build("train", 32, root=root)
    _edit_scans(root, "train", lambda scans: scans[0]["objects"].update({"2": "instrument"}))
    _edit_scans(root, "train", lambda scans: scans[1]["relationships"].append([1, 2, 3, "Closeto"]))
    with pytest.raises(
        SceneGraphError, match=r"scan take1/000003: relationships\[3\]: unknown predicate 'Closeto'"
    ):
        Or4dDataset.build("train", 32, root=root)
    _edit_scans(root, "train", lambda scans: scans[1]["relationships"].pop())
    _edit_scans(root, "train", lambda scans: scans[1]["human_idx_to_name"].update(human_0="surgeon"))
    with pytest.raises(
        SceneGraphError, match=r"scan take1/000003: human_idx_to_name\['human_0'\]: unknown role 'surgeon'"
    ):
        Or4dDataset.build("train", 32, root=root)
    _edit_scans(root, "train", lambda scans: scans[1].update(human_idx_to_name={"human_0": "head-surgeon"}))
    _edit_scans(root, "train", lambda scans: scans[1]["relationships"].append([9, 1, 3, "CloseTo"]))
    with pytest.raises(SceneGraphError, match=r"scan take1/000003: relationships\[3\]: subject key 9"):
        Or4dDataset.build("train", 32, root=root)


def test_corrupt_image_and_label_map_are_named(root: Path) -> None:
    img = (
        root
        / "export_holistic_take4_processed"
        / "colorimage"
        / f"camera01_colorimage-{fixture_color_index(1, 1)}.jpg"
    )
    img.write_bytes(img.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"corrupt or unreadable image {img}"):
        Or4dDataset.build("val", 32, root=root)
    img.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=rf"corrupt or unreadable image {img}"):
        Or4dDataset.build("val", 32, root=root)
    Image.new("RGB", (64, 48)).save(img)
    seg = (
        root
        / "export_holistic_take4_processed"
        / "segmentation_export_1"
        / f"camera01_colorimage-{fixture_color_index(5, 1)}.png"
    )
    Image.new("I;16", (64, 48)).save(seg)
    with pytest.raises(ValueError, match=rf"label map {seg} has PNG mode"):
        Or4dDataset.build("val", 32, root=root)
    Image.new("L", (64, 64)).save(seg)
    with pytest.raises(ValueError, match="different aspect ratios"):
        Or4dDataset.build("val", 32, root=root)


def test_bad_arguments(root: Path) -> None:
    with pytest.raises(ValueError, match="valid splits: train, val, test"):
        Or4dDataset.build("validation", 32, root=root)
    with pytest.raises(ValueError, match="32, 64, 128"):
        Or4dDataset.build("val", 48, root=root)
    with pytest.raises(ValueError, match="valid cameras"):
        Or4dDataset.build("val", 32, root=root, camera=7)
    with pytest.raises(TypeError, match="max_samples"):
        Or4dDataset.build("val", 32, root=root, max_samples=3)
    ds = Or4dDataset.build("val", 32, root=root)
    with pytest.raises(IndexError):
        ds[len(ds)]


# --- cache, prepare, manifests ---------------------------------------------------------------------------


def test_cache_reused_and_rebuilt_when_files_change(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = Or4dDataset.build("val", 32, root=root)
    with monkeypatch.context() as m:
        m.setattr(or4d, "_decode", lambda *a: pytest.fail("decoded although the cache is valid"))
        second = Or4dDataset.build("val", 32, root=root)
    assert torch.equal(first[0].image, second[0].image)
    img = (
        root
        / "export_holistic_take4_processed"
        / "colorimage"
        / f"camera01_colorimage-{fixture_color_index(1, 1)}.jpg"
    )
    Image.new("RGB", (64, 48), (255, 255, 255)).save(img)
    os.utime(img, ns=(1, 1))
    with pytest.warns(UserWarning, match="stale"):
        third = Or4dDataset.build("val", 32, root=root)
    assert third[third.image_ids.index("take4/000001")].image.min() > 0.95
    path = or4d.cache_path(root, "val", 1, 32)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.warns(UserWarning, match="corrupt"):
        Or4dDataset.build("val", 32, root=root)


def test_prepare_reports_counts_coverage_and_writes_manifests(root: Path, tmp_path: Path) -> None:
    target = tmp_path / "prepared"
    with pytest.warns(UserWarning) as caught:
        report = Or4dDataset.prepare(root=target, raw=root)
    assert [str(w.message).split(" where ")[1] for w in caught] == [
        "4D-OR has 4024",
        "4D-OR has 1332",
        "4D-OR has 1378",
    ]
    assert "linked from" in report and (target / "data").is_symlink()
    assert "MISMATCH: expected 4024" in report and "1: 4/766" in report
    assert "test  layout: 5/8 samples with an export (2 interpolated)" in report and "patient 3/4" in report
    man = json.loads((target / "manifests" / "test.json").read_text())
    assert (
        man["ids"] == sorted(man["ids"]) and man["num_samples"] == 8 and man["expected_num_samples"] == 1378
    )
    assert man["sha256"] == Or4dDataset.build("test", 32, root=target).split_sha256
    # The manifest freezes the split: a changed annotation file is refused until prepare runs again.
    _edit_scans(root, "test", lambda scans: scans.pop())
    with pytest.raises(ValueError, match="differ from the split manifest"):
        Or4dDataset.build("test", 32, root=target)


def test_prepare_names_what_is_missing(root: Path) -> None:
    (root / "data" / ANNOTATION_FILES["val"]).unlink()
    for p in (root / "export_holistic_take6_processed").rglob("*"):
        if p.is_file():
            p.unlink()
    with pytest.warns(UserWarning), pytest.raises(FileNotFoundError) as e:
        Or4dDataset.prepare(root=root)
    msg = str(e.value)
    assert (
        "relationships_validation.json" in msg
        and "take6_processed/timestamp_to_pcd_and_frames_list.json" in msg
    )
    assert "forms.gle" in msg and "train     8 scans" in msg and "test      8 scans" in msg
    # Manifests only for splits with every file present.
    assert (root / "manifests" / "train.json").is_file() and not (root / "manifests" / "test.json").exists()


# --- end to end ------------------------------------------------------------------------------------------


def test_retrieval_smoke_training_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmark.config import build_run_config
    from benchmark.seeding import sample_generators
    from benchmark.train import build_dataset, train

    monkeypatch.setenv("SG2I_DATA_ROOT", str(tmp_path / "raw"))
    Or4dDataset.write_fixture(tmp_path / "raw" / "4dor")
    cfg = build_run_config("retrieval", "4dor", "smoke", seed=0, device="cpu")
    out = train(cfg, tmp_path / "run", progress=False)
    assert out.method.info.name == "4dor" and out.method.info.phrases[3] == "head surgeon"
    assert out.method.images.shape == (8, 3, cfg.image_size, cfg.image_size)
    ds = build_dataset("4dor", "test", cfg.image_size)
    x = out.method.sample(collate([ds[i] for i in range(3)]), sample_generators(0, "test", [0, 1, 2], 0))
    assert x.shape == (3, 3, cfg.image_size, cfg.image_size) and 0 <= x.min() and x.max() <= 1
