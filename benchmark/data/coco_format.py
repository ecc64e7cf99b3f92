"""The COCO 2017 / COCO-Stuff 2017 files as google/sg2im reads them (``sg2im/data/coco.py``, commit 2638373).

The category table of the releases (80 things in ``instances_*2017.json``, 91 stuff + ``other`` in
``stuff_*2017.json``), checks of their JSON fields and of the challenge id files, and what sg2im computes
per object and image: the segmentation decoded with pycocotools, cropped to the box and resized to 16 x 16
as scikit-image 0.14 did, the mask centre, the geometric predicate between two objects, the synthetic
triples of an image and its pixels (PIL bilinear resize). :mod:`benchmark.data.coco_stuff` builds the
dataset (filters, splits, prepared index, items) from these; the fixture writer
(:mod:`benchmark.data.fixtures.coco_stuff`) uses the same tables.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmark.io import read_json
from benchmark.scene_graph import IN_IMAGE

MASK_SIZE = 16  # sg2im CocoSceneGraphDataset mask_size

# ---------------------------------------------------------------------------------------------------------
# Categories of instances_*2017.json (80 things) and stuff_*2017.json (91 stuff + other)

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
CATEGORY_ID = {name: cid for cid, name in CATEGORIES.items()}

# sg2im's COCO predicates (``CocoSceneGraphDataset.__init__``): __in_image__ and six geometric relations.
PREDICATES: tuple[str, ...] = (IN_IMAGE, "left of", "right of", "above", "below", "inside", "surrounding")
_PRED_IDX = {name: i for i, name in enumerate(PREDICATES)}

# ---------------------------------------------------------------------------------------------------------
# Per-object geometry: mask crop + resize, mask centres, the relation rule


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
    return direction_from_centres(
        np.asarray(centre_s, dtype=np.float32), np.asarray(centre_o, dtype=np.float32)
    )


def direction_from_centres(c_s: Sequence[float], c_o: Sequence[float]) -> str:
    """sg2im's angular rule for subject centre ``c_s`` and object centre ``c_o`` (image coordinates, y down).

    The difference is taken in the centres' own type (float32 for :func:`predicate`, as sg2im's tensors;
    float64 for ``benchmark.data.shapes``)."""
    theta = math.atan2(c_s[1] - c_o[1], c_s[0] - c_o[0])
    if theta >= 3 * math.pi / 4 or theta <= -3 * math.pi / 4:
        return "left of"
    if -3 * math.pi / 4 <= theta < -math.pi / 4:
        return "above"
    if -math.pi / 4 <= theta < math.pi / 4:
        return "right of"
    return "below"  # pi/4 <= theta < 3pi/4


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
# Image files


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


# ---------------------------------------------------------------------------------------------------------
# Fields of the JSON files


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
