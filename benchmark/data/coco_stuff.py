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
  ``skimage.transform.resize(255.0 * crop, (16, 16), mode='constant') > 128`` (:func:`resize_mask`); the
  ``__image__`` node (box ``[0, 0, 1, 1]``, all-ones mask) last; one synthetic geometric triple per object
  (:func:`scene_triples`), then ``(i, __in_image__, __image__)`` for every object.

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
dataset; ``split_version`` is the split-definition version of the protocol (``1.0``).
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import time
import warnings
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from benchmark.batch import SceneGraphItem
from benchmark.interfaces import SceneGraphDataset
from benchmark.io import atomic_write_bytes, atomic_write_json, file_lock, read_json, sha256_file, sha256_json
from benchmark.paths import assets_dir, data_root
from benchmark.progress import tqdm
from benchmark.registry import register
from benchmark.scene_graph import IMAGE_TOKEN, IN_IMAGE, Vocab

DATASET = "coco_stuff"
SPLIT_VERSION = "1.0"  # version of the split definition below (= "split_version" of the protocol files)
INDEX_VERSION = "1"  # bump on any change to the index contents; stale indexes are rebuilt
MASK_SIZE = 16
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
# Vocabulary: the categories of instances_*2017.json (80 things) and stuff_*2017.json (91 stuff + other)

# fmt: off
THING_CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"), (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"), (6, "bus", "vehicle"), (7, "train", "vehicle"), (8, "truck", "vehicle"),
    (9, "boat", "vehicle"), (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"), (14, "parking meter", "outdoor"), (15, "bench", "outdoor"),
    (16, "bird", "animal"), (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"),
    (20, "sheep", "animal"), (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"),
    (24, "zebra", "animal"), (25, "giraffe", "animal"), (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"), (31, "handbag", "accessory"), (32, "tie", "accessory"),
    (33, "suitcase", "accessory"), (34, "frisbee", "sports"), (35, "skis", "sports"),
    (36, "snowboard", "sports"), (37, "sports ball", "sports"), (38, "kite", "sports"),
    (39, "baseball bat", "sports"), (40, "baseball glove", "sports"), (41, "skateboard", "sports"),
    (42, "surfboard", "sports"), (43, "tennis racket", "sports"), (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"), (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"),
    (50, "spoon", "kitchen"), (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"),
    (54, "sandwich", "food"), (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"),
    (58, "hot dog", "food"), (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"),
    (62, "chair", "furniture"), (63, "couch", "furniture"), (64, "potted plant", "furniture"),
    (65, "bed", "furniture"), (67, "dining table", "furniture"), (70, "toilet", "furniture"),
    (72, "tv", "electronic"), (73, "laptop", "electronic"), (74, "mouse", "electronic"),
    (75, "remote", "electronic"), (76, "keyboard", "electronic"), (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"), (79, "oven", "appliance"), (80, "toaster", "appliance"),
    (81, "sink", "appliance"), (82, "refrigerator", "appliance"), (84, "book", "indoor"),
    (85, "clock", "indoor"), (86, "vase", "indoor"), (87, "scissors", "indoor"), (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
)
# Stuff ids 92..182 in order (nightrome/cocostuff labels.txt) and 183 "other"; supercategories are never read.
_STUFF = (
    "banner:textile blanket:textile branch:plant bridge:building building-other:building bush:plant "
    "cabinet:furniture-stuff cage:structural cardboard:raw-material carpet:floor ceiling-other:ceiling "
    "ceiling-tile:ceiling cloth:textile clothes:textile clouds:sky counter:furniture-stuff "
    "cupboard:furniture-stuff curtain:textile desk-stuff:furniture-stuff dirt:ground "
    "door-stuff:furniture-stuff fence:structural floor-marble:floor floor-other:floor floor-stone:floor "
    "floor-tile:floor floor-wood:floor flower:plant fog:water food-other:food-stuff fruit:food-stuff "
    "furniture-other:furniture-stuff grass:plant gravel:ground ground-other:ground hill:solid "
    "house:building leaves:plant light:furniture-stuff mat:textile metal:raw-material "
    "mirror-stuff:furniture-stuff moss:plant mountain:solid mud:ground napkin:textile net:structural "
    "paper:raw-material pavement:ground pillow:textile plant-other:plant plastic:raw-material "
    "platform:ground playingfield:ground railing:structural railroad:ground river:water road:ground "
    "rock:solid roof:building rug:textile salad:food-stuff sand:ground sea:water shelf:furniture-stuff "
    "sky-other:sky skyscraper:building snow:ground solid-other:solid stairs:furniture-stuff stone:solid "
    "straw:plant structural-other:structural table:furniture-stuff tent:building textile-other:textile "
    "towel:textile tree:plant vegetable:food-stuff wall-brick:wall wall-concrete:wall wall-other:wall "
    "wall-panel:wall wall-stone:wall wall-tile:wall wall-wood:wall water-other:water waterdrops:water "
    "window-blind:window window-other:window wood:solid"
)
# fmt: on
STUFF_CATEGORIES: tuple[tuple[int, str, str], ...] = (
    *((92 + i, *entry.split(":")) for i, entry in enumerate(_STUFF.split())),  # type: ignore[misc]
    (183, "other", "other"),
)
CATEGORIES: dict[int, str] = {cid: name for cid, name, _ in THING_CATEGORIES + STUFF_CATEGORIES}
_CATEGORY_ID = {name: cid for cid, name in CATEGORIES.items()}
OBJECT_NAMES: tuple[str, ...] = tuple(
    IMAGE_TOKEN if i == 0 else CATEGORIES.get(i, f"__none_{i}__") for i in range(1 + max(CATEGORIES))
)
PREDICATES: tuple[str, ...] = (IN_IMAGE, "left of", "right of", "above", "below", "inside", "surrounding")
VOCAB = Vocab(OBJECT_NAMES, PREDICATES)
_PRED_IDX = {name: i for i, name in enumerate(PREDICATES)}
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
# Geometry: mask crop + resize, mask centres, the relation rule


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolation taps of one axis: output i samples input ``(i + 0.5) * n_in / n_out - 0.5``;
    neighbours outside ``[0, n_in)`` have weight 0 (``mode='constant'``, ``cval=0``)."""
    x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    i0 = np.floor(x).astype(np.intp)
    t = x - i0
    i1 = i0 + 1
    w0 = np.where(i0 >= 0, 1.0 - t, 0.0)
    w1 = np.where(i1 < n_in, t, 0.0)
    return np.clip(i0, 0, n_in - 1), w0, np.clip(i1, 0, n_in - 1), w1


def resize_mask(crop: np.ndarray, size: int = MASK_SIZE, anti_aliasing: bool = False) -> np.ndarray:
    """``skimage.transform.resize(255.0 * crop, (size, size), mode='constant') > 128`` without scikit-image.

    sg2im (``__getitem__``, the ``imresize`` call, line 281 at the commit of issue #5) pins scikit-image
    0.14.0, whose ``resize`` does no anti-aliasing: bilinear sampling at ``(i + 0.5) * scale - 0.5`` with
    zeros outside the crop, then ``clip=True`` clips to the crop's own [min, max] (so an all-ones crop stays
    all ones). ``anti_aliasing=True`` reproduces today's scikit-image default instead (a Gaussian blur with
    ``sigma = max(0, (scale - 1) / 2)``, zero padding, before the sampling). Both are checked bit for bit
    against scikit-image 0.26 in the tests. Returns a bool ``[size, size]`` array; ``crop`` is a 2-D 0/1
    array.
    """
    crop = np.asarray(crop)
    if crop.ndim != 2 or crop.size == 0:
        raise ValueError(f"resize_mask: expected a non-empty 2-D mask crop, got shape {crop.shape}")
    lo, hi = crop.min(), crop.max()
    if lo == hi:  # clip=True: the output range is the input's single value
        return np.full((size, size), bool(lo > 0))
    img = 255.0 * crop.astype(np.float64)
    h, w = img.shape
    if anti_aliasing:
        from scipy import ndimage

        sigma = np.maximum(0.0, (np.array([h, w]) / size - 1.0) / 2.0)
        img = ndimage.gaussian_filter(img, sigma, mode="constant", cval=0.0)
    r0, rw0, r1, rw1 = _axis_weights(h, size)
    c0, cw0, c1, cw1 = _axis_weights(w, size)
    rows = rw0[:, None] * img[r0] + rw1[:, None] * img[r1]
    out = rows[:, c0] * cw0[None, :] + rows[:, c1] * cw1[None, :]
    return out > 128


def crop_to_box(mask: np.ndarray, bbox: Sequence[float]) -> np.ndarray:
    """The part of a full-image mask under a COCO ``[x, y, w, h]`` box, as sg2im crops it (``__getitem__``):
    ``mask[round(y):round(y + h), round(x):round(x + w)]`` with Python's round (half to even) and at least one
    row and column; the slice is empty only for a box that lies outside the mask."""
    x, y, w, h = (float(v) for v in bbox)
    mx0, mx1 = int(round(x)), int(round(x + w))
    my0, my1 = int(round(y)), int(round(y + h))
    mx1 = max(mx0 + 1, mx1)
    my1 = max(my0 + 1, my1)
    return mask[my0:my1, mx0:mx1]


def decode_segmentation(seg: Any, width: int, height: int) -> np.ndarray:
    """Full ``[height, width]`` uint8 mask of a COCO segmentation (sg2im ``seg_to_mask``): polygons are
    rasterised at (height, width) and merged, uncompressed RLE goes through ``frPyObjects`` and compressed RLE
    is decoded as is (both at their own ``size``). Raises ValueError for anything else."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        if not seg or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in seg):
            raise ValueError(
                "polygon segmentation must be a non-empty list of [x1, y1, x2, y2, ...] (>= 3 points)"
            )
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg, dict) and isinstance(seg.get("size"), list) and len(seg["size"]) == 2:
        counts = seg.get("counts")
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(seg, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = seg
        else:
            raise ValueError("RLE 'counts' must be a list of ints or a compressed string")
    else:
        raise ValueError("expected a polygon list or an RLE {'counts': ..., 'size': [h, w]}")
    with warnings.catch_warnings():  # pycocotools 2.0 passes copy=False to np.array (numpy 2 deprecation)
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle)


def mask_centres(boxes: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """float32 ``[K, 2]`` object centres computed with torch exactly as sg2im does ("Compute centers of all
    objects"): the mean of ``linspace(x0, x1, M)`` / ``linspace(y0, y1, M)`` (float32) over the mask cells,
    or ``0.5 * (x0 + x1)`` / ``0.5 * (y0 + y1)`` for an empty mask. ``boxes``: float32 [K, 4]; ``masks``:
    [K, M, M]."""
    out = np.empty((len(boxes), 2), dtype=np.float32)
    bt = torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32))
    mt = torch.from_numpy(np.ascontiguousarray(masks) > 0)
    mh, mw = mt.shape[1:]
    for k in range(len(bt)):
        x0, y0, x1, y1 = bt[k]
        m = mt[k]
        if m.sum() == 0:
            cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
        else:
            xs = torch.linspace(float(x0), float(x1), mw).view(1, mw).expand(mh, mw)
            ys = torch.linspace(float(y0), float(y1), mh).view(mh, 1).expand(mh, mw)
            cx, cy = xs[m].mean(), ys[m].mean()
        out[k] = (float(cx), float(cy))
    return out


def predicate(box_s: np.ndarray, box_o: np.ndarray, centre_s: np.ndarray, centre_o: np.ndarray) -> str:
    """sg2im's geometric predicate for subject s and object o ("Check for inside / surrounding"), first match:
    ``surrounding`` if box s strictly contains box o, ``inside`` if the reverse, else by
    ``theta = atan2(dy, dx)`` of ``d = centre_s - centre_o`` (float32, image y down): ``left of`` if
    ``theta >= 3pi/4 or theta <= -3pi/4``, ``above`` if ``-3pi/4 <= theta < -pi/4``, ``right of`` if
    ``-pi/4 <= theta < pi/4``, ``below`` otherwise. Boxes ``(x0, y0, x1, y1)`` and centres as float32, like
    sg2im's FloatTensors, so the result is bit-identical (``benchmark.data.shapes.relation_from_geometry`` is
    the same rule in float64 from masks, exact only away from the thresholds)."""
    sx0, sy0, sx1, sy1 = np.asarray(box_s, dtype=np.float32)
    ox0, oy0, ox1, oy1 = np.asarray(box_o, dtype=np.float32)
    if sx0 < ox0 and sx1 > ox1 and sy0 < oy0 and sy1 > oy1:
        return "surrounding"
    if sx0 > ox0 and sx1 < ox1 and sy0 > oy0 and sy1 < oy1:
        return "inside"
    d = np.asarray(centre_s, dtype=np.float32) - np.asarray(centre_o, dtype=np.float32)
    theta = math.atan2(float(d[1]), float(d[0]))
    if theta >= 3 * math.pi / 4 or theta <= -3 * math.pi / 4:
        return "left of"
    if -3 * math.pi / 4 <= theta < -math.pi / 4:
        return "above"
    if -math.pi / 4 <= theta < math.pi / 4:
        return "right of"
    return "below"


def relation_rng(image_id: str) -> random.Random:
    """The per-image random stream of the synthetic relations (a pure function of the image id)."""
    return random.Random(f"{RELATION_SEED}:{image_id}")


def scene_triples(rng: random.Random, boxes: np.ndarray, centres: np.ndarray) -> list[list[int]]:
    """Triples of one image with n real objects (the ``__image__`` node is index n), sg2im's "Add triples":
    for each object ``cur`` in order, ``other = rng.choice(the other objects)``, ``(cur, other)`` if
    ``rng.random() > 0.5`` else ``(other, cur)``, predicate by :func:`predicate`; then
    ``(i, __in_image__, n)`` for every object. Same random calls in the same order as sg2im, so equal
    streams give equal graphs."""
    n = len(boxes)
    triples: list[list[int]] = []
    for cur in range(n):
        choices = [k for k in range(n) if k != cur]
        if not choices:
            break
        other = rng.choice(choices)
        s, o = (cur, other) if rng.random() > 0.5 else (other, cur)
        triples.append([s, _PRED_IDX[predicate(boxes[s], boxes[o], centres[s], centres[o])], o])
    triples += [[i, _PRED_IDX[IN_IMAGE], n] for i in range(n)]
    return triples


# ---------------------------------------------------------------------------------------------------------
# Reading and filtering the raw files


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _load_coco(path: Path, what: str, keys: Sequence[str]) -> dict[str, Any]:
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path}: expected a JSON object with fields {list(keys)}")
    for key in keys:
        if not isinstance(data.get(key), list):
            raise ValueError(f"{what} {path}: field {key!r} is missing or not a list")
    return data


def _file_categories(path: Path, cats: list[Any]) -> dict[int, str]:
    out: dict[int, str] = {}
    for k, c in enumerate(cats):
        if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
            raise ValueError(f"{path}: categories[{k}] must have an integer 'id' and a string 'name'")
        out[c["id"]] = c["name"]
    return out


def _check_categories(files: Sequence[tuple[Path, list[Any]]]) -> dict[int, str]:
    """The union of the files' categories; it must be COCO-Stuff's (ids 1..183 as in ``CATEGORIES``)."""
    union: dict[int, str] = {}
    for path, cats in files:
        for cid, name in _file_categories(path, cats).items():
            if CATEGORIES.get(cid) != name:
                want = f"{CATEGORIES[cid]!r}" if cid in CATEGORIES else "no category (not a COCO-Stuff id)"
                raise ValueError(
                    f"{path}: field 'categories': id {cid} is named {name!r}, COCO-Stuff has {want}"
                )
            union[cid] = name
    missing = sorted(set(CATEGORIES) - set(union))
    if missing:
        names = ", ".join(f"{i} {CATEGORIES[i]!r}" for i in missing[:8])
        raise ValueError(
            f"field 'categories' of {' + '.join(str(p) for p, _ in files)}: "
            f"{len(missing)} COCO-Stuff categories missing ({names}{', ...' if len(missing) > 8 else ''}); "
            "the vocabulary needs all 172"
        )
    return union


def read_ids_file(path: Path) -> set[int]:
    """Image ids of a ``deprecated-challenge2017/*-ids.txt`` file, one integer per line."""
    if not path.is_file():
        raise FileNotFoundError(f"challenge id file not found: {path}")
    ids = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        s = line.strip()
        if not s:
            continue
        try:
            ids.add(int(s))
        except ValueError:
            raise ValueError(f"{path}: line {n}: expected an integer image id, got {s[:40]!r}") from None
    return ids


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


def _quiet(progress: bool, n: int) -> bool | None:
    """tqdm's ``disable``: off when asked or for small jobs, automatic (off without a terminal) otherwise."""
    return True if not progress or n < 500 else None


def load_image(path: Path, size: int, file_size: tuple[int, int], image_id: str = "") -> np.ndarray:
    """uint8 ``[3, size, size]``: ``PIL.Image.open -> convert('RGB') -> resize((size, size), BILINEAR)``, the
    pixels of sg2im's ``Resize`` before ``ToTensor`` (which divides by 255). ``file_size`` is the
    (width, height) the index was built for; errors name the file."""
    what = f" (coco_stuff image {image_id})" if image_id else ""
    try:
        with Image.open(path) as im:
            if im.size != tuple(file_size):
                raise ValueError(
                    f"image file {path}{what} is {im.size[0]}x{im.size[1]} px but was "
                    f"{file_size[0]}x{file_size[1]} when coco_stuff was prepared: "
                    "re-run `python -m benchmark prepare coco_stuff`"
                )
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            small = rgb.resize((size, size), Image.Resampling.BILINEAR)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file missing: {path}{what}") from None
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"corrupt image file {path}{what}: {e}") from None
    return np.ascontiguousarray(np.asarray(small).transpose(2, 0, 1))


def image_size_of(path: Path) -> tuple[int, int]:
    """(width, height) of an image file from its header; errors name the file."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise FileNotFoundError(f"image file missing: {path}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"corrupt image file {path}: {e}") from None


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
    bar = tqdm(
        union, desc=f"coco_stuff: indexing {src.name}", unit="img", disable=_quiet(progress, len(union))
    )
    for image_id in bar:
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
            "boxes": _stack([done[id(a)][0] for a in anns], (0, 4), np.float32),
            "masks": _stack([done[id(a)][1] for a in anns], (0, MASK_SIZE, MASK_SIZE), np.uint8),
            "centres": _stack([done[id(a)][2] for a in anns], (0, 2), np.float32),
        }
    return out


def _stack(rows: list[np.ndarray], empty_shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.stack(rows).astype(dtype, copy=False) if rows else np.zeros(empty_shape, dtype)


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
    """Every image of ``table`` through :func:`load_image` into a uint8 ``[N, 3, size, size]`` .npy file, so
    items at that size are bit-identical to decoding the JPEG (and every kept image is checked to decode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(table), 3, size, size))
        rows = tqdm(
            table, desc=f"coco_stuff: {size} px image cache", unit="img", disable=_quiet(progress, len(table))
        )
        for r, (file_name, file_size, image_id) in enumerate(rows):
            arr[r] = load_image(image_dir / file_name, size, file_size, image_id)
        arr.flush()
        del arr
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def split_sha256(ids: Sequence[str]) -> str:
    """sha256 of the sorted (string) image ids as compact JSON: the split manifest hash results record."""
    return sha256_json(sorted(ids))


def _signature(raw: Path, source: Source) -> dict[str, list[int]]:
    """(bytes, mtime_ns) of a source's input files: a cheap staleness check of a prepared index."""
    out = {}
    for rel in source.files:
        st = (raw / rel).stat()
        out[rel] = [st.st_size, st.st_mtime_ns]
    return out


def _write_index(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays, meta=np.asarray(json.dumps(meta, sort_keys=True)))
    atomic_write_bytes(path, buf.getvalue())


def _read_index(path: Path, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """Load an index file; raises ValueError (with the reason) if it is unreadable, stale or inconsistent."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in (*_INDEX_KEYS, "meta") if k not in z.files]
            if missing:
                raise ValueError(f"missing arrays {missing}")
            a = {k: z[k] for k in _INDEX_KEYS}
            stored = json.loads(str(z["meta"]))
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, json.JSONDecodeError) as e:
        raise ValueError(f"unreadable ({type(e).__name__}: {e})") from None
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


def _part(ids: list[str], part: str, sizes: SplitSizes) -> list[str]:
    if part == "head":
        return ids[: sizes.num_val]
    if part == "after_head":
        return ids[sizes.num_val : sizes.num_val + sizes.num_test]
    return ids


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
            _write_index(path, arrays[mode], _index_meta(src, mode, entry["signature"]))
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
            ids = _part([str(i) for i in arrays[sd.mode]["image_id"].tolist()], sd.part, sizes)
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
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"image cache {path}: {e}") from None
    if arr.shape != (info["rows"], 3, size, size) or arr.dtype != np.uint8:
        raise ValueError(f"image cache {path} has shape {arr.shape} {arr.dtype}")
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
        rows = np.arange(len(arrays["image_id"]))
        if sd.part == "head":
            rows = rows[: sizes.num_val]
        elif sd.part == "after_head":
            rows = rows[sizes.num_val : sizes.num_val + sizes.num_test]
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
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for coco_stuff {self.split} ({n} images)")
        index %= n
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
        """float32 [3, S, S] in [0, 1]: :func:`load_image` / 255 (sg2im ``Resize`` + ``ToTensor``, without its
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
        """Write a tiny COCO-Stuff copy in the real on-disk format under ``root`` (:func:`write_fixture`)."""
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


# ---------------------------------------------------------------------------------------------------------
# The fixture: a tiny COCO-Stuff copy in the exact on-disk format, exercising every rule

# Objects: (kind, category name, x0, y0, x1, y1) in pixels. Kinds: "poly" an octagon inscribed in the box,
# "poly2" two polygons, "rect" a rectangle polygon (exact bbox), "crowd" iscrowd=1 uncompressed-RLE ellipse
# (instances), "stuff" a compressed-RLE region with a wavy top edge (stuff file).
_Obj = tuple[str, str, int, int, int, int]
# fmt: off
_FIXTURE: dict[str, list[tuple[int, tuple[int, int], bool, list[_Obj]]]] = {
    # (id, (width, height), in the challenge ids, objects); JSON order is not id order.
    "val2017": [
        # kept: wall + crowd person + dog strictly inside the person's box + floor (LostGAN: 3, no crowd)
        (632, (80, 60), True, [("stuff", "wall-concrete", 0, 0, 80, 30), ("crowd", "person", 10, 8, 60, 56),
                               ("poly", "dog", 20, 20, 40, 40), ("stuff", "floor-wood", 0, 30, 80, 60)]),
        # kept with 3: 'other' dropped, the 8x12 cat box is exactly 2% (not > 2%) and dropped
        (139, (80, 60), True, [("poly", "person", 8, 6, 30, 50), ("poly2", "dog", 40, 30, 70, 56),
                               ("stuff", "wall-concrete", 0, 0, 80, 28), ("stuff", "other", 0, 28, 80, 60),
                               ("rect", "cat", 60, 4, 68, 16)]),
        # dropped: 2 objects left after the 2% rule
        (285, (80, 60), True, [("poly", "car", 5, 5, 40, 40), ("stuff", "road", 0, 40, 80, 60),
                               ("rect", "bird", 70, 2, 78, 14)]),
        # dropped (9 objects); LostGAN rules drop the crowd person and keep it with 8
        (885, (80, 60), True, [("crowd", "person", 2, 2, 30, 40), ("poly", "person", 30, 5, 50, 45),
                               ("poly", "bicycle", 50, 20, 78, 55), ("poly", "dog", 5, 35, 25, 58),
                               ("poly", "car", 40, 40, 70, 58), ("poly", "bench", 10, 10, 40, 30),
                               ("stuff", "grass", 0, 40, 80, 60), ("stuff", "tree", 0, 0, 40, 25),
                               ("stuff", "sky-other", 40, 0, 80, 20)]),
        # dropped: no stuff annotation (stuff_only)
        (776, (80, 60), True, [("poly", "person", 5, 5, 30, 50), ("poly", "dog", 35, 30, 60, 55),
                               ("poly", "cat", 60, 10, 78, 40)]),
        # kept: portrait image
        (1296, (60, 80), True, [("poly", "giraffe", 10, 10, 45, 75), ("stuff", "sky-other", 0, 0, 60, 40),
                                ("stuff", "tree", 0, 40, 60, 80)]),
        # kept: exactly 8 objects
        (724, (80, 60), True, [("poly", "person", 2, 2, 20, 40), ("poly", "person", 20, 2, 38, 40),
                               ("poly", "kite", 40, 2, 60, 20), ("poly", "dog", 40, 30, 60, 58),
                               ("rect", "frisbee", 62, 30, 76, 40), ("stuff", "sky-other", 0, 0, 80, 25),
                               ("stuff", "grass", 0, 25, 80, 60), ("stuff", "tree", 60, 0, 80, 30)]),
        # kept with 3 (sg2im keeps crowd annotations); LostGAN rules: 2 -> dropped
        (1000, (80, 60), True, [("crowd", "person", 5, 5, 40, 55), ("poly", "dog", 45, 30, 75, 58),
                                ("stuff", "grass", 0, 30, 80, 60)]),
        # kept: its only stuff is 'other' (dropped) but the image counts as having stuff
        (1268, (80, 60), True, [("poly", "person", 2, 5, 25, 55), ("poly", "horse", 28, 10, 60, 55),
                                ("poly", "dog", 62, 30, 78, 55), ("stuff", "other", 0, 0, 80, 60)]),
        # kept with 4: the 10x10 stop sign is just over 2%; after val + test, so in neither
        (1353, (80, 60), True, [("poly", "bus", 10, 15, 70, 50), ("rect", "stop sign", 2, 2, 12, 12),
                                ("stuff", "road", 0, 45, 80, 60), ("stuff", "building-other", 0, 0, 80, 20)]),
        # dropped: not in the challenge val ids
        (1425, (80, 60), False, [("poly", "train", 5, 10, 75, 45), ("stuff", "railroad", 0, 40, 80, 60),
                                 ("stuff", "sky-other", 0, 0, 80, 15)]),
    ],
    "train2017": [
        (9, (80, 60), True, [("poly", "person", 20, 10, 50, 58), ("stuff", "grass", 0, 35, 80, 60),
                             ("stuff", "sky-other", 0, 0, 80, 35)]),
        (25, (80, 60), True, [("poly", "giraffe", 5, 5, 35, 58), ("poly", "giraffe", 40, 10, 70, 58),
                              ("stuff", "tree", 0, 0, 80, 30), ("stuff", "sky-other", 0, 0, 80, 15)]),
        (30, (80, 60), True, [("crowd", "person", 0, 20, 80, 60), ("poly", "umbrella", 10, 2, 40, 22),
                              ("poly", "bench", 45, 35, 75, 55), ("stuff", "pavement", 0, 40, 80, 60),
                              ("stuff", "building-other", 0, 0, 80, 30)]),
        # dropped: not in the challenge train ids
        (34, (80, 60), False, [("poly", "cat", 10, 10, 60, 50), ("stuff", "blanket", 0, 30, 80, 60),
                               ("stuff", "wall-other", 0, 0, 80, 30)]),
        (36, (80, 60), True, [("poly", "cow", 10, 20, 60, 55), ("stuff", "grass", 0, 30, 80, 60),
                              ("stuff", "tree", 0, 0, 80, 30)]),
        (42, (64, 64), True, [("poly", "pizza", 5, 5, 40, 40), ("poly", "cup", 45, 5, 60, 25),
                              ("poly", "fork", 42, 30, 60, 60), ("rect", "knife", 2, 45, 30, 55),
                              ("stuff", "table", 0, 0, 64, 64), ("stuff", "napkin", 30, 40, 64, 64)]),
        # dropped: 2 objects
        (49, (80, 60), True, [("poly", "dog", 10, 10, 70, 55), ("stuff", "floor-wood", 0, 40, 80, 60)]),
        (61, (80, 60), True, [("poly", "pizza", 10, 10, 50, 50), ("poly", "cup", 55, 10, 75, 35),
                              ("stuff", "table", 0, 0, 80, 60)]),
    ],
}
# fmt: on
# Split sizes of the fixture (recorded in its marker file; the published sizes do not apply to it).
FIXTURE_NUM_VAL, FIXTURE_NUM_TEST = 2, 4
FIXTURE_KEPT = {"train": 6, "val": 2, "test": 4, "train_lostgan": 6, "test_lostgan": 7}


def _octagon(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    angles = [math.pi / 8 + k * math.pi / 4 for k in range(8)]
    return [
        round(v, 2)
        for a in angles
        for v in (
            cx + rx * math.cos(a) / math.cos(math.pi / 8),
            cy + ry * math.sin(a) / math.cos(math.pi / 8),
        )
    ]


def _clip_poly(poly: list[float], w: int, h: int) -> list[float]:
    return [round(min(max(v, 0.0), (w if i % 2 == 0 else h) - 0.01), 2) for i, v in enumerate(poly)]


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"counts": counts, "size": list(mask.shape)}


def _fixture_annotation(
    obj: _Obj, size: tuple[int, int], rng: np.random.Generator
) -> tuple[dict[str, Any], bool]:
    """(annotation without ids, is stuff) in the real COCO / COCO-Stuff fields."""
    from pycocotools import mask as mask_utils

    kind, name, x0, y0, x1, y1 = obj
    w, h = size
    cid = _CATEGORY_ID[name]
    yy, xx = np.arange(h)[:, None], np.arange(w)[None, :]
    if kind in ("poly", "rect", "poly2"):
        if kind == "rect":
            polys = [[float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]]
        elif kind == "poly":
            polys = [_clip_poly(_octagon(x0, y0, x1, y1), w, h)]
        else:
            xm = (x0 + x1) / 2
            polys = [
                [float(x0), float(y0), xm - 1, float(y0), xm - 1, float(y1), float(x0), float(y1)],
                [xm + 1, float(y1), float(x1), float(y1), (xm + 1 + x1) / 2, float(y0)],
            ]
        xs = [v for p in polys for v in p[0::2]]
        ys = [v for p in polys for v in p[1::2]]
        bbox = [min(xs), min(ys), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]
        area = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(polys, h, w))))
        return {"segmentation": polys, "area": area, "iscrowd": 0, "bbox": bbox, "category_id": cid}, False
    if kind == "crowd":
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        m = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1
        seg: dict[str, Any] = _uncompressed_rle(m)
        rle = mask_utils.frPyObjects(seg, h, w)
        stuff = False
    elif kind == "stuff":
        wave = y0 + (0 if y0 == 0 else 1.5 + 1.5 * np.sin(xx / 4.0 + rng.uniform(0, 6)))
        m = (xx >= x0) & (xx < x1) & (yy >= wave) & (yy < y1)
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        seg = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
        stuff = True
    else:
        raise ValueError(f"unknown fixture object kind {kind!r}")
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    ann = {
        "segmentation": seg,
        "area": float(mask_utils.area(rle)),
        "iscrowd": int(kind == "crowd"),
        "bbox": bbox,
        "category_id": cid,
    }
    return ann, stuff


def _colour(cid: int) -> np.ndarray:
    return np.array([(cid * 67) % 200 + 40, (cid * 131) % 200 + 40, (cid * 29) % 200 + 40], dtype=np.float64)


def _render(size: tuple[int, int], anns: list[dict[str, Any]], rng: np.random.Generator) -> Image.Image:
    """A picture: a gradient, stuff regions, then things, each in its category's colour, plus noise."""
    w, h = size
    g = (
        np.linspace(0, 1, w)[None, :, None] * np.array([40.0, 10.0, -20.0])
        + np.linspace(0, 1, h)[:, None, None] * 30
    )
    img = np.broadcast_to(120.0 + g, (h, w, 3)).copy()
    for ann in sorted(anns, key=lambda a: a["category_id"] < 92):  # stuff first, things on top
        m = decode_segmentation(ann["segmentation"], w, h).astype(bool)
        img[m] = _colour(ann["category_id"])
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8))


def _extra_objects(rng: np.random.Generator, size: tuple[int, int]) -> list[_Obj]:
    """3..8 objects over 2% of a ``size`` image: things as octagons, stuff as horizontal bands."""
    w, h = size
    things = [n for _, n, _ in THING_CATEGORIES]
    stuffs = [n for _, n, _ in STUFF_CATEGORIES[:-1]]
    out: list[_Obj] = []
    for _ in range(int(rng.integers(1, 5))):
        bw, bh = int(rng.integers(w // 5, w // 2)), int(rng.integers(h // 5, h // 2))
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        out.append(("poly", str(rng.choice(things)), x0, y0, x0 + bw, y0 + bh))
    n_stuff = int(rng.integers(2, 5))
    edges = np.linspace(0, h, n_stuff + 1).astype(int)
    out += [
        ("stuff", str(rng.choice(stuffs)), 0, int(edges[i]), w, int(edges[i + 1])) for i in range(n_stuff)
    ]
    return out


def write_fixture(root: Path, extra_images: int = 0, extra_size: tuple[int, int] = (640, 480)) -> None:
    """Write a tiny COCO-Stuff 2017 copy in the exact on-disk format under ``root``.

    ``annotations/instances_{train,val}2017.json`` (real top-level keys and fields; polygon and ``iscrowd``
    uncompressed-RLE segmentations; all 80 thing categories), ``annotations/stuff_{train,val}2017.json``
    (compressed-RLE stuff annotations; all 91 stuff categories and ``other`` = 183),
    ``annotations/deprecated-challenge2017/{train,val}-ids.txt``, JPEGs of the declared sizes under
    ``images/{train,val}2017/`` and the marker ``sg2i_fixture.json`` with the fixture's split sizes (val 2,
    test 4). Every filter rule is exercised (see ``_FIXTURE``). ``extra_images`` adds that many always-kept
    train images of ``extra_size`` (the benchmark's scaled fixture; their JPEGs are hard links to a few
    rendered ones). Deterministic.
    """
    root = Path(root)
    rng = np.random.default_rng(20170901)
    licenses = [
        {"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"}
    ]
    info = {
        "description": "sg2i-bench COCO-Stuff fixture (synthetic; COCO 2017 format)",
        "url": "",
        "version": "1.0",
        "year": 2017,
        "contributor": "sg2i-bench",
        "date_created": "2017/09/01",
    }
    thing_cats = [{"supercategory": s, "id": i, "name": n} for i, n, s in THING_CATEGORIES]
    stuff_cats = [{"supercategory": s, "id": i, "name": n} for i, n, s in STUFF_CATEGORIES]
    extra_rng = np.random.default_rng(1)
    for source, images in _FIXTURE.items():
        entries = list(images)
        if source == "train2017":
            entries += [
                (1_000_000 + i, extra_size, True, _extra_objects(extra_rng, extra_size))
                for i in range(extra_images)
            ]
        image_dir = root / SOURCES[source].images
        image_dir.mkdir(parents=True, exist_ok=True)
        imgs, inst_anns, stuff_anns, challenge = [], [], [], []
        extra_rendered: list[Path] = []
        for image_id, size, in_challenge, objs in entries:
            file_name = f"{image_id:012d}.jpg"
            imgs.append(
                {
                    "license": 4,
                    "file_name": file_name,
                    "coco_url": f"http://images.cocodataset.org/{source}/{file_name}",
                    "height": size[1],
                    "width": size[0],
                    "date_captured": "2013-11-14 16:28:13",
                    "flickr_url": "",
                    "id": image_id,
                }
            )
            if in_challenge:
                challenge.append(image_id)
            anns = []
            for obj in objs:
                ann, is_stuff = _fixture_annotation(obj, size, rng)
                target = stuff_anns if is_stuff else inst_anns
                ann = {**ann, "image_id": image_id, "id": (10_000_000 if is_stuff else 1) + len(target)}
                target.append(ann)
                anns.append(ann)
            path = image_dir / file_name
            path.unlink(missing_ok=True)
            if image_id < 1_000_000 or len(extra_rendered) < 16:
                _render(size, anns, rng).save(path, "JPEG", quality=90)
                if image_id >= 1_000_000:
                    extra_rendered.append(path)
            else:  # scaled fixture: the bytes of one of 16 rendered images (same size), as a hard link
                src = extra_rendered[image_id % len(extra_rendered)]
                try:
                    os.link(src, path)
                except OSError:
                    path.write_bytes(src.read_bytes())
        ann_dir = root / "annotations"
        ann_dir.mkdir(parents=True, exist_ok=True)
        common = {"info": info, "licenses": licenses, "images": imgs}
        (ann_dir / f"instances_{source}.json").write_text(
            json.dumps({**common, "annotations": inst_anns, "categories": thing_cats}, separators=(",", ":"))
        )
        (ann_dir / f"stuff_{source}.json").write_text(
            json.dumps({**common, "annotations": stuff_anns, "categories": stuff_cats}, separators=(",", ":"))
        )
        ids_path = root / SOURCES[source].challenge_ids
        ids_path.parent.mkdir(parents=True, exist_ok=True)
        ids_path.write_text("".join(f"{i}\n" for i in challenge))
    expected = {
        **FIXTURE_KEPT,
        "train": FIXTURE_KEPT["train"] + extra_images,
        "train_lostgan": FIXTURE_KEPT["train_lostgan"] + extra_images,
    }
    atomic_write_json(
        root / FIXTURE_MARKER,
        {
            "note": "sg2i-bench test fixture: synthetic data in the COCO-Stuff format; "
            "these split sizes replace the published ones. Never put this file next to real COCO data.",
            "num_val": FIXTURE_NUM_VAL,
            "num_test": FIXTURE_NUM_TEST,
            "expected": expected,
        },
    )
