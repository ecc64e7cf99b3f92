"""Tests of the Visual Genome loader and preprocessing (benchmark/data/vg.py, vg_preprocess.py).

Every rule and quirk of google/sg2im ``scripts/preprocess_vg.py`` and ``sg2im/data/vg.py`` is pinned on the
fixture written by ``VgDataset.write_fixture`` (image ids: see ``benchmark.data.fixtures.vg._fixture_images``).
"""

from __future__ import annotations

import json
import random
import shutil
import warnings
from collections import Counter
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from benchmark import registry
from benchmark.batch import collate
from benchmark.data import vg_preprocess as pp
from benchmark.data.fixtures.vg import FIXTURE_CONFIG
from benchmark.data.vg import MAX_OBJECTS, VgDataset, natural_phrase, read_h5
from benchmark.data.vg_preprocess import (
    H5_DATASETS,
    SG2IM_DEFAULTS,
    PreprocessConfig,
    VGDataError,
    image_path_from_url,
    load_aliases,
)
from benchmark.io import sha256_json
from benchmark.paths import assets_dir
from benchmark.protocol import load_protocol

SPLITS = ("train", "val", "test")
RAW_JSON = ("image_data.json", "objects.json", "attributes.json", "relationships.json", "vg_splits.json")
RAW_TEXT = ("object_alias.txt", "relationship_alias.txt")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("vgdata") / "vg"
    VgDataset.write_fixture(r)
    return r


@pytest.fixture(scope="module")
def h5(root: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for split in SPLITS:
        with h5py.File(root / f"{split}.h5", "r") as f:
            out[split] = {k: f[k][()] for k in f}
    return out


@pytest.fixture(scope="module")
def vocab(root: Path) -> dict[str, Any]:
    return json.loads((root / "vocab.json").read_text())


@pytest.fixture(scope="module")
def manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / "manifest.json").read_text())


def _copy(root: Path, dest: Path) -> Path:
    shutil.copytree(root, dest)
    return dest


def _row(h: dict[str, Any], image_id: int) -> int:
    return h["image_ids"].tolist().index(image_id)


def _rels(h: dict[str, Any], vocab: dict[str, Any], image_id: int) -> list[tuple[int, str, int]]:
    r = _row(h, image_id)
    n = int(h["relationships_per_image"][r])
    preds = vocab["pred_idx_to_name"]
    return [
        (int(s), preds[p], int(o))
        for s, p, o in zip(
            h["relationship_subjects"][r, :n],
            h["relationship_predicates"][r, :n],
            h["relationship_objects"][r, :n],
        )
    ]


def _names(h: dict[str, Any], vocab: dict[str, Any], image_id: int) -> list[str]:
    r = _row(h, image_id)
    n = int(h["objects_per_image"][r])
    return [vocab["object_idx_to_name"][i] for i in h["object_names"][r, :n]]


def _item(ds: VgDataset, image_id: int):
    return ds[ds.image_ids.index(str(image_id))]


# --- registry, defaults, protocol ------------------------------------------------------------------------


def test_registry_finds_vg() -> None:
    assert registry.get("dataset", "vg") is VgDataset
    entry = registry.entries()["dataset"]["vg"]
    assert entry.module == "benchmark.data.vg" and "sg2im" in entry.summary


def test_defaults_equal_sg2im() -> None:
    # google/sg2im scripts/preprocess_vg.py argparse defaults (google/sg2im, scripts/preprocess_vg.py).
    sg2im = {
        "min_image_size": 200,
        "train_split": "train",
        "min_object_instances": 2000,
        "min_attribute_instances": 2000,
        "min_object_size": 32,
        "min_objects_per_image": 3,
        "max_objects_per_image": 30,
        "max_attributes_per_image": 30,
        "min_relationship_instances": 500,
        "min_relationships_per_image": 1,
        "max_relationships_per_image": 30,
    }
    assert asdict(PreprocessConfig()) == asdict(SG2IM_DEFAULTS) == sg2im
    assert SG2IM_DEFAULTS.is_sg2im_default and not FIXTURE_CONFIG.is_sg2im_default
    # The fixture lowers the instance thresholds only.
    changed = {f.name for f in fields(PreprocessConfig) if getattr(FIXTURE_CONFIG, f.name) != sg2im[f.name]}
    assert changed == {"min_object_instances", "min_attribute_instances", "min_relationship_instances"}
    # sg2im scripts/train.py VG loader defaults.
    assert MAX_OBJECTS == 10
    assert (pp.EXPECTED_NUM_OBJECTS, pp.EXPECTED_NUM_PREDICATES) == (179, 46)
    assert pp.PAPER_SPLIT_SIZES == {"train": 62565, "val": 5506, "test": 5088}
    with pytest.raises(VGDataError, match="min_object_size"):
        PreprocessConfig.from_dict({"min_objet_size": 3})


def test_protocol() -> None:
    proto = load_protocol("vg")
    assert proto["dataset"] == "vg" and proto["version"] == "1.4"
    assert proto["eval_splits"] == ["test"]
    assert proto["metrics"] == [
        "fid",
        "kid",
        "object_acc_small",
        "inception_score",
        "lpips_diversity",
        "object_acc_resnet",
        "box_recall",
        "clip_score",
    ]
    full = proto["tiers"]["full"]
    assert full["image_size"] == 64 and full["eval"]["samples_per_graph"] == 1
    assert full["eval"]["num_graphs"] >= 10807  # the whole test split
    assert (assets_dir() / "vg" / "README.md").is_file()
    assert not (assets_dir() / "vg" / "vg_splits.json").exists()  # the user supplies sg2im's file


def test_fixture_uses_real_json_layouts(root: Path) -> None:
    images = json.loads((root / "image_data.json").read_text())
    assert set(images[0]) == {"width", "url", "height", "image_id", "coco_id", "flickr_id"}
    objects = json.loads((root / "objects.json").read_text())
    assert set(objects[0]) == {"image_id", "objects", "image_url"}
    assert set(objects[0]["objects"][0]) == {
        "synsets",
        "h",
        "object_id",
        "merged_object_ids",
        "names",
        "w",
        "y",
        "x",
    }
    attrs = json.loads((root / "attributes.json").read_text())
    assert set(attrs[0]) == {"image_id", "attributes"} and "attributes" in attrs[0]["attributes"][0]
    rels = json.loads((root / "relationships.json").read_text())
    r = rels[0]["relationships"][0]
    assert set(r) == {"predicate", "object", "relationship_id", "synsets", "subject"}
    assert "name" in r["subject"] and "names" in r["object"]
    splits = json.loads((root / "vg_splits.json").read_text())
    assert set(splits) == set(SPLITS) and all(isinstance(i, int) for v in splits.values() for i in v)


# --- HDF5 layout and vocabulary --------------------------------------------------------------------------


def test_h5_names_dtypes_shapes(root: Path, h5: dict[str, dict[str, Any]]) -> None:
    for split in SPLITS:
        with h5py.File(root / f"{split}.h5", "r") as f:
            assert sorted(f) == sorted(H5_DATASETS)
            info = h5py.check_string_dtype(f["image_paths"].dtype)
            assert info is not None and info.encoding == "utf-8" and info.length is None  # vlen UTF-8 str
            assert isinstance(f["image_paths"][0], bytes)  # h5py >= 3 returns bytes: the loader decodes them
        h = h5[split]
        n = len(h["image_ids"])
        a = int(h["objects_per_image"].sum())
        shapes = {
            "image_ids": (n,),
            "object_ids": (n, 30),
            "object_names": (n, 30),
            "object_boxes": (n, 30, 4),
            "objects_per_image": (n,),
            "relationship_ids": (n, 30),
            "relationship_subjects": (n, 30),
            "relationship_predicates": (n, 30),
            "relationship_objects": (n, 30),
            "relationships_per_image": (n,),
            "attributes_per_object": (n, 30),
            "object_attributes": (a, 30),
            "image_paths": (n,),
        }
        for k, shape in shapes.items():
            assert h[k].shape == shape, (split, k)
            if k != "image_paths":
                assert h[k].dtype == np.int32, (split, k)
        for r in range(n):  # padding is -1 after the counts
            no, nr = h["objects_per_image"][r], h["relationships_per_image"][r]
            assert (h["object_names"][r, no:] == -1).all() and (h["object_boxes"][r, no:] == -1).all()
            assert (h["attributes_per_object"][r, no:] == -1).all() and (
                h["attributes_per_object"][r, :no] >= 0
            ).all()
            assert (h["relationship_predicates"][r, nr:] == -1).all() and (
                h["relationship_ids"][r, nr:] == -1
            ).all()


def test_vocab_json(vocab: dict[str, Any]) -> None:
    assert list(vocab) == [
        "object_name_to_idx",
        "object_idx_to_name",
        "attribute_name_to_idx",
        "attribute_idx_to_name",
        "pred_name_to_idx",
        "pred_idx_to_name",
    ]
    assert vocab["object_idx_to_name"] == ["__image__", "tree", "dog", "man", "shirt", "tiny", "cat"]
    assert vocab["pred_idx_to_name"] == ["__in_image__", "wearing", "near", "on"]
    assert vocab["attribute_idx_to_name"] == ["tall", "white ", "green", "white"]
    for kind in ("object", "attribute", "pred"):
        assert vocab[f"{kind}_name_to_idx"] == {n: i for i, n in enumerate(vocab[f"{kind}_idx_to_name"])}


def _train_object_counts(root: Path) -> Counter[str]:
    """Reference count: train images >= 200 px, each object once per distinct aliased name."""
    aliases = load_aliases(root / "object_alias.txt")
    images = {i["image_id"]: i for i in json.loads((root / "image_data.json").read_text())}
    train = {
        i
        for i in json.loads((root / "vg_splits.json").read_text())["train"]
        if min(images[i]["height"], images[i]["width"]) >= 200
    }
    counts: Counter[str] = Counter()
    for image in json.loads((root / "objects.json").read_text()):
        if image["image_id"] in train:
            for obj in image["objects"]:
                counts.update(list(dict.fromkeys(aliases.get(n, n) for n in obj["names"])))
    return counts


def test_object_vocab_rules(root: Path, vocab: dict[str, Any], h5: dict[str, dict[str, Any]]) -> None:
    names = vocab["object_idx_to_name"]
    counts = _train_object_counts(root)
    t = FIXTURE_CONFIG.min_object_instances
    # most_common order, threshold inclusive; ties (tiny, cat: 2 each) by first occurrence.
    assert [counts[n] for n in names[1:]] == sorted((counts[n] for n in names[1:]), reverse=True)
    assert counts["tiny"] == counts["cat"] == t and names.index("tiny") < names.index("cat")
    assert set(names[1:]) == {n for n, c in counts.items() if c >= t}
    # Quirk: counted before the size filter: "tiny" is in the vocabulary although no tiny object survives.
    idx = names.index("tiny")
    assert all((h["object_names"] != idx).all() for h in h5.values())
    # An object counts once per distinct aliased name: "hat" + "hats" -> 1 < 2.
    assert counts["hat"] == 1 and "hat" not in names and "hats" not in names
    # No lower-casing of object names: "Tree" stays apart (1 instance).
    assert "Tree" not in names and counts["Tree"] == 1
    # Train only, after the image-size filter; images in no split are ignored.
    for absent in ("rare", "ghost", "phantom", "valonly"):
        assert absent not in names


def test_attribute_vocab_rules(vocab: dict[str, Any]) -> None:
    attrs = vocab["attribute_idx_to_name"]
    # Raw strings (no strip): "white " (3 objects) and "white" (2) are different attributes; " white" has 1.
    assert "white " in attrs and "white" in attrs and " white" not in attrs
    # Each object counts an attribute once: with duplicates, green (17) would come before "white " (3).
    assert attrs.index("white ") < attrs.index("green")
    # Train only, small images dropped first: brown (image 5) and shiny (val) are absent.
    assert "brown" not in attrs and "shiny" not in attrs


def test_object_filter(h5: dict[str, dict[str, Any]], vocab: dict[str, Any]) -> None:
    h = h5["train"]
    r = _row(h, 3)
    # 32 px kept; 31 px wide or high dropped; ["rare", "dog"] -> first name in the vocabulary.
    assert _names(h, vocab, 3) == ["man", "dog", "dog", "shirt"]
    assert h["object_ids"][r, :4].tolist() == [300, 303, 304, 305]
    assert h["object_boxes"][r, :4].tolist() == [
        [0, 0, 32, 32],
        [150, 100, 60, 60],
        [220, 100, 50, 50],
        [10, 150, 40, 40],
    ]
    # ["man", "dog"] -> man (names order); "Tree" and "hat" are dropped (not in the vocabulary).
    assert _names(h, vocab, 2) == ["man", "shirt", "tree"]
    # Kept objects stay in JSON order.
    assert h["object_ids"][_row(h, 1), :3].tolist() == [100, 101, 102]


def test_predicate_rules(
    h5: dict[str, dict[str, Any]], vocab: dict[str, Any], manifest: dict[str, Any]
) -> None:
    train, val, test = h5["train"], h5["val"], h5["test"]
    preds = vocab["pred_idx_to_name"]
    # First-seen order, not frequency: near is far more frequent than wearing.
    freq = Counter(preds[p] for p in train["relationship_predicates"].ravel() if p >= 0)
    assert freq["near"] > freq["on"] > freq["wearing"] and preds[1:] == ["wearing", "near", "on"]
    # Train predicates are lower-cased, stripped, aliased: "Wears " / "WEARS" -> wearing, "  On " -> on.
    assert _rels(train, vocab, 1) == [(0, "wearing", 1), (0, "near", 2)]
    assert _rels(train, vocab, 3) == [(0, "near", 1), (2, "on", 3)]
    # Duplicate relationships are kept; relationships to dropped objects are not.
    assert _rels(train, vocab, 2) == [(0, "wearing", 1), (0, "near", 2), (0, "near", 2)]
    # Counted only with both endpoints kept: "holding" has 2 train relationships, one to a 10 px object.
    assert "holding" not in preds and "behind" not in preds and "ghostrel" not in preds
    # Quirk: val/test predicates are looked up raw: "Wears " and "NEAR" are dropped, "near"/"wearing" kept.
    assert _rels(val, vocab, 20) == [(0, "near", 2)]
    assert _rels(val, vocab, 21) == [(0, "wearing", 1), (0, "near", 2)]
    assert _rels(test, vocab, 30) == [(0, "near", 2), (0, "on", 3)]
    assert 31 not in test["image_ids"].tolist()  # its only relationship is "Wears "
    assert manifest["splits"]["test"]["skipped"] == {"too_few_relationships": 1}


def test_image_and_count_filters(h5: dict[str, dict[str, Any]], manifest: dict[str, Any]) -> None:
    train = h5["train"]
    ids = train["image_ids"].tolist()
    assert 4 in ids  # min side exactly 200 px
    assert 5 not in ids and 22 not in h5["val"]["image_ids"].tolist()  # min side 199 / 150
    assert {s: v["removed_small_images"] for s, v in manifest["splits"].items()} == {
        "train": 1,
        "val": 1,
        "test": 0,
    }
    # 6: 2 objects; 11: 31 objects; 12: 31 relationships; 13: 0 relationships; 10: 30 and 30 are kept.
    assert manifest["splits"]["train"]["skipped"] == {
        "too_few_objects": 1,
        "too_many_objects": 1,
        "too_many_relationships": 1,
        "too_few_relationships": 1,
    }
    for dropped in (6, 11, 12, 13, 99):
        assert dropped not in ids
    r = _row(train, 10)
    assert train["objects_per_image"][r] == 30 and train["relationships_per_image"][r] == 30
    assert manifest["objects_too_small"] > 0


def test_attribute_encoding(h5: dict[str, dict[str, Any]], vocab: dict[str, Any]) -> None:
    h = h5["train"]
    a = vocab["attribute_name_to_idx"]
    starts = np.concatenate([[0], np.cumsum(h["objects_per_image"])])

    def rows(image_id: int) -> np.ndarray:
        r = _row(h, image_id)
        return h["object_attributes"][starts[r] : starts[r + 1]]

    pad = [-1] * 30
    # Image 1: man [tall]; shirt [white, "white "]; tree has an entry without an "attributes" key.
    assert rows(1).tolist() == [[a["tall"]] + [-1] * 29, [a["white"], a["white "]] + [-1] * 28, pad]
    assert h["attributes_per_object"][_row(h, 1), :4].tolist() == [1, 2, 0, -1]
    # Duplicates are kept when encoding (counted once for the vocabulary).
    assert rows(2)[0, :3].tolist() == [a["tall"], a["tall"], -1]
    # 35 listed attributes: the first 30 are kept.
    assert rows(14)[0].tolist() == [a["tall"]] * 20 + [a["green"]] * 10
    assert h["attributes_per_object"][_row(h, 14), 0] == 30
    # Image 7's objects have no attributes.json entry: count 0.
    assert (rows(7) == -1).all() and (h["attributes_per_object"][_row(h, 7), :15] == 0).all()


def test_split_order_and_manifest(
    root: Path, h5: dict[str, dict[str, Any]], manifest: dict[str, Any]
) -> None:
    # Split-file order is kept in the HDF5 (7 comes first in the fixture's split file).
    assert h5["train"]["image_ids"].tolist() == [7, 1, 2, 3, 4, 8, 9, 10, 14, 15]
    for split in SPLITS:
        m = manifest["splits"][split]
        ids = h5[split]["image_ids"].tolist()
        assert m["image_ids_sorted"] == sorted(ids) and m["num_images"] == len(ids)
        assert m["ids_sha256"] == sha256_json(sorted(ids))
        assert m["num_objects"] == int(h5[split]["objects_per_image"].sum())
        ds = VgDataset.build(split, 32, root=root)
        assert ds.split_sha256 == m["ids_sha256"] and ds.split_version == "1.0"
    assert manifest["vocab"]["num_objects"] == 7 and manifest["vocab"]["num_predicates"] == 4
    assert manifest["config"] == asdict(FIXTURE_CONFIG) and manifest["sg2im_defaults"] is False
    assert set(manifest["inputs"]) == set(pp.RAW_FILES) and manifest["missing_images"] == 0


def test_image_paths_and_aliases(root: Path, tmp_path: Path) -> None:
    ds = VgDataset.build("train", 32, root=root)
    assert ds.image_paths[:2] == ["VG_100K_2/7.jpg", "VG_100K_2/1.jpg"] and all(
        isinstance(p, str) for p in ds.image_paths
    )
    assert image_path_from_url("https://cs.stanford.edu/people/rak248/VG_100K/2.jpg") == "VG_100K/2.jpg"
    p = tmp_path / "alias.txt"
    p.write_text("a, b ,c\n\nb,d\n")
    # Tokens stripped, each maps to its line's first token; the last line wins; a blank line maps ''.
    assert load_aliases(p) == {"a": "a", "b": "b", "c": "a", "": "", "d": "b"}


# --- loader ----------------------------------------------------------------------------------------------


def test_item_structure(root: Path) -> None:
    for split in SPLITS:
        ds = VgDataset.build(split, 32, root=root)
        for i in range(len(ds)):
            it = ds[i]
            o = len(it.objs)
            assert it.image is not None and it.image.shape == (3, 32, 32) and it.image.dtype == torch.float32
            assert 0 <= it.image.min() and it.image.max() <= 1
            assert it.masks is None and it.has_layout is not None and it.has_layout.all()
            assert it.objs[-1] == 0 and (it.objs[:-1] > 0).all()  # __image__ last
            assert it.boxes.shape == (o, 4) and it.boxes[-1].tolist() == [0, 0, 1, 1]
            in_image = [t for t in it.triples.tolist() if t[1] == 0]
            assert in_image == [[k, 0, o - 1] for k in range(o - 1)]
            assert it.triples.dtype == torch.long and (it.triples[:, [0, 2]] < o).all()
            assert it.image_id == ds.image_ids[i]


def test_object_sampling_rules(root: Path) -> None:
    ds = VgDataset.build("train", 32, root=root)
    # Quirk: more than max_objects - 1 objects in relationships -> max_objects sampled: 11 nodes.
    for image_id in (7, 10, 15):  # 12, 30 and exactly 10 related objects
        assert len(_item(ds, image_id).objs) == MAX_OBJECTS + 1
    it7 = _item(ds, 7)  # no orphan (its 3 dogs at y = 300 px) is added when sampling
    assert (it7.boxes[:-1, 1] < 300 / 360 - 1e-6).all()
    assert len(_item(ds, 8).objs) == 10  # exactly 9 related: no orphans
    assert len(_item(ds, 9).objs) == 8  # 2 related + all 5 orphans
    assert len(_item(ds, 1).objs) == 4
    # Related objects first (set order), then the orphans.
    it9 = _item(ds, 9)
    names = ds.vocab.object_idx_to_name
    assert [names[i] for i in it9.objs[:2]] == ["man", "tree"]
    assert sorted(names[i] for i in it9.objs[2:-1]) == ["cat", "dog", "dog", "shirt", "shirt"]
    assert len(_item(VgDataset.build("train", 32, root=root, use_orphaned_objects=False), 9).objs) == 3
    assert len(_item(VgDataset.build("train", 32, root=root, max_objects=5), 9).objs) == 5
    assert len(_item(VgDataset.build("train", 32, root=root, max_objects=5), 7).objs) == 6
    no_rel = VgDataset.build("train", 32, root=root, include_relationships=False)
    assert all((no_rel[i].triples[:, 1] == 0).all() for i in range(len(no_rel)))


def test_relationships_reach_the_batch(root: Path) -> None:
    """sg2im issue #6: 0-dim tensors in a set dropped every relationship except __in_image__."""
    ds = VgDataset.build("train", 32, root=root)
    batch = collate([ds[i] for i in range(len(ds))])
    real = batch.triples[batch.triples[:, 1] != 0]
    assert len(real) >= len(ds)
    objs, preds = ds.vocab.object_idx_to_name, ds.vocab.pred_idx_to_name
    named = {(objs[batch.objs[s]], preds[p], objs[batch.objs[o]]) for s, p, o in real.tolist()}
    assert {("man", "wearing", "shirt"), ("man", "near", "tree"), ("dog", "on", "shirt")} <= named


def test_sampling_is_seeded(root: Path) -> None:
    a, b = VgDataset.build("train", 32, root=root), VgDataset.build("train", 32, root=root)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert (
            torch.equal(x.objs, y.objs)
            and torch.equal(x.boxes, y.boxes)
            and torch.equal(x.triples, y.triples)
        )
    i7 = a.image_ids.index("7")
    draws = {tuple(VgDataset.build("train", 32, root=root, seed=s)[i7].objs.tolist()) for s in range(6)}
    assert len(draws) > 1  # another seed, another subsample
    epochs = set()
    for e in range(6):  # another epoch, another subsample; the same epoch, the same one
        a.set_epoch(e)
        epochs.add(tuple(a[i7].objs.tolist()))
        assert torch.equal(a[i7].objs, a[i7].objs)
    assert len(epochs) > 1
    # The rng is used as sg2im uses the global one: random.sample on the same lists.
    assert a.object_indices(i7, random.Random(0)) == b.object_indices(i7, random.Random(0))
    # Worker processes give the same items as the main process.
    loader = torch.utils.data.DataLoader(b, batch_size=None, num_workers=2, collate_fn=lambda it: it)
    ref = VgDataset.build("train", 32, root=root)
    for i, it in enumerate(loader):
        assert torch.equal(it.objs, ref[i].objs) and torch.equal(it.triples, ref[i].triples)
        assert torch.equal(it.image, ref[i].image)


def test_image_resize_and_boxes(root: Path, tmp_path: Path) -> None:
    ds = VgDataset.build("test", 48, root=root)
    i = ds.image_ids.index("33")
    it = ds[i]
    with Image.open(root / "images" / ds.image_paths[i]) as im:
        ref = np.asarray(im.convert("RGB").resize((48, 48), Image.Resampling.BILINEAR))
    assert torch.equal(it.image, torch.from_numpy(ref.copy()).permute(2, 0, 1).float() / 255)
    # A box crossing the border is not clamped: man at x = 250, w = 100 in a 320 px image.
    assert it.boxes[:-1, 2].max().item() == pytest.approx(350 / 320)
    g = ds[ds.image_ids.index("32")].image  # greyscale JPEG -> 3 equal channels
    assert g.shape == (3, 48, 48) and torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    # Boxes are normalised by the size of the image file (WW, HH), not by image_data.json.
    copy = _copy(root, tmp_path / "vg")
    path = copy / "images" / "VG_100K_2" / "1.jpg"
    with Image.open(path) as im:
        im.resize((640, 480)).save(path)
    ds2 = VgDataset.build("train", 32, root=copy)
    it = _item(ds2, 1)
    names = [ds2.vocab.object_idx_to_name[o] for o in it.objs]
    assert it.boxes[names.index("man")].tolist() == pytest.approx([20 / 640, 20 / 480, 120 / 640, 220 / 480])


def test_phrases(root: Path) -> None:
    ds = VgDataset.build("val", 32, root=root)
    objs, preds = ds.phrases()
    assert len(objs) == ds.vocab.num_objects and len(preds) == ds.vocab.num_predicates
    assert objs[0] == "image" and preds[0] == "in image" and "tree" in objs
    assert natural_phrase("in_front_of") == "in front of" and natural_phrase(" White  ") == "white"


# --- errors ----------------------------------------------------------------------------------------------


def test_missing_raw_files_are_listed(tmp_path: Path, root: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        VgDataset.prepare(root=tmp_path / "out", raw=tmp_path / "nothing")
    msg = str(e.value)
    for name in (*RAW_JSON, *RAW_TEXT):
        assert name in msg
    assert "visualgenome.org" in msg and "images.zip" in msg and "sg2im/data/vg_splits.json" in msg
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in (*RAW_JSON, *RAW_TEXT):
        shutil.copy(root / name, raw / name)
    (raw / "objects.json").unlink()
    with pytest.raises(FileNotFoundError) as e:
        VgDataset.prepare(root=tmp_path / "out", raw=raw)
    assert "objects.json" in str(e.value) and "attributes.json" not in str(e.value)


def _raw_copy(root: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in (*RAW_JSON, *RAW_TEXT, "preprocess_options.json"):
        shutil.copy(root / name, dest / name)
    return dest


def test_malformed_inputs_name_the_file(root: Path, tmp_path: Path) -> None:
    raw = _raw_copy(root, tmp_path / "a")
    (raw / "objects.json").write_text('[{"image_id": 1, "objects": [')
    with pytest.raises(ValueError, match=r"objects\.json.*line 1"):
        pp.preprocess(raw, tmp_path / "out", FIXTURE_CONFIG)
    raw = _raw_copy(root, tmp_path / "b")
    rels = json.loads((raw / "relationships.json").read_text())
    del rels[1]["relationships"][0]["subject"]["object_id"]
    (raw / "relationships.json").write_text(json.dumps(rels))
    with pytest.raises(VGDataError, match=r"relationships\.json: malformed .*image_id 2.*object_id"):
        pp.preprocess(raw, tmp_path / "out", FIXTURE_CONFIG)
    raw = _raw_copy(root, tmp_path / "c")
    (raw / "vg_splits.json").write_text(json.dumps({"train": [1, 2], "val": [2], "test": [3]}))
    with pytest.raises(VGDataError, match=r"vg_splits\.json: image id 2 is listed twice"):
        pp.preprocess(raw, tmp_path / "out", FIXTURE_CONFIG)
    (raw / "vg_splits.json").write_text(json.dumps({"train": [1, 424242], "val": [20], "test": [30]}))
    with pytest.raises(VGDataError, match=r"not in image_data\.json \(first: \[424242\]\)"):
        pp.preprocess(raw, tmp_path / "out", FIXTURE_CONFIG)
    (raw / "vg_splits.json").write_text(json.dumps({"train": [1], "val": [20]}))
    with pytest.raises(VGDataError, match=r"lacks split\(s\) \['test'\]"):
        pp.preprocess(raw, tmp_path / "out", FIXTURE_CONFIG)


def test_bad_prepared_files(root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="prepare vg"):
        VgDataset.build("train", 32, root=tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown vg split 'tset'"):
        VgDataset.build("tset", 32, root=root)
    copy = _copy(root, tmp_path / "vg")
    data = (copy / "test.h5").read_bytes()
    (copy / "test.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(VGDataError, match=r"cannot read HDF5 file .*test\.h5"):
        VgDataset.build("test", 32, root=copy)
    with h5py.File(copy / "val.h5", "a") as f:
        del f["relationship_objects"]
    with pytest.raises(VGDataError, match=r"val\.h5 lacks dataset\(s\) \['relationship_objects'\]"):
        read_h5(copy / "val.h5")
    m = json.loads((copy / "manifest.json").read_text())
    m["splits"]["train"]["ids_sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(VGDataError, match=r"train\.h5 does not match .*manifest\.json"):
        VgDataset.build("train", 32, root=copy)


def test_bad_image_files(root: Path, tmp_path: Path) -> None:
    copy = _copy(root, tmp_path / "vg")
    ds = VgDataset.build("val", 32, root=copy)
    path = copy / "images" / ds.image_paths[0]
    path.unlink()
    with pytest.raises(FileNotFoundError, match=f"image file not found: {path}"):
        ds[0]
    path.write_bytes(b"not a jpeg at all")
    with pytest.raises(VGDataError, match=f"cannot read image file {path}"):
        ds[0]
    good = (root / "images" / ds.image_paths[1]).read_bytes()
    path2 = copy / "images" / ds.image_paths[1]
    path2.write_bytes(good[: len(good) // 3])
    with pytest.raises(VGDataError, match=f"cannot read image file {path2}"):
        ds[1]


# --- prepare ---------------------------------------------------------------------------------------------


def test_prepare_reports(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = _copy(root, tmp_path / "vg")
    assert "already prepared" in VgDataset.prepare(root=copy)
    out = tmp_path / "out"
    report = VgDataset.prepare(root=out, raw=copy)  # thresholds from preprocess_options.json
    assert "7 objects" in report and "4 predicates" in report and "non-default thresholds" in report
    assert "MISMATCH" not in report
    ds = VgDataset.build("train", 32, root=out)  # images found through the manifest's image_dir
    assert ds.image_dir == (copy / "images").resolve() and ds[0].image is not None
    only_prepared = tmp_path / "only"
    only_prepared.mkdir()
    for name in ("train.h5", "val.h5", "test.h5", "vocab.json", "manifest.json"):
        shutil.copy(out / name, only_prepared / name)
    assert "checked the prepared files only" in VgDataset.prepare(root=only_prepared, raw=tmp_path / "none")
    from benchmark.cli import main

    assert main(["prepare", "vg", "--raw", str(copy), "--root", str(tmp_path / "cli")]) == 0
    assert "vg: preprocessed" in capsys.readouterr().out


def test_real_thresholds_report_mismatches_loudly(root: Path, tmp_path: Path) -> None:
    """sg2im's thresholds on the tiny fixture: empty vocabularies and splits, flagged against 179 / 46 etc."""
    raw = _raw_copy(root, tmp_path / "raw")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = pp.preprocess(raw, tmp_path / "out", SG2IM_DEFAULTS, image_dir=root / "images")
    assert len(caught) == len(res.problems) and any("expected 179 / 46" in str(w.message) for w in caught)
    report = pp.format_report(res)
    assert report.startswith("!" * 100) and "!! vg MISMATCH" in report
    assert "1 objects / 1 predicates, expected 179 / 46" in report
    assert "split file: train 15 != 86463" in report and "test 0 != 5096" in report
    for split in SPLITS:  # empty splits keep sg2im's shapes and dtypes
        ds = VgDataset.build(split, 32, root=tmp_path / "out", image_dir=root / "images")
        assert len(ds) == 0
        with h5py.File(tmp_path / "out" / f"{split}.h5") as f:
            assert f["object_boxes"].shape == (0, 30, 4) and f["object_boxes"].dtype == np.int32
            assert f["object_attributes"].shape == (0, 30)


# --- training --------------------------------------------------------------------------------------------


def test_retrieval_smoke_training(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmark.config import build_run_config
    from benchmark.seeding import sample_generators
    from benchmark.train import build_dataset, train

    monkeypatch.setenv("SG2I_DATA_ROOT", str(root.parent))
    cfg = build_run_config("retrieval", "vg", "smoke", seed=0, device="cpu")
    assert cfg.image_size == 32 and cfg.eval.splits == ("test",)
    out = train(cfg, tmp_path / "run", progress=False)
    assert out.method.info.name == "vg" and out.method.info.phrases[0] == "image"
    ds = build_dataset("vg", "test", cfg.image_size)
    batch = collate([ds[i] for i in range(len(ds))])
    x = out.method.sample(batch, sample_generators(0, "test", list(range(len(ds))), 0), layout="pred")
    assert x.shape == (len(ds), 3, 32, 32) and 0 <= x.min() and x.max() <= 1
