"""``coco_stuff``: COCO-Stuff 2017 scene graphs, built exactly as google/sg2im builds them.

Faithful to ``sg2im/data/coco.py`` (``CocoSceneGraphDataset``, google/sg2im at commit 2638373, the fix of
issue #5 that made the masks non-empty) with ``scripts/train.py``'s defaults; block names below are the
comments of that file:

- Inputs: ``annotations/instances_<s>2017.json`` + ``annotations/stuff_<s>2017.json`` and the images under
  ``images/<s>2017/``. Only the instances file's ``images`` are read (``__init__``: the ``image_data`` loop).
- Vocabulary (``__init__``, "Build object_idx_to_name"): COCO category ids are the object indices,
  ``__image__`` = 0, 184 slots (ids 0..183); the 11 unused ids (10 thing-id gaps and 91) are named
  ``__none_<id>__`` here where sg2im writes ``'NONE'`` (unique names that every consumer treats as special);
  predicates ``__in_image__, left of, right of, above, below, inside, surrounding`` (7).
- Object filter ("Add object data from instances" / "... from stuff"): an annotation is kept iff its box
  covers strictly more than 2 % of the image (``w * h / (W * H) > 0.02`` with W, H from the JSON) and its
  category is not ``other``; ``iscrowd`` is not read (crowd RLEs are kept). Objects: kept instance
  annotations in file order, then kept stuff annotations in file order.
- Image filter: ``stuff_only`` keeps images that appear in *any* stuff annotation (before the object filter,
  so an image whose only stuff is ``other`` counts); then 3 <= kept objects <= 8 ("Prune images that have too
  few or too many objects"). Order = the instances file's ``images`` order.
- Challenge ids (not in sg2im: it was run on the 2017 stuff-challenge release, 40K train / 5K val images): the
  current ``stuff_annotations_trainval2017.zip`` covers all 118K train images, so train2017 and val2017 are
  restricted to ``annotations/deprecated-challenge2017/{train,val}-ids.txt`` from the same zip (as
  ZGCTroy/LayoutDiffusion's ``use_deprecated_stuff2017`` does); without it train has ~3x more images.
- Splits: ``train`` = all filtered train2017 images (published: 24,972); ``val`` = the first 1,024 filtered
  val2017 images (sg2im ``--num_val_samples 1024``, ``max_samples``); ``test`` = the 2,048 after them
  (sg2im TRAINING.md: "the remaining images will serve as our test set"; the paper: 2,048). LostGAN's set
  (``WillSuen/LostGANs`` ``data/cocostuff_loader.py`` also drops ``iscrowd == 1`` annotations):
  ``test_lostgan`` = all filtered val2017 images (published: 3,097, evaluated with 5 samples each) and
  ``train_lostgan`` = filtered train2017 (no published count with the challenge ids).
- Per item (``__getitem__``): the image file's own size ``WW, HH`` (PIL), resized to (H, W) with PIL
  bilinear, no crop, returned in [0, 1] (no ImageNet normalisation: methods normalise themselves); boxes
  ``[x / WW, y / HH, (x + w) / WW, (y + h) / HH]`` as float32; masks: the segmentation decoded with
  pycocotools at ``(HH, WW)`` (polygons merged, uncompressed RLE via ``frPyObjects``, compressed RLE as
  is), cropped to ``[round(y):round(y + h), round(x):round(x + w)]`` (at least 1 px),
  ``skimage.transform.resize(255.0 * crop, (16, 16), mode='constant') > 128``; the ``__image__`` node (box
  ``[0, 0, 1, 1]``, all-ones mask) last; one synthetic geometric triple per object, then
  ``(i, __in_image__, __image__)`` for every object. These per-object and per-image rules, the category
  table and the checks of the JSON fields are in :mod:`benchmark.data.coco_format`.

Deliberate differences from sg2im, each for reproducibility: the relations come from
``random.Random(f"{RELATION_SEED}:{image_id}")`` (sg2im draws from the global ``random`` on every visit, so
its graphs change between epochs; here a graph is a pure function of the image id, for training and
evaluation alike); images are not ImageNet-normalised; unused vocabulary slots have unique names.

Speed: ``prepare`` (or the first ``build``) parses the JSON files once and writes a compact index per source
and rule set under ``<root>/prepared/index/`` (image ids, file names and sizes, category ids, float32 boxes,
16x16 masks and float32 mask centres) and the kept images resized to 64 px (``prepared/images/``, the
protocols' size: the same pixels as decoding the JPEG), so ``__getitem__`` only reads (or, at other sizes,
decodes and resizes) one image and draws the relations. The split manifests
``<root>/prepared/splits/<split>.json`` (sorted image ids, their sha256, the count and its published
value) are what results record: real COCO cannot be committed, so there are no frozen split files for this
dataset; ``split_version`` is the split-definition version of the protocol (``1.0``). Index files and the
image cache are written with :mod:`benchmark.data.packing`; the test fixture is
:mod:`benchmark.data.fixtures.coco_stuff`.
"""

from __future__ import annotations

import random
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from benchmark.batch import SceneGraphItem
from benchmark.data.coco_format import (
    CATEGORIES,
    MASK_SIZE,
    PREDICATES,
    _check_categories,
    _is_int,
    _is_num,
    _load_coco,
    crop_to_box,
    decode_segmentation,
    image_size_of,
    load_image,
    mask_centres,
    read_ids_file,
    resize_mask,
    scene_triples,
)
from benchmark.data.packing import (
    check_image_array,
    check_index,
    concat_rows,
    read_npz,
    split_sha256,
    write_image_array,
    write_npz,
)
from benchmark.data.packing import progress as progress_bar
from benchmark.interfaces import SceneGraphDataset
from benchmark.io import atomic_write_json, file_lock, read_json, sha256_file
from benchmark.paths import assets_dir, data_root
from benchmark.registry import register
from benchmark.scene_graph import IMAGE_TOKEN, Vocab

DATASET = "coco_stuff"
SPLIT_VERSION = "1.0"  # version of the split definition below (= "split_version" of the protocol files)
INDEX_VERSION = "1"  # bump on any change to the index contents; stale indexes are rebuilt
MIN_OBJECT_SIZE = 0.02  # sg2im train.py --min_object_size
MIN_OBJECTS = 3  # sg2im train.py --min_objects_per_image
MAX_OBJECTS = 8  # CocoSceneGraphDataset default; train.py's --max_objects_per_image (10) is VG-only
NUM_VAL = 1024  # sg2im train.py --num_val_samples
NUM_TEST = 2048  # sg2im paper
RELATION_SEED = "sg2i-bench/coco_stuff/relations/v1"
FIXTURE_MARKER = "sg2i_fixture.json"  # written by write_fixture only: split sizes of a fixture root
PREPARED = "prepared"
IMAGE_CACHE_SIZES = (
    64,
)  # prepare stores the resized images at the protocols' size (other sizes decode per item)

# ---------------------------------------------------------------------------------------------------------
# Vocabulary: COCO category ids are the object indices (benchmark.data.coco_format.CATEGORIES)

OBJECT_NAMES: tuple[str, ...] = tuple(
    IMAGE_TOKEN if i == 0 else CATEGORIES.get(i, f"__none_{i}__") for i in range(1 + max(CATEGORIES))
)
VOCAB = Vocab(OBJECT_NAMES, PREDICATES)
# Natural phrases where the generic rules of benchmark.text_encoders.phrases are not enough.
_PHRASE_OVERRIDES = {
    "tv": "television",
    "hair drier": "hair dryer",
    "playingfield": "playing field",
    "waterdrops": "water drops",
    "window-blind": "window blind",
    "structural-other": "structure",
    "solid-other": "solid",
    "other": "other stuff",
}

# ---------------------------------------------------------------------------------------------------------
# Raw inputs, sources and splits


@dataclass(frozen=True)
class Source:
    """One COCO 2017 image set and the raw files the loader reads for it (paths relative to the raw root)."""

    name: str
    instances: str
    stuff: str
    challenge_ids: str
    images: str

    @property
    def files(self) -> tuple[str, str, str]:
        return (self.instances, self.stuff, self.challenge_ids)


SOURCES: dict[str, Source] = {
    s: Source(
        s,
        f"annotations/instances_{s}.json",
        f"annotations/stuff_{s}.json",
        f"annotations/deprecated-challenge2017/{s[:-4]}-ids.txt",
        f"images/{s}",
    )
    for s in ("train2017", "val2017")
}
_ANN_ZIP = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
_STUFF_ZIP = (
    "http://images.cocodataset.org/annotations/stuff_annotations_trainval2017.zip "
    "(also linked from https://github.com/nightrome/cocostuff#downloads)"
)
WHERE_TO_GET: dict[str, str] = {
    "annotations/instances_train2017.json": f"{_ANN_ZIP} (unzip in the raw root)",
    "annotations/instances_val2017.json": f"{_ANN_ZIP} (unzip in the raw root)",
    "annotations/stuff_train2017.json": f"{_STUFF_ZIP} (unzip in the raw root)",
    "annotations/stuff_val2017.json": f"{_STUFF_ZIP} (unzip in the raw root)",
    "annotations/deprecated-challenge2017/train-ids.txt": f"{_STUFF_ZIP} (folder deprecated-challenge2017/)",
    "annotations/deprecated-challenge2017/val-ids.txt": f"{_STUFF_ZIP} (folder deprecated-challenge2017/)",
    "images/train2017": "http://images.cocodataset.org/zips/train2017.zip (unzip into images/)",
    "images/val2017": "http://images.cocodataset.org/zips/val2017.zip (unzip into images/)",
}
MODES = ("sg2im", "lostgan")  # object rules: sg2im keeps iscrowd annotations, LostGAN drops them


@dataclass(frozen=True)
class SplitDef:
    """A split: a filtered image list (source, rules) and which part of it; ``expected``: published size."""

    source: str
    mode: str
    part: str  # "all", "head" (first num_val) or "after_head" (the num_test after them)
    expected: int | None
    note: str


SPLITS: dict[str, SplitDef] = {
    "train": SplitDef(
        "train2017", "sg2im", "all", 24972, "sg2im paper (CVPR 2018), 2017 stuff-challenge ids"
    ),
    "val": SplitDef("val2017", "sg2im", "head", NUM_VAL, "first 1,024 filtered val2017 images (sg2im)"),
    "test": SplitDef(
        "val2017", "sg2im", "after_head", NUM_TEST, "the 2,048 filtered val2017 images after val"
    ),
    "train_lostgan": SplitDef("train2017", "lostgan", "all", None, "LostGAN rules on the challenge ids"),
    "test_lostgan": SplitDef("val2017", "lostgan", "all", 3097, "LostGAN / LayoutDiffusion 3,097 x 5"),
}


@dataclass(frozen=True)
class SplitSizes:
    """Split sizes and published counts: the real protocol, or a fixture's (read from FIXTURE_MARKER)."""

    num_val: int = NUM_VAL
    num_test: int = NUM_TEST
    expected: dict[str, int | None] = field(
        default_factory=lambda: {k: s.expected for k, s in SPLITS.items()}
    )
    fixture: bool = False

    @classmethod
    def read(cls, raw: Path) -> SplitSizes:
        path = raw / FIXTURE_MARKER
        if not path.is_file():
            return cls()
        d = read_json(path, "fixture marker")
        try:
            return cls(int(d["num_val"]), int(d["num_test"]), {k: d["expected"].get(k) for k in SPLITS}, True)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError(
                f"fixture marker {path}: expected num_val, num_test and expected counts"
            ) from None

    def to_json(self) -> dict[str, Any]:
        return {
            "num_val": self.num_val,
            "num_test": self.num_test,
            "expected": self.expected,
            "fixture": self.fixture,
        }


# ---------------------------------------------------------------------------------------------------------
# The synthetic relations


def relation_rng(image_id: str) -> random.Random:
    """The per-image random stream of the synthetic relations (a pure function of the image id)."""
    return random.Random(f"{RELATION_SEED}:{image_id}")


# ---------------------------------------------------------------------------------------------------------
# Reading and filtering the raw files


_STAT_KEYS = (
    "annotations",
    "dropped_small",
    "dropped_other",
    "dropped_crowd",
    "dropped_no_stuff",
    "dropped_not_challenge",
    "dropped_few_objects",
    "dropped_many_objects",
)


class _Ann(NamedTuple):
    """A kept annotation: the JSON object, its file (0 instances, 1 stuff) and its index in 'annotations'."""

    ann: dict[str, Any]
    file: int
    k: int


@dataclass
class Parsed:
    """One source after filtering: per rule set the kept image ids (loader order) and their annotations."""

    source: Source
    images: dict[int, tuple[str, int, int]]  # id -> (file_name, width, height), instances-file order
    kept: dict[str, list[int]]
    objects: dict[str, dict[int, list[_Ann]]]
    stats: dict[str, dict[str, int]]


def parse_source(raw: Path, source: Source) -> Parsed:
    """Read one source's JSON and id files and apply the filters (sg2im ``__init__``) for both rule sets.

    Errors name the file and the field: unknown image or category ids, malformed boxes, wrong categories.
    """
    inst_path, stuff_path = raw / source.instances, raw / source.stuff
    inst = _load_coco(inst_path, "COCO instances file", ("images", "annotations", "categories"))
    images: dict[int, tuple[str, int, int]] = {}
    for k, im in enumerate(inst["images"]):
        ok = isinstance(im, dict) and _is_int(im.get("id")) and isinstance(im.get("file_name"), str)
        ok = (
            ok
            and _is_int(im.get("width"))
            and _is_int(im.get("height"))
            and im["width"] > 0
            and im["height"] > 0
        )
        if not ok:
            raise ValueError(
                f"{inst_path}: images[{k}] needs an integer 'id', a 'file_name' and positive 'width'/'height'"
            )
        images[im["id"]] = (im["file_name"], im["width"], im["height"])
    challenge = read_ids_file(raw / source.challenge_ids)
    stuff = _load_coco(stuff_path, "COCO-Stuff annotation file", ("annotations", "categories"))
    cats = _check_categories([(inst_path, inst["categories"]), (stuff_path, stuff["categories"])])

    objects: dict[str, dict[int, list[_Ann]]] = {m: defaultdict(list) for m in MODES}
    counts = {m: dict.fromkeys(_STAT_KEYS, 0) for m in MODES}
    with_stuff: set[int] = set()
    for f, (path, data) in enumerate(((inst_path, inst), (stuff_path, stuff))):
        for k, ann in enumerate(data["annotations"]):
            where = f"{path}: annotations[{k}]"
            if not isinstance(ann, dict):
                raise ValueError(f"{where}: expected an object")
            image_id = ann.get("image_id")
            if image_id not in images:
                raise ValueError(
                    f"{where}.image_id: {image_id!r} is not an image of {inst_path} (field 'images')"
                )
            name = cats.get(ann.get("category_id"))  # type: ignore[arg-type]
            if name is None:
                raise ValueError(
                    f"{where}.category_id: unknown category id {ann.get('category_id')!r} "
                    f"(image {image_id}); valid ids are listed in the files' 'categories'"
                )
            bbox = ann.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_num(v) for v in bbox)):
                raise ValueError(f"{where}.bbox: expected [x, y, w, h] numbers, got {bbox!r}")
            if "segmentation" not in ann:
                raise ValueError(f"{where}: field 'segmentation' is missing")
            if f == 1:
                with_stuff.add(image_id)
            _, width, height = images[image_id]
            big = (bbox[2] * bbox[3]) / (width * height) > MIN_OBJECT_SIZE
            crowd = ann.get("iscrowd", 0) == 1
            for mode in MODES:
                c = counts[mode]
                c["annotations"] += 1
                if not big:
                    c["dropped_small"] += 1
                elif name == "other":
                    c["dropped_other"] += 1
                elif crowd and mode == "lostgan":
                    c["dropped_crowd"] += 1
                else:
                    objects[mode][image_id].append(_Ann(ann, f, k))
    kept: dict[str, list[int]] = {}
    stats: dict[str, dict[str, int]] = {}
    for mode in MODES:
        c, ids = counts[mode], []
        for image_id in images:
            n = len(objects[mode].get(image_id, ()))
            if image_id not in with_stuff:
                c["dropped_no_stuff"] += 1
            elif image_id not in challenge:
                c["dropped_not_challenge"] += 1
            elif n < MIN_OBJECTS:
                c["dropped_few_objects"] += 1
            elif n > MAX_OBJECTS:
                c["dropped_many_objects"] += 1
            else:
                ids.append(image_id)
        kept[mode] = ids
        objects[mode] = {i: objects[mode][i] for i in ids}
        if mode != "lostgan":
            del c["dropped_crowd"]
        stats[mode] = {
            "images": len(images),
            "images_with_stuff": len(with_stuff),
            "challenge_ids": len(challenge),
            **c,
            "kept": len(ids),
        }
    return Parsed(source, images, kept, objects, stats)


_INDEX_KEYS = (
    "image_id",
    "image_row",
    "file_name",
    "file_size",
    "obj_ptr",
    "category",
    "bbox",
    "iscrowd",
    "ann_id",
    "boxes",
    "masks",
    "centres",
)


def build_index(raw: Path, parsed: Parsed, progress: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """Per rule set, the arrays ``__getitem__`` needs: boxes, 16x16 masks and centres of every kept object.

    Masks are decoded once per annotation (shared between the rule sets) at the image file's own size, as
    sg2im does per item. Missing or unreadable image files are collected and reported together, by path.
    """
    src = parsed.source
    files = (raw / src.instances, raw / src.stuff)
    sizes: dict[int, tuple[int, int]] = {}
    done: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # id(annotation) -> (box, mask, centre)
    problems: list[str] = []
    union = list(dict.fromkeys(i for m in MODES for i in parsed.kept[m]))
    for image_id in progress_bar(union, f"coco_stuff: indexing {src.name}", quiet=not progress):
        try:
            ww, hh = sizes[image_id] = image_size_of(raw / src.images / parsed.images[image_id][0])
        except (FileNotFoundError, ValueError) as e:
            problems.append(str(e))
            continue
        todo = list({id(a.ann): a for m in MODES for a in parsed.objects[m].get(image_id, ())}.values())
        boxes = np.empty((len(todo), 4), dtype=np.float32)
        masks = np.zeros((len(todo), MASK_SIZE, MASK_SIZE), dtype=np.uint8)
        for j, a in enumerate(todo):
            x, y, w, h = (float(v) for v in a.ann["bbox"])
            boxes[j] = (x / ww, y / hh, (x + w) / ww, (y + h) / hh)
            try:
                full = decode_segmentation(a.ann["segmentation"], ww, hh)
            except (ValueError, TypeError, KeyError, IndexError, OverflowError) as e:
                raise ValueError(
                    f"{files[a.file]}: annotations[{a.k}].segmentation (image {image_id}): {e}"
                ) from None
            crop = crop_to_box(full, a.ann["bbox"])
            if crop.size:  # empty only for a box outside the image: sg2im would crash, here the mask is empty
                masks[j] = resize_mask(crop)
        centres = mask_centres(boxes, masks)
        for j, a in enumerate(todo):
            done[id(a.ann)] = (boxes[j], masks[j], centres[j])
    if problems:
        missing = all(p.startswith("image file missing") for p in problems)
        lines = "\n  ".join(problems[:10]) + (
            f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        )
        msg = f"coco_stuff {src.name}: {len(problems)} image file(s) missing or unreadable:\n  {lines}"
        raise (FileNotFoundError if missing else ValueError)(msg)
    row = {image_id: r for r, image_id in enumerate(union)}
    out = {}
    for mode in MODES:
        ids = parsed.kept[mode]
        anns = [a.ann for i in ids for a in parsed.objects[mode][i]]
        out[mode] = {
            "image_id": np.asarray(ids, dtype=np.int64),
            "image_row": np.asarray([row[i] for i in ids], dtype=np.int64),
            "file_name": np.asarray([parsed.images[i][0] for i in ids], dtype=str),
            "file_size": np.asarray([sizes[i] for i in ids], dtype=np.int64).reshape(-1, 2),
            "obj_ptr": np.cumsum([0] + [len(parsed.objects[mode][i]) for i in ids]).astype(np.int64),
            "category": np.asarray([a["category_id"] for a in anns], dtype=np.int64),
            "bbox": np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4),
            "iscrowd": np.asarray([a.get("iscrowd", 0) == 1 for a in anns], dtype=np.uint8),
            "ann_id": np.asarray([a["id"] if _is_int(a.get("id")) else -1 for a in anns], dtype=np.int64),
            "boxes": concat_rows([done[id(a)][0] for a in anns], (4,), np.float32),
            "masks": concat_rows([done[id(a)][1] for a in anns], (MASK_SIZE, MASK_SIZE), np.uint8),
            "centres": concat_rows([done[id(a)][2] for a in anns], (2,), np.float32),
        }
    return out


# ---------------------------------------------------------------------------------------------------------
# The prepared root: index files, split manifests, the manifest and the report


def prepared_dir(root: Path) -> Path:
    return root / PREPARED


def index_path(root: Path, source: str, mode: str) -> Path:
    return prepared_dir(root) / "index" / f"{source}_{mode}.npz"


def split_manifest_path(root: Path, split: str) -> Path:
    return prepared_dir(root) / "splits" / f"{split}.json"


def image_cache_path(root: Path, source: str, size: int) -> Path:
    return prepared_dir(root) / "images" / f"{source}_{size}.npy"


def _image_table(arrays: dict[str, dict[str, np.ndarray]]) -> list[tuple[str, tuple[int, int], str]]:
    """(file name, file size, image id) of each row of a source's image cache (the union of its rule sets)."""
    n = 1 + max((int(a["image_row"].max()) for a in arrays.values() if len(a["image_row"])), default=-1)
    table: list[Any] = [None] * n
    for a in arrays.values():
        for r, name, wh, i in zip(
            a["image_row"].tolist(), a["file_name"].tolist(), a["file_size"].tolist(), a["image_id"].tolist()
        ):
            table[r] = (name, tuple(wh), str(i))
    return table


def _write_image_cache(
    path: Path, image_dir: Path, table: Sequence[tuple[str, tuple[int, int], str]], size: int, progress: bool
) -> None:
    """Every image of ``table`` through ``load_image`` into a uint8 ``[N, 3, size, size]`` .npy file, so
    items at that size are bit-identical to decoding the JPEG (and every kept image is checked to decode)."""
    rows = progress_bar(table, f"coco_stuff: {size} px image cache", quiet=not progress)
    images = (load_image(image_dir / name, size, file_size, image_id) for name, file_size, image_id in rows)
    write_image_array(path, images, len(table), size)


def _signature(raw: Path, source: Source) -> dict[str, list[int]]:
    """(bytes, mtime_ns) of a source's input files: a cheap staleness check of a prepared index."""
    out = {}
    for rel in source.files:
        st = (raw / rel).stat()
        out[rel] = [st.st_size, st.st_mtime_ns]
    return out


def _read_index(path: Path, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """Load an index file; raises ValueError (with the reason) if it is unreadable, stale or inconsistent."""
    a, stored = read_npz(path, _INDEX_KEYS)
    if stored != meta:
        raise ValueError("built from other inputs or by another index version")
    n, o = len(a["image_id"]), len(a["category"])
    ok = a["obj_ptr"].shape == (n + 1,) and a["obj_ptr"][-1] == o and len(a["file_name"]) == n
    ok = (
        ok
        and a["boxes"].shape == (o, 4)
        and a["masks"].shape == (o, MASK_SIZE, MASK_SIZE)
        and len(a["centres"]) == o
    )
    if not ok:
        raise ValueError("arrays have inconsistent shapes")
    return a


def _part(part: str, sizes: SplitSizes) -> slice:
    """The rows of a filtered image list that a split takes (``SplitDef.part``)."""
    if part == "head":
        return slice(0, sizes.num_val)
    if part == "after_head":
        return slice(sizes.num_val, sizes.num_val + sizes.num_test)
    return slice(None)


def _input_status(raw: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    status, missing = {}, []
    for src in SOURCES.values():
        for rel in (*src.files, src.images):
            p = raw / rel
            present = p.is_dir() if rel == src.images else p.is_file()
            status[rel] = {"present": present}
            if not present:
                missing.append(rel)
    return status, missing


def prepare_root(root: Path, raw: Path, progress: bool = True) -> tuple[dict[str, Any], str]:
    """Check the raw files, index every source whose inputs are all present, write the split manifests and
    ``prepared/manifest.json``; returns (manifest, report). The caller holds the prepared root's lock."""
    t0 = time.perf_counter()
    sizes = SplitSizes.read(raw)
    inputs, missing = _input_status(raw)
    manifest: dict[str, Any] = {
        "dataset": DATASET,
        "index_version": INDEX_VERSION,
        "split_version": _split_version(sizes),
        "raw": str(raw.resolve()),
        "sizes": sizes.to_json(),
        "inputs": inputs,
        "missing": missing,
        "mask_resize": "scikit-image 0.14 resize(255.0 * crop, (16, 16), mode='constant') > 128 [0.14]",
        "relation_seed": RELATION_SEED,
        "sources": {},
        "splits": {},
        "warnings": [],
    }
    for src in SOURCES.values():
        if any(rel in missing for rel in (*src.files, src.images)):
            continue
        for rel in src.files:
            st = (raw / rel).stat()
            inputs[rel].update(bytes=st.st_size, mtime_ns=st.st_mtime_ns, sha256=sha256_file(raw / rel))
        parsed = parse_source(raw, src)
        arrays = build_index(raw, parsed, progress)
        entry: dict[str, Any] = {"stats": parsed.stats, "signature": _signature(raw, src), "index": {}}
        for mode in MODES:
            path = index_path(root, src.name, mode)
            write_npz(path, arrays[mode], _index_meta(src, mode, entry["signature"]))
            entry["index"][mode] = str(path.relative_to(prepared_dir(root)))
        table = _image_table(arrays)
        entry["image_cache"] = {}
        for size in IMAGE_CACHE_SIZES:
            path = image_cache_path(root, src.name, size)
            _write_image_cache(path, raw / src.images, table, size, progress)
            entry["image_cache"][str(size)] = {
                "path": str(path.relative_to(prepared_dir(root))),
                "rows": len(table),
            }
        manifest["sources"][src.name] = entry
        for split, sd in SPLITS.items():
            if sd.source != src.name:
                continue
            ids = [str(i) for i in arrays[sd.mode]["image_id"].tolist()][_part(sd.part, sizes)]
            expected = sizes.expected.get(split)
            record = {
                "dataset": DATASET,
                "split": split,
                "split_version": manifest["split_version"],
                "definition": sd.note,
                "source": sd.source,
                "rules": sd.mode,
                "fixture": sizes.fixture,
                "num_images": len(ids),
                "expected_num_images": expected,
                "count_mismatch": expected is not None and len(ids) != expected,
                "split_sha256": split_sha256(ids),
                "ids": sorted(ids, key=int),
            }
            atomic_write_json(split_manifest_path(root, split), record)
            manifest["splits"][split] = {k: v for k, v in record.items() if k != "ids"}
            if record["count_mismatch"]:
                manifest["warnings"].append(
                    f"{split}: {len(ids):,} images, expected {expected:,} ({sd.note})"
                )
    manifest["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(prepared_dir(root) / "manifest.json", manifest)
    return manifest, format_report(manifest, root)


def _split_version(sizes: SplitSizes) -> str:
    return f"{SPLIT_VERSION}+fixture" if sizes.fixture else SPLIT_VERSION


def _index_meta(src: Source, mode: str, signature: dict[str, Any]) -> dict[str, Any]:
    return {"index_version": INDEX_VERSION, "source": src.name, "mode": mode, "signature": signature}


def format_report(manifest: dict[str, Any], root: Path) -> str:
    """The human-readable report of :func:`prepare_root`: inputs, filter statistics, split sizes, warnings."""
    fixture = " (FIXTURE: split sizes from sg2i_fixture.json)" if manifest["sizes"]["fixture"] else ""
    lines = [
        f"coco_stuff: raw {manifest['raw']} -> prepared {prepared_dir(root)}{fixture}",
        f"  split definition v{manifest['split_version']}, index v{manifest['index_version']}, "
        f"sg2im rules (area > {MIN_OBJECT_SIZE:.0%}, {MIN_OBJECTS}-{MAX_OBJECTS} objects, no 'other', "
        "stuff_only, 2017 stuff-challenge ids)",
        "inputs:",
    ]
    for rel, st in manifest["inputs"].items():
        if not st["present"]:
            lines.append(f"  MISSING  {rel}\n           get it from {WHERE_TO_GET[rel]}")
        elif "sha256" in st:
            lines.append(f"  ok       {rel}  {st['bytes'] / 1e6:,.1f} MB  sha256 {st['sha256']}")
        else:
            lines.append(f"  ok       {rel}")
    if any("sha256" in st for st in manifest["inputs"].values()):
        lines.append(
            "  (no published checksums are known for these files; the sha256 are recorded in the manifest)"
        )
    for name, entry in manifest["sources"].items():
        for mode, st in entry["stats"].items():
            lines.append(
                f"{name} ({mode} rules): {st['images']:,} images, {st['images_with_stuff']:,} with stuff, "
                f"{st['challenge_ids']:,} challenge ids; annotations {st['annotations']:,}: dropped "
                f"{st.get('dropped_small', 0):,} with box area <= 2%, {st.get('dropped_other', 0):,} 'other'"
                + (f", {st.get('dropped_crowd', 0):,} iscrowd" if mode == "lostgan" else "")
                + f"; images dropped: {st.get('dropped_no_stuff', 0):,} without stuff, "
                f"{st.get('dropped_not_challenge', 0):,} not in the challenge ids, "
                f"{st.get('dropped_few_objects', 0):,} with < {MIN_OBJECTS} objects, "
                f"{st.get('dropped_many_objects', 0):,} with > {MAX_OBJECTS}; kept {st['kept']:,}"
            )
    val = manifest["sources"].get("val2017", {}).get("stats", {}).get("sg2im")
    if val is not None:
        n, head = val["kept"], manifest["sizes"]["num_val"]
        lines.append(
            f"  val2017 pool (sg2im rules): {n:,} images; val = the first {min(n, head):,}, test = the next "
            f"{max(0, min(n - head, manifest['sizes']['num_test'])):,}"
            + (
                ""
                if n == head + manifest["sizes"]["num_test"]
                else f" ({n - head - manifest['sizes']['num_test']:+,} vs val + test: "
                "LayoutDiffusion's 'last 2,048' would differ from 'the 2,048 after val')"
            )
        )
    lines.append("splits:")
    for split in SPLITS:
        rec = manifest["splits"].get(split)
        if rec is None:
            lines.append(f"  {split:<14} not prepared (inputs of {SPLITS[split].source} missing)")
            continue
        exp = rec["expected_num_images"]
        flag = "" if exp is None else ("  ok" if not rec["count_mismatch"] else "  MISMATCH")
        lines.append(
            f"  {split:<14} {rec['num_images']:>7,} images (expected: {'-' if exp is None else f'{exp:,}'})"
            f"{flag}  split_sha256 {rec['split_sha256'][:16]}  {split_manifest_path(root, split)}"
        )
    if manifest["warnings"]:
        bar = "!" * 100
        lines += [
            bar,
            "!! WARNING: split sizes differ from the expected ones. Results on these splits are NOT",
            "!! comparable with published numbers (wrong stuff annotations or missing challenge ids?):",
        ]
        lines += [f"!!   {w}" for w in manifest["warnings"]]
        lines += ["!! The manifests record count_mismatch: true; results record their split_sha256.", bar]
    if manifest["missing"]:
        lines.append(f"missing: {', '.join(manifest['missing'])}")
    lines.append(f"done in {manifest.get('seconds', 0):.1f} s")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# The dataset


def default_root() -> Path:
    """``SG2I_DATA_ROOT/coco_stuff``: the raw files (unless prepared from elsewhere) and ``prepared/``."""
    return data_root() / DATASET


def _read_manifest(root: Path) -> dict[str, Any] | None:
    path = prepared_dir(root) / "manifest.json"
    if not path.is_file():
        return None
    try:
        m = read_json(path, "coco_stuff manifest")
    except ValueError:
        return None
    return m if isinstance(m, dict) and m.get("index_version") == INDEX_VERSION else None


def _stale(manifest: dict[str, Any], source: str) -> str | None:
    """Why the prepared ``source`` cannot be used as is (None if it can)."""
    raw = Path(manifest["raw"])
    entry = manifest["sources"].get(source)
    if entry is None:
        return f"{source} was not prepared"
    if SplitSizes.read(raw).to_json() != manifest["sizes"]:
        return f"the fixture marker {raw / FIXTURE_MARKER} changed"
    try:
        if _signature(raw, SOURCES[source]) != entry["signature"]:
            return "its input files changed"
    except FileNotFoundError:
        return "its input files are gone"
    return None


def _check_image_cache(root: Path, entry: dict[str, Any], size: int) -> Path | None:
    """The prepared image cache for ``size`` (None if sizes of this kind are decoded per item)."""
    info = entry.get("image_cache", {}).get(str(size))
    if info is None:
        return None
    path = prepared_dir(root) / info["path"]
    check_image_array(path, info["rows"], size)
    return path


def _missing_message(split: str, raw: Path, missing: Sequence[str]) -> str:
    lines = [f"coco_stuff split {split!r} needs raw files that are missing under {raw}:"]
    lines += [f"  {rel}\n      get it from {WHERE_TO_GET[rel]}" for rel in missing]
    lines.append(
        "Put them there (or anywhere, then `python -m benchmark prepare coco_stuff --raw DIR`); "
        "the default root is SG2I_DATA_ROOT/coco_stuff. See datasets/coco_stuff/README.md."
    )
    return "\n".join(lines)


@register("dataset", "coco_stuff")
class CocoStuffDataset(SceneGraphDataset):
    """COCO-Stuff 2017 with sg2im's filters, masks and synthetic geometric relations (needs COCO files)."""

    name = DATASET
    mask_size = MASK_SIZE

    def __init__(
        self,
        split: str,
        image_size: int,
        arrays: dict[str, np.ndarray],
        rows: np.ndarray,
        image_dir: Path,
        split_version: str,
        image_cache: Path | None = None,
    ) -> None:
        self.vocab = VOCAB
        self.split = split
        self.image_size = image_size
        self.split_version = split_version
        self._a = arrays
        self._rows = rows
        self._image_dir = image_dir
        self._cache_file = image_cache  # uint8 [N, 3, S, S] at image_size, opened lazily (memory-mapped)
        self._cache: np.ndarray | None = None
        self.image_ids: list[str] = [str(i) for i in arrays["image_id"][rows].tolist()]
        self.split_sha256 = split_sha256(self.image_ids)

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers reopen the memory map instead of receiving a copy of it.
        return {**self.__dict__, "_cache": None}

    @classmethod
    def build(cls, split: str, image_size: int, root: Path | None = None, **kwargs: Any) -> CocoStuffDataset:
        """Load ``split`` at ``image_size`` px from ``root`` (default ``SG2I_DATA_ROOT/coco_stuff``).

        Prepares the root on first use (or when its inputs changed) from the raw files recorded in
        ``prepared/manifest.json``, else from the root itself; raises FileNotFoundError naming what is
        missing.
        """
        if kwargs:
            raise TypeError(f"coco_stuff: unexpected option(s) {sorted(kwargs)}")
        if split not in SPLITS:
            raise ValueError(f"unknown coco_stuff split {split!r}; valid splits: {', '.join(SPLITS)}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"coco_stuff: image_size must be an integer >= 8, got {image_size!r}")
        root = Path(root) if root is not None else default_root()
        sd = SPLITS[split]
        src = SOURCES[sd.source]
        manifest = _read_manifest(root)
        raw = Path(manifest["raw"]) if manifest else root
        needed = [rel for rel in (*src.files, src.images) if not (raw / rel).exists()]
        if manifest is None and needed:
            raise FileNotFoundError(_missing_message(split, raw, needed))
        with file_lock(prepared_dir(root) / ".lock"):
            manifest = _read_manifest(root)
            reason = "it was never prepared" if manifest is None else _stale(manifest, sd.source)
            for attempt in range(2):
                if reason is not None:
                    if needed:
                        raise FileNotFoundError(_missing_message(split, raw, needed))
                    if manifest is not None:
                        warnings.warn(f"coco_stuff: re-preparing {root} because {reason}", stacklevel=2)
                    manifest, _ = prepare_root(root, raw)
                entry = manifest["sources"][sd.source]
                path = index_path(root, sd.source, sd.mode)
                try:
                    arrays = _read_index(path, _index_meta(src, sd.mode, entry["signature"]))
                    cache = _check_image_cache(root, entry, image_size)
                    break
                except ValueError as e:
                    reason = f"its prepared files are unusable ({e})"
                    if attempt:
                        raise RuntimeError(
                            f"coco_stuff: freshly prepared files under {root} do not read back: {e}"
                        ) from e
        sizes = SplitSizes(**manifest["sizes"])
        rows = np.arange(len(arrays["image_id"]))[_part(sd.part, sizes)]
        rec = manifest["splits"][split]
        if rec["count_mismatch"]:
            warnings.warn(
                f"coco_stuff {split}: {rec['num_images']:,} images, expected {rec['expected_num_images']:,}: "
                f"results are not comparable with published numbers (see {split_manifest_path(root, split)})",
                stacklevel=2,
            )
        return cls(split, image_size, arrays, rows, raw / src.images, manifest["split_version"], cache)

    @classmethod
    def prepare(cls, root: Path | None = None, raw: Path | None = None) -> str:
        """Check the raw files under ``raw`` (default: ``root``), index what is complete and write the split
        manifests under ``root/prepared`` (default root ``SG2I_DATA_ROOT/coco_stuff``).

        Returns the report; raises FileNotFoundError with the report when an input is missing (it lists each
        missing file and where to get it). Nothing is downloaded. Count mismatches are reported, not raised.
        """
        root = Path(root) if root is not None else default_root()
        raw = Path(raw) if raw is not None else root
        if not raw.is_dir():
            raise FileNotFoundError(
                f"coco_stuff: raw folder {raw} not found; it must hold annotations/ and images/ "
                "(see datasets/coco_stuff/README.md)"
            )
        with file_lock(prepared_dir(root) / ".lock"):
            manifest, report = prepare_root(root, raw)
        if manifest["warnings"]:
            warnings.warn(
                "coco_stuff: split sizes differ from the expected ones: " + "; ".join(manifest["warnings"]),
                stacklevel=2,
            )
        if manifest["missing"]:
            raise FileNotFoundError(report)
        return report

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> SceneGraphItem:
        index = check_index(index, len(self), f"coco_stuff {self.split}")
        row = int(self._rows[index])
        a = self._a
        o0, o1 = int(a["obj_ptr"][row]), int(a["obj_ptr"][row + 1])
        k = o1 - o0
        boxes = a["boxes"][o0:o1]
        objs = torch.zeros(k + 1, dtype=torch.long)  # __image__ = 0, last
        objs[:k] = torch.from_numpy(a["category"][o0:o1])
        box_t = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(k + 1, 1)
        box_t[:k] = torch.from_numpy(boxes)
        masks = torch.ones(k + 1, MASK_SIZE, MASK_SIZE)
        masks[:k] = torch.from_numpy(a["masks"][o0:o1])
        image_id = self.image_ids[index]
        triples = scene_triples(relation_rng(image_id), boxes, a["centres"][o0:o1])
        return SceneGraphItem(
            image=self._image(row, image_id),
            objs=objs,
            boxes=box_t,
            triples=torch.tensor(triples, dtype=torch.long).reshape(-1, 3),
            masks=masks,
            has_layout=torch.ones(k + 1, dtype=torch.bool),
            image_id=image_id,
        )

    def _image(self, row: int, image_id: str) -> torch.Tensor:
        """float32 [3, S, S] in [0, 1]: ``load_image`` / 255 (sg2im ``Resize`` + ``ToTensor``, without its
        ImageNet normalisation), from the prepared image cache when there is one for this size."""
        a = self._a
        if self._cache_file is not None:
            if self._cache is None:
                self._cache = np.load(self._cache_file, mmap_mode="r")
            pixels = np.array(self._cache[int(a["image_row"][row])])
        else:
            path = self._image_dir / str(a["file_name"][row])
            pixels = load_image(path, self.image_size, tuple(a["file_size"][row].tolist()), image_id)
        return torch.from_numpy(pixels).float().div_(255.0)

    def phrases(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Natural phrases: ``"wall-concrete"`` -> ``"concrete wall"``, ``"sky-other"`` -> ``"sky"``,
        ``"__image__"`` -> ``"image"``, a few COCO names spelled out (``"tv"`` -> ``"television"``); unused
        slots -> ``"unused"``."""
        from benchmark.text_encoders.phrases import natural_phrase

        objs = tuple(
            "unused" if n.startswith("__none_") else _PHRASE_OVERRIDES.get(n) or natural_phrase(n)
            for n in self.vocab.object_idx_to_name
        )
        return objs, tuple(natural_phrase(p) for p in self.vocab.pred_idx_to_name)

    @classmethod
    def write_fixture(
        cls, root: Path, extra_images: int = 0, extra_size: tuple[int, int] = (640, 480)
    ) -> None:
        """A tiny COCO-Stuff copy in the real on-disk format under ``root``
        (:mod:`benchmark.data.fixtures.coco_stuff`)."""
        from benchmark.data.fixtures.coco_stuff import write_fixture

        write_fixture(Path(root), extra_images=extra_images, extra_size=extra_size)


def write_vocab_file(dest: Path | None = None) -> Path:
    """(Re)write ``datasets/coco_stuff/vocab.json`` from the code's category tables; returns its path."""
    path = (Path(dest) if dest is not None else assets_dir() / DATASET) / "vocab.json"
    atomic_write_json(
        path,
        {
            **VOCAB.to_json(),
            "unused_slots": [i for i, n in enumerate(OBJECT_NAMES) if n.startswith("__none_")],
        },
    )
    return path
