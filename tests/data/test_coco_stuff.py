"""Tests of the COCO-Stuff loader (benchmark/data/coco_stuff.py) on its fixture in the real on-disk format.

Each filter rule of google/sg2im ``sg2im/data/coco.py`` is pinned on a fixture image that it keeps or drops;
``test_identical_to_sg2im_transcription`` compares every item with a straight transcription of sg2im's
``CocoSceneGraphDataset`` (scikit-image resize, global ``random``) seeded the same way.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark import registry
from benchmark.batch import collate
from benchmark.data import coco_format as cf
from benchmark.data import coco_stuff as cs
from benchmark.data.coco_format import crop_to_box, mask_centres, predicate, resize_mask
from benchmark.data.coco_stuff import OBJECT_NAMES, PREDICATES, RELATION_SEED, SPLITS, CocoStuffDataset
from benchmark.data.fixtures.coco_stuff import FIXTURE_KEPT
from benchmark.io import read_json
from benchmark.paths import assets_dir
from benchmark.protocol import load_protocol

ASSETS = assets_dir() / "coco_stuff"
EXPECTED_IDS = {
    "train": ["9", "25", "30", "36", "42", "61"],
    "val": ["632", "139"],
    "test": ["1296", "724", "1000", "1268"],
    "train_lostgan": ["9", "25", "30", "36", "42", "61"],
    "test_lostgan": ["632", "139", "885", "1296", "724", "1268", "1353"],
}


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco") / "coco_stuff"
    CocoStuffDataset.write_fixture(root)
    CocoStuffDataset.prepare(root=root)
    return root


@pytest.fixture
def fresh_root(fixture_root: Path, tmp_path: Path) -> Path:
    """A private copy of the raw fixture (without the prepared folder), for tests that damage it."""
    root = tmp_path / "coco_stuff"
    shutil.copytree(fixture_root, root, ignore=shutil.ignore_patterns(cs.PREPARED))
    return root


def _build(root: Path, split: str, size: int = 32) -> CocoStuffDataset:
    return CocoStuffDataset.build(split, size, root=root)


def _load(root: Path, rel: str) -> dict[str, Any]:
    return json.loads((root / rel).read_text())


def _save(root: Path, rel: str, data: dict[str, Any]) -> None:
    (root / rel).write_text(json.dumps(data))


def _names(item: Any) -> list[str]:
    return [OBJECT_NAMES[o] for o in item.objs.tolist()]


def _item(ds: CocoStuffDataset, image_id: str) -> Any:
    return ds[ds.image_ids.index(image_id)]


# --- registry, vocabulary, protocol -------------------------------------------------------------------------


def test_registry_finds_coco_stuff() -> None:
    assert registry.get("dataset", "coco_stuff") is CocoStuffDataset
    entry = registry.entries()["dataset"]["coco_stuff"]
    assert entry.module == "benchmark.data.coco_stuff" and entry.summary


def test_vocabulary_184_objects_7_predicates() -> None:
    assert len(OBJECT_NAMES) == 184 and len(PREDICATES) == 7
    assert OBJECT_NAMES[0] == "__image__" and PREDICATES[0] == "__in_image__"
    assert PREDICATES[1:] == ("left of", "right of", "above", "below", "inside", "surrounding")
    # COCO ids are the indices; the 11 unused slots (10 thing-id gaps and 91) are special names.
    gaps = [i for i, n in enumerate(OBJECT_NAMES) if n.startswith("__none_")]
    assert gaps == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91]
    assert OBJECT_NAMES[1] == "person" and OBJECT_NAMES[90] == "toothbrush"
    assert OBJECT_NAMES[92] == "banner" and OBJECT_NAMES[182] == "wood" and OBJECT_NAMES[183] == "other"
    assert len(cf.THING_CATEGORIES) == 80 and len(cf.STUFF_CATEGORIES) == 92
    assert len(set(OBJECT_NAMES)) == 184
    # The committed vocabulary file is the code's.
    assert cs.VOCAB.to_json() == {
        k: v for k, v in read_json(ASSETS / "vocab.json").items() if k != "unused_slots"
    }


def test_phrases(fixture_root: Path) -> None:
    objs, preds = _build(fixture_root, "val").phrases()
    index = cs.VOCAB.object_name_to_idx
    assert objs[0] == "image" and preds[0] == "in image" and preds[1] == "left of"
    assert objs[index["wall-concrete"]] == "concrete wall"
    assert objs[index["floor-wood"]] == "wood floor"
    assert objs[index["sky-other"]] == "sky" and objs[index["mirror-stuff"]] == "mirror"
    assert objs[index["tv"]] == "television" and objs[index["playingfield"]] == "playing field"
    assert objs[index["traffic light"]] == "traffic light" and objs[12] == "unused"
    assert len(objs) == 184 and len(preds) == 7


def test_protocol_files() -> None:
    proto = load_protocol("coco_stuff")
    assert proto["eval_splits"] == ["test"] and proto["metrics"] == [
        "fid",
        "kid",
        "object_acc_small",
        "inception_score",
        "lpips_diversity",
        "object_acc_resnet",
        "box_recall",
        "clip_score",
    ]
    assert (
        proto["version"] == "1.4" and proto["split_version"] == cs.SPLIT_VERSION and proto["mask_size"] == 16
    )
    full = proto["tiers"]["full"]
    assert (
        full["image_size"] == 64
        and full["eval"]["num_graphs"] == 2048
        and full["eval"]["samples_per_graph"] == 1
    )
    lost = read_json(ASSETS / "protocol_lostgan.json")
    assert (
        set(lost) >= {"dataset", "version", "eval_splits", "metrics", "tiers"}
        and lost["dataset"] == "coco_stuff"
    )
    assert lost["eval_splits"] == ["test_lostgan"] and lost["train_split"] == "train_lostgan"
    assert lost["tiers"]["full"]["eval"] == {"num_graphs": 3097, "samples_per_graph": 5, "batch_size": 64}
    assert set(lost["tiers"]) == set(proto["tiers"]) == {"smoke", "quick", "full"}
    assert SPLITS["test_lostgan"].expected == 3097 and SPLITS["train"].expected == 24972
    assert (SPLITS["val"].expected, SPLITS["test"].expected) == (1024, 2048)


# --- filters, order, splits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("split", list(SPLITS))
def test_kept_images_per_split(fixture_root: Path, split: str) -> None:
    ds = _build(fixture_root, split)
    assert ds.image_ids == EXPECTED_IDS[split] and len(ds) == FIXTURE_KEPT[split]
    assert ds.split_version == "1.0+fixture"
    record = read_json(cs.split_manifest_path(fixture_root, split))
    assert record["ids"] == sorted(EXPECTED_IDS[split], key=int)
    assert record["split_sha256"] == ds.split_sha256 == cs.split_sha256(ds.image_ids)
    assert record["num_images"] == len(ds) and record["count_mismatch"] is False and record["fixture"] is True


def test_filter_statistics(fixture_root: Path) -> None:
    stats = read_json(cs.prepared_dir(fixture_root) / "manifest.json")["sources"]["val2017"]["stats"]
    sg2im, lost = stats["sg2im"], stats["lostgan"]
    # 285 + 139 have an exactly-2% box; 139 + 1268 have an 'other' annotation.
    assert sg2im["dropped_small"] == 2 and sg2im["dropped_other"] == 2 and "dropped_crowd" not in sg2im
    assert lost["dropped_crowd"] == 3  # the crowd persons of 632, 885 and 1000
    assert sg2im["dropped_no_stuff"] == 1  # 776
    assert sg2im["dropped_not_challenge"] == 1  # 1425
    assert sg2im["dropped_few_objects"] == 1 and sg2im["dropped_many_objects"] == 1  # 285, 885
    assert lost["dropped_few_objects"] == 2 and lost["dropped_many_objects"] == 0  # 285 and 1000
    assert sg2im["kept"] == 7 and lost["kept"] == 7


def test_object_rules(fixture_root: Path) -> None:
    val, lost = _build(fixture_root, "val"), _build(fixture_root, "test_lostgan")
    # 139: 'other' and the exactly-2% (8x12 of 80x60) cat are dropped; instances first, then stuff.
    assert _names(_item(val, "139")) == ["person", "dog", "wall-concrete", "__image__"]
    # 1353: the 10x10 stop sign is just over 2% and kept.
    assert _names(_item(lost, "1353")) == ["bus", "stop sign", "road", "building-other", "__image__"]
    # 632: sg2im keeps the iscrowd person, LostGAN's rules drop it.
    assert _names(_item(val, "632")) == ["person", "dog", "wall-concrete", "floor-wood", "__image__"]
    assert _names(_item(lost, "632")) == ["dog", "wall-concrete", "floor-wood", "__image__"]
    # 1268: its only stuff is 'other' (dropped) but it counts for stuff_only.
    assert _names(_item(_build(fixture_root, "test"), "1268")) == ["person", "horse", "dog", "__image__"]
    # 724 has exactly 8 objects (kept); 885 has 9 (dropped) but 8 without its crowd person.
    assert len(_item(lost, "724").objs) == 9 and len(_item(lost, "885").objs) == 9


def test_val_test_order(fixture_root: Path) -> None:
    """val = the first num_val filtered images in instances-file order (not id order); test = the num_test
    after them (not the last num_test: 1353, the 7th, is in neither)."""
    order = [str(i["id"]) for i in _load(fixture_root, "annotations/instances_val2017.json")["images"]]
    kept = [i for i in order if i in {"632", "139", "1296", "724", "1000", "1268", "1353"}]
    assert kept[:2] == EXPECTED_IDS["val"] and kept[2:6] == EXPECTED_IDS["test"] and kept[6] == "1353"
    assert int(EXPECTED_IDS["val"][0]) > int(EXPECTED_IDS["val"][1])  # file order, not sorted


def test_challenge_ids_restrict_train(fresh_root: Path) -> None:
    assert "34" not in _build(fresh_root, "train").image_ids  # valid, but not a challenge id
    ids = fresh_root / "annotations/deprecated-challenge2017/train-ids.txt"
    ids.write_text(ids.read_text() + "34\n")
    with pytest.warns(UserWarning) as record:
        ds = _build(fresh_root, "train")
    messages = " | ".join(str(w.message) for w in record)
    assert "re-preparing" in messages and "train: 7 images, expected 6" in messages  # the fixture's count
    assert ds.image_ids == ["9", "25", "30", "34", "36", "42", "61"]


# --- geometry -----------------------------------------------------------------------------------------------


def test_box_conversion(fixture_root: Path) -> None:
    anns = _load(fixture_root, "annotations/instances_val2017.json")["annotations"]
    person = next(a for a in anns if a["image_id"] == 139 and a["category_id"] == 1)
    x, y, w, h = person["bbox"]
    item = _item(_build(fixture_root, "val"), "139")
    want = torch.tensor([x / 80, y / 60, (x + w) / 80, (y + h) / 60], dtype=torch.float32)
    assert torch.equal(item.boxes[0], want)
    assert item.boxes.dtype == torch.float32 and torch.equal(
        item.boxes[-1], torch.tensor([0.0, 0.0, 1.0, 1.0])
    )
    # Portrait image: x by the file width (60), y by its height (80).
    item = _item(_build(fixture_root, "test"), "1296")
    giraffe = next(a for a in anns if a["image_id"] == 1296 and a["category_id"] == 25)
    x, y, w, h = giraffe["bbox"]
    assert torch.equal(item.boxes[0], torch.tensor([x / 60, y / 80, (x + w) / 60, (y + h) / 80]))
    assert bool(((item.boxes >= 0) & (item.boxes <= 1)).all())


def test_crop_to_box_rounding() -> None:
    m = np.arange(100).reshape(10, 10)
    # round half to even (Python 3, as sg2im ran): x 2.5 -> 2, x + w = 5.5 -> 6; y 1.5 -> 2, y + h 3.5 -> 4
    assert np.array_equal(crop_to_box(m, [2.5, 1.5, 3.0, 2.0]), m[2:4, 2:6])
    # at least one row and column
    assert crop_to_box(m, [4.2, 4.4, 0.1, 0.1]).shape == (1, 1)


def test_resize_mask_by_hand() -> None:
    assert resize_mask(np.ones((1, 1), np.uint8)).all()  # uniform crop: clip=True keeps the value
    assert not resize_mask(np.zeros((40, 30), np.uint8)).any()
    half = np.zeros((32, 32), np.uint8)
    half[:, :16] = 1  # 2x downscale: each output samples 2x2 cells in the middle: the left half exactly
    want = np.zeros((16, 16), bool)
    want[:, :8] = True
    assert np.array_equal(resize_mask(half), want)
    # 2x2 crop with one set cell: output i samples (i + 0.5) / 8 - 0.5; weight of cell (0, 0) is
    # (1 - t_r) * (1 - t_c) with zero padding outside; > 128/255 only where both axis weights are big.
    one = np.array([[1, 0], [0, 0]], np.uint8)
    x = (np.arange(16) + 0.5) / 8 - 0.5
    wt = np.where(x < 0, 1 + x, 1 - x)  # weight of cell 0 along one axis
    assert np.array_equal(resize_mask(one), np.outer(wt, wt) * 255 > 128)


def test_resize_mask_matches_scikit_image() -> None:
    skt = pytest.importorskip("skimage.transform")
    rng = np.random.default_rng(0)
    for trial in range(300):
        h, w = rng.integers(1, 200, 2) if trial % 2 else rng.integers(1, 24, 2)
        yy, xx = np.mgrid[:h, :w]
        cy, cx = rng.uniform(-0.2, 1.2, 2) * (h, w)
        ry, rx = rng.uniform(0.1, 1, 2) * (h, w)
        crop = ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) < 1).astype(np.uint8)
        if trial % 7 == 0:
            crop = (rng.random((h, w)) < 0.5).astype(np.uint8)
        for aa in (False, True):
            ref = skt.resize(255.0 * crop, (16, 16), mode="constant", anti_aliasing=aa) > 128
            assert np.array_equal(resize_mask(crop, anti_aliasing=aa), ref), (trial, h, w, aa)


def test_mask_crop_and_resize_on_fixture(fixture_root: Path) -> None:
    anns = _load(fixture_root, "annotations/instances_val2017.json")["annotations"]
    item = _item(_build(fixture_root, "test_lostgan"), "1353")
    # The stop sign is a 10x10 rectangle polygon: its crop is all ones -> all-ones mask.
    assert item.masks[1].eq(1).all() and item.masks.dtype == torch.float32
    assert item.masks[-1].eq(1).all()  # __image__
    bus = next(a for a in anns if a["image_id"] == 1353 and a["category_id"] == 6)
    full = cf.decode_segmentation(bus["segmentation"], 80, 60)  # polygon rasterised at the file size
    assert full.shape == (60, 80)
    x, y, w, h = bus["bbox"]
    crop = full[round(y) : round(y + h), round(x) : round(x + w)]
    assert np.array_equal(item.masks[0].numpy().astype(bool), resize_mask(crop))
    assert 0 < item.masks[0].sum() < 256  # an octagon: corners empty


def test_predicate_by_hand() -> None:
    c = np.array([0.5, 0.5], np.float32)
    big, small = np.array([0.1, 0.1, 0.9, 0.9]), np.array([0.4, 0.4, 0.6, 0.6])
    assert predicate(big, small, c, c) == "surrounding" and predicate(small, big, c, c) == "inside"
    edge = np.array([0.1, 0.4, 0.6, 0.6])  # shares x0 with big: not strictly inside
    b = np.array([0.0, 0.0, 0.2, 0.2])
    at = lambda x, y: np.array([x, y], np.float32)  # noqa: E731
    assert predicate(edge, big, at(0.2, 0.5), at(0.5, 0.5)) == "left of"
    assert predicate(b, b, at(0.8, 0.5), at(0.5, 0.5)) == "right of"
    assert predicate(b, b, at(0.5, 0.2), at(0.5, 0.5)) == "above"  # y grows downwards
    assert predicate(b, b, at(0.5, 0.8), at(0.5, 0.5)) == "below"
    # Thresholds: theta = -pi/4 -> right of (half-open), theta = 3pi/4 -> left of, theta = pi/4 -> below
    assert predicate(b, b, at(0.75, 0.25), at(0.5, 0.5)) == "right of"
    assert predicate(b, b, at(0.25, 0.75), at(0.5, 0.5)) == "left of"
    assert predicate(b, b, at(0.75, 0.75), at(0.5, 0.5)) == "below"
    assert predicate(b, b, at(0.25, 0.25), at(0.5, 0.5)) == "left of"  # theta = -3pi/4


def test_mask_centres_by_hand() -> None:
    boxes = np.array([[0.0, 0.0, 0.3, 0.6], [0.2, 0.2, 0.4, 0.4]], np.float32)
    masks = np.zeros((2, 16, 16), np.uint8)
    masks[0, :, 8:] = 1  # right half: x = mean(linspace(0, 0.3, 16)[8:]); y = mean over all rows
    xs, ys = np.linspace(0, 0.3, 16), np.linspace(0, 0.6, 16)
    got = mask_centres(boxes, masks)
    assert got[0] == pytest.approx([xs[8:].mean(), ys.mean()], abs=1e-6)
    assert got[1].tolist() == [np.float32(0.3), np.float32(0.3)]  # empty mask: the box centre
    assert got.dtype == np.float32


def test_triples_follow_the_geometry(fixture_root: Path) -> None:
    from benchmark.data.shapes import relation_from_geometry

    seen = defaultdict(int)
    for split in ("train", "test_lostgan", "val", "test"):
        for item in _build(fixture_root, split):
            n = len(item.objs) - 1
            t = item.triples.tolist()
            assert len(t) == 2 * n and t[n:] == [[i, 0, n] for i in range(n)]
            for cur, (s, p, o) in enumerate(t[:n]):
                assert cur in (s, o) and s != o and s < n and o < n
                name = PREDICATES[p]
                seen[name] += 1
                # float64 recomputation from boxes and masks: the same rule away from the thresholds
                ref = relation_from_geometry(item.boxes[s], item.boxes[o], item.masks[s], item.masks[o])
                assert name == ref, (item.image_id, s, o)
            if item.image_id == "632" and split == "val":  # the dog's box lies strictly inside the person's
                for s, p, o in t[:n]:
                    if {s, o} == {0, 1}:
                        assert PREDICATES[p] == ("inside" if s == 1 else "surrounding")
    assert {"left of", "right of", "above", "below"} <= set(seen) and "__in_image__" not in seen


def test_items_are_reproducible_and_collate(fixture_root: Path) -> None:
    a, b = _build(fixture_root, "test", 64), _build(fixture_root, "test", 64)
    for x, y in zip(a, b):
        for f in ("image", "objs", "boxes", "triples", "masks"):
            assert torch.equal(getattr(x, f), getattr(y, f))
    item = a[0]
    assert item.image.shape == (3, 64, 64) and item.image.dtype == torch.float32
    assert 0 <= item.image.min() and item.image.max() <= 1
    assert item.objs[-1] == 0 and item.objs.dtype == torch.long and item.has_layout.all()
    batch = collate([a[i] for i in range(len(a))])
    assert batch.images.shape == (4, 3, 64, 64) and batch.num_images == 4 and batch.image_ids == a.image_ids
    assert a[-1].image_id == a.image_ids[-1]
    with pytest.raises(IndexError):
        a[len(a)]


# --- identical outputs to a transcription of sg2im's loader -------------------------------------------------


def _sg2im_transcription(raw: Path, source: str, image_size: int, lostgan: bool = False) -> dict[str, tuple]:
    """google/sg2im ``CocoSceneGraphDataset.__init__`` + ``__getitem__`` written out (scikit-image resize with
    0.14's behaviour, pycocotools, torch float32 centres, the global ``random``), plus the challenge ids and
    LostGAN's crowd rule, images in [0, 1] and ``random.seed`` per image. Returns image id -> item tuple."""
    from pycocotools import mask as mask_utils
    from skimage.transform import resize as imresize

    inst = json.loads((raw / f"annotations/instances_{source}.json").read_text())
    stuff = json.loads((raw / f"annotations/stuff_{source}.json").read_text())
    image_ids, id_to_file, id_to_size = [], {}, {}
    for im in inst["images"]:
        image_ids.append(im["id"])
        id_to_file[im["id"]] = im["file_name"]
        id_to_size[im["id"]] = (im["width"], im["height"])
    idx_to_name = {c["id"]: c["name"] for c in inst["categories"] + stuff["categories"]}
    objects = defaultdict(list)
    with_stuff = set()
    for data, is_stuff in ((inst, False), (stuff, True)):
        for ann in data["annotations"]:
            if is_stuff:
                with_stuff.add(ann["image_id"])
            _, _, w, h = ann["bbox"]
            W, H = id_to_size[ann["image_id"]]
            ok = (w * h) / (W * H) > 0.02 and idx_to_name[ann["category_id"]] != "other"
            if ok and not (lostgan and ann["iscrowd"] == 1):
                objects[ann["image_id"]].append(ann)
    chal = {
        int(x)
        for x in (raw / f"annotations/deprecated-challenge2017/{source[:-4]}-ids.txt").read_text().split()
    }
    image_ids = [i for i in image_ids if i in with_stuff and i in chal and 3 <= len(objects[i]) <= 8]

    def seg_to_mask(seg, width, height):
        if isinstance(seg, list):
            return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, height, width)))
        if isinstance(seg["counts"], list):
            return mask_utils.decode(mask_utils.frPyObjects(seg, height, width))
        return mask_utils.decode(seg)

    out = {}
    state = random.getstate()
    for image_id in image_ids:
        with Image.open(raw / f"images/{source}" / id_to_file[image_id]) as image:
            WW, HH = image.size
            img = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
        image = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)
        objs, boxes, masks = [], [], []
        for ann in objects[image_id]:
            objs.append(ann["category_id"])
            x, y, w, h = ann["bbox"]
            boxes.append(torch.FloatTensor([x / WW, y / HH, (x + w) / WW, (y + h) / HH]))
            mask = seg_to_mask(ann["segmentation"], WW, HH)
            mx0, mx1 = int(round(x)), int(round(x + w))
            my0, my1 = int(round(y)), int(round(y + h))
            mx1, my1 = max(mx0 + 1, mx1), max(my0 + 1, my1)
            mask = imresize(255.0 * mask[my0:my1, mx0:mx1], (16, 16), mode="constant", anti_aliasing=False)
            masks.append(torch.from_numpy((mask > 128).astype(np.int64)))
        objs.append(0)
        boxes.append(torch.FloatTensor([0, 0, 1, 1]))
        masks.append(torch.ones(16, 16).long())
        objs, boxes, masks = torch.LongTensor(objs), torch.stack(boxes), torch.stack(masks)
        centers = []
        for i in range(len(objs)):
            x0, y0, x1, y1 = boxes[i]
            m = masks[i] == 1
            xs = torch.linspace(x0, x1, 16).view(1, 16).expand(16, 16)
            ys = torch.linspace(y0, y1, 16).view(16, 1).expand(16, 16)
            centers.append(
                [0.5 * (x0 + x1), 0.5 * (y0 + y1)] if m.sum() == 0 else [xs[m].mean(), ys[m].mean()]
            )
        centers = torch.FloatTensor(centers)
        random.seed(f"{RELATION_SEED}:{image_id}")
        triples = []
        real = (objs != 0).nonzero().squeeze(1)
        for cur in real:
            choices = [obj for obj in real if obj != cur]
            other = random.choice(choices)
            s, o = (cur, other) if random.random() > 0.5 else (other, cur)
            sx0, sy0, sx1, sy1 = boxes[s]
            ox0, oy0, ox1, oy1 = boxes[o]
            d = centers[s] - centers[o]
            theta = math.atan2(d[1], d[0])
            if sx0 < ox0 and sx1 > ox1 and sy0 < oy0 and sy1 > oy1:
                p = "surrounding"
            elif sx0 > ox0 and sx1 < ox1 and sy0 > oy0 and sy1 < oy1:
                p = "inside"
            elif theta >= 3 * math.pi / 4 or theta <= -3 * math.pi / 4:
                p = "left of"
            elif -3 * math.pi / 4 <= theta < -math.pi / 4:
                p = "above"
            elif -math.pi / 4 <= theta < math.pi / 4:
                p = "right of"
            else:
                p = "below"
            triples.append([int(s), PREDICATES.index(p), int(o)])
        n = len(objs)
        triples += [[i, 0, n - 1] for i in range(n - 1)]
        out[str(image_id)] = (image, objs, boxes, masks, torch.LongTensor(triples))
    random.setstate(state)
    return out


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools on numpy 2
@pytest.mark.parametrize(
    "split,size", [("train", 64), ("val", 64), ("test", 64), ("test_lostgan", 64), ("test_lostgan", 32)]
)
def test_identical_to_sg2im_transcription(fixture_root: Path, split: str, size: int) -> None:
    """At 64 px the images come from the prepared cache, at 32 px from the JPEGs: identical either way."""
    pytest.importorskip("skimage")
    sd = SPLITS[split]
    ref = _sg2im_transcription(fixture_root, sd.source, size, lostgan=sd.mode == "lostgan")
    ds = _build(fixture_root, split, size)
    assert set(ds.image_ids) <= set(ref)
    for item in ds:
        image, objs, boxes, masks, triples = ref[item.image_id]
        assert torch.equal(item.image, image)
        assert torch.equal(item.objs, objs) and torch.equal(item.boxes, boxes)
        assert torch.equal(item.masks, masks.float()) and torch.equal(item.triples, triples)


# --- prepare: report, manifests, errors ---------------------------------------------------------------------


def test_prepare_report_and_manifest(fixture_root: Path) -> None:
    report = CocoStuffDataset.prepare(root=fixture_root)
    assert "FIXTURE" in report and "WARNING" not in report and "MISSING" not in report
    for split in SPLITS:
        assert split in report
    manifest = read_json(cs.prepared_dir(fixture_root) / "manifest.json")
    assert manifest["split_version"] == "1.0+fixture" and manifest["missing"] == []
    assert len(manifest["inputs"]["annotations/stuff_val2017.json"]["sha256"]) == 64
    assert manifest["splits"]["test"]["num_images"] == 4


def test_prepare_from_a_separate_raw_folder(
    fixture_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SG2I_DATA_ROOT", str(tmp_path / "data"))
    report = CocoStuffDataset.prepare(raw=fixture_root)  # prepared under SG2I_DATA_ROOT/coco_stuff
    assert str(tmp_path / "data" / "coco_stuff" / "prepared") in report
    ds = CocoStuffDataset.build("test", 32)  # images read from the recorded raw folder
    assert ds.image_ids == EXPECTED_IDS["test"] and ds[0].image.shape == (3, 32, 32)
    assert not (fixture_root / "annotations" / "prepared").exists()


def test_prepare_lists_missing_files(fresh_root: Path) -> None:
    (fresh_root / "annotations/stuff_val2017.json").unlink()
    shutil.rmtree(fresh_root / "images/train2017")
    with pytest.raises(FileNotFoundError) as e:
        CocoStuffDataset.prepare(root=fresh_root)
    msg = str(e.value)
    assert "MISSING  annotations/stuff_val2017.json" in msg and "stuff_annotations_trainval2017.zip" in msg
    assert "MISSING  images/train2017" in msg and "train2017.zip" in msg
    assert "test           not prepared" in msg
    with pytest.raises(FileNotFoundError, match="stuff_val2017.json"):
        _build(fresh_root, "test")


def test_build_without_data_says_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SG2I_DATA_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="instances_val2017.json") as e:
        CocoStuffDataset.build("test", 64)
    assert str(tmp_path / "coco_stuff") in str(e.value) and "annotations_trainval2017.zip" in str(e.value)
    assert not (tmp_path / "coco_stuff").exists()
    with pytest.raises(FileNotFoundError, match="raw folder"):
        CocoStuffDataset.prepare(raw=tmp_path / "nowhere")


def test_count_mismatch_is_reported(fresh_root: Path) -> None:
    (fresh_root / cs.FIXTURE_MARKER).unlink()  # the fixture treated as real COCO: published sizes apply
    with pytest.warns(UserWarning, match="split sizes differ"):
        report = CocoStuffDataset.prepare(root=fresh_root)
    assert "!! WARNING: split sizes differ from the expected ones" in report
    assert "train: 6 images, expected 24,972" in report and "test_lostgan: 7 images, expected 3,097" in report
    record = read_json(cs.split_manifest_path(fresh_root, "train"))
    assert record["count_mismatch"] is True and record["expected_num_images"] == 24972
    assert record["fixture"] is False and record["split_version"] == "1.0"
    with pytest.warns(UserWarning, match="not comparable"):
        ds = _build(fresh_root, "val")
    assert len(ds) == 7 and ds.split_version == "1.0"  # num_val 1024 > the 7 filtered images


def test_malformed_json_names_the_file(fresh_root: Path) -> None:
    (fresh_root / "annotations/instances_val2017.json").write_text('{"images": [')
    with pytest.raises(ValueError, match=r"malformed COCO instances file .*instances_val2017.json: line 1"):
        _build(fresh_root, "val")


@pytest.mark.parametrize(
    "rel,field,value,pattern",
    [
        (
            "annotations/stuff_val2017.json",
            "category_id",
            999,
            r"stuff_val2017.json: annotations\[\d+\]\.category_id: unknown category id 999",
        ),
        (
            "annotations/instances_val2017.json",
            "image_id",
            4242,
            r"instances_val2017.json: annotations\[\d+\]\.image_id: 4242",
        ),
        (
            "annotations/instances_val2017.json",
            "bbox",
            [1, 2, 3],
            r"instances_val2017.json: annotations\[\d+\]\.bbox",
        ),
        (
            "annotations/instances_val2017.json",
            "segmentation",
            {"counts": 5},
            r"annotations\[\d+\]\.segmentation",
        ),
    ],
)
def test_bad_annotation_names_file_and_field(
    fresh_root: Path, rel: str, field: str, value: Any, pattern: str
) -> None:
    data = _load(fresh_root, rel)
    data["annotations"][3][field] = value
    _save(fresh_root, rel, data)
    with pytest.raises(ValueError, match=pattern):
        _build(fresh_root, "test")


def test_wrong_categories_name_the_field(fresh_root: Path) -> None:
    rel = "annotations/instances_val2017.json"
    data = _load(fresh_root, rel)
    data["categories"][0]["name"] = "human"
    _save(fresh_root, rel, data)
    with pytest.raises(
        ValueError, match=r"instances_val2017.json: field 'categories': id 1 is named 'human'"
    ):
        _build(fresh_root, "val")
    data["categories"] = data["categories"][1:]
    _save(fresh_root, rel, data)
    with pytest.raises(ValueError, match=r"'categories'.*1 COCO-Stuff categories missing \(1 'person'\)"):
        _build(fresh_root, "val")


def test_bad_challenge_ids_line(fresh_root: Path) -> None:
    (fresh_root / "annotations/deprecated-challenge2017/val-ids.txt").write_text("139\nabc\n")
    with pytest.raises(ValueError, match=r"val-ids.txt: line 2: expected an integer image id"):
        _build(fresh_root, "val")


def test_missing_or_corrupt_image_names_the_file(fresh_root: Path) -> None:
    path = fresh_root / "images/val2017/000000000139.jpg"
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"image file missing: .*000000000139.jpg"):
        _build(fresh_root, "val")
    path.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"corrupt image file .*000000000139.jpg"):
        _build(fresh_root, "val")


def test_image_broken_after_prepare_names_the_file(fresh_root: Path) -> None:
    ds = _build(fresh_root, "val")
    path = fresh_root / "images/val2017/000000000139.jpg"
    path.write_bytes(path.read_bytes()[:200])  # truncated: the header still reads
    with pytest.raises(ValueError, match=r"corrupt image file .*000000000139.jpg"):
        ds[ds.image_ids.index("139")]
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"image file missing: .*000000000139.jpg"):
        ds[ds.image_ids.index("139")]


# --- the training loop on the fixture -----------------------------------------------------------------------


def test_smoke_training_step_of_retrieval(
    fixture_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmark.config import build_run_config
    from benchmark.train import build_dataset, train

    monkeypatch.setenv("SG2I_DATA_ROOT", str(fixture_root.parent))
    cfg = build_run_config("retrieval", "coco_stuff", "smoke", device="cpu", sets={"train.batch_size": 4})
    assert cfg.image_size == 64
    out = train(cfg, tmp_path / "run", progress=False)
    assert (
        out.checkpoint.exists() and out.method.info.split_sha256 == _build(fixture_root, "train").split_sha256
    )
    assert out.method.info.phrases[172] == "concrete wall"
    test = build_dataset("coco_stuff", "test", cfg.image_size)
    from benchmark.seeding import sample_generators

    batch = collate([test[i] for i in range(2)])
    images = out.method.sample(batch, sample_generators(0, "test", [0, 1], 0), layout="gt")
    assert images.shape == (2, 3, 64, 64)
