"""``shapes``: a procedural scene-graph dataset embedded in the suite (nothing to download).

Each image shows 2 to 5 flat-coloured shapes (4 shapes x 6 colours) on a plain grey background; with some
probability one small shape lies strictly inside a bigger one. The scene graph is built exactly as sg2im
builds COCO graphs from geometry (google/sg2im ``sg2im/data/coco.py``, ``CocoSceneGraphDataset.__getitem__``):
one random ``left of / right of / above / below / inside / surrounding`` triple per object, derived from the
boxes and 16x16 masks by :func:`relation_from_geometry`, then ``(i, __in_image__, __image__)`` for every
object, with the ``__image__`` node (box ``[0, 0, 1, 1]``, all-ones mask) appended last.

Generation is a pure function of the image id: image ``seen-000123`` comes from
``np.random.default_rng([SEED, 0, 123])`` (pool 0 = seen combinations, pool 1 = ``unseen-*``), and pixels
are computed analytically with numpy from normalised geometry, so 32 and 64 px show the same scene and the
bytes do not depend on an image library. Four colour-shape combinations never occur in train/val/test;
every ``test_unseen`` image contains at least one of them (compositional generalisation).

The frozen split files ``datasets/shapes/splits/*.json`` list the ids and a hash of the annotations; they are
(re)written by :func:`write_split_files`. Rendered splits are cached as ``.npz`` under
``cache_dir()/shapes/g<GENERATOR_VERSION>/``. Any change to the generator that changes the data must bump
``GENERATOR_VERSION`` and rewrite the split files; :meth:`ShapesDataset.build` fails loudly otherwise.
"""

from __future__ import annotations

import io
import json
import math
import time
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.batch import SceneGraphItem
from benchmark.interfaces import SceneGraphDataset
from benchmark.io import atomic_write_bytes, atomic_write_json, file_lock, read_json, sha256_json
from benchmark.paths import assets_dir, cache_dir
from benchmark.progress import tqdm
from benchmark.registry import register
from benchmark.scene_graph import IMAGE_TOKEN, IN_IMAGE, Vocab

DATASET = "shapes"
GENERATOR_VERSION = "1"  # bump on any change that alters generated ids, graphs or pixels
SPLIT_VERSION = "1.0"
SEED = 20240601
MASK_SIZE = 16
IMAGE_SIZES = (32, 64)

# Well-separated colours (min pairwise RGB distance 100, >= 150 to the background).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 30, 45),
    "green": (40, 165, 60),
    "blue": (40, 90, 220),
    "yellow": (240, 225, 50),
    "purple": (145, 55, 185),
    "orange": (245, 130, 20),
}
BACKGROUND = (200, 200, 200)
SHAPES = ("circle", "square", "triangle", "diamond")
# Held out of train/val/test: one per shape, each with a different colour.
UNSEEN_COMBINATIONS = ("blue circle", "orange square", "red triangle", "green diamond")

OBJECT_NAMES: tuple[str, ...] = (IMAGE_TOKEN, *(f"{c} {s}" for c in COLOURS for s in SHAPES))
PREDICATES: tuple[str, ...] = (IN_IMAGE, "left of", "right of", "above", "below", "inside", "surrounding")
VOCAB = Vocab(OBJECT_NAMES, PREDICATES)
_UNSEEN_IDX = tuple(OBJECT_NAMES.index(n) for n in UNSEEN_COMBINATIONS)
_SEEN_IDX = tuple(i for i in range(1, len(OBJECT_NAMES)) if i not in _UNSEEN_IDX)
_ALL_IDX = tuple(range(1, len(OBJECT_NAMES)))

# Image pools: id prefix -> (pool id in the seed, object classes allowed).
POOLS = {"seen": 0, "unseen": 1}
# split -> (pool, first index, number of images); seen-pool ranges are disjoint.
SPLITS: dict[str, tuple[str, int, int]] = {
    "train": ("seen", 0, 4000),
    "val": ("seen", 4000, 256),
    "test": ("seen", 4256, 512),
    "test_unseen": ("unseen", 0, 512),
}

# Layout parameters, in units of the image side. Coordinates are snapped to multiples of 1/1024 so that
# float32 boxes are exact (relations recomputed from stored boxes match the generated ones bit for bit).
_Q = 1024
_MARGIN = 0.02  # free boxes keep this distance to the image border
_GAP = 0.03  # and at least this gap to each other (on x or on y)
_FREE_SIDE = (0.20, 0.30)
_CONTAINER_SIDE = (0.48, 0.58)
_INNER_SIDE = (0.18, 0.26)
_P_NESTED = 0.35
_PLACE_TRIES = 60
_LAYOUT_TRIES = 200
# Box-normalised region (u0, v0, u1, v1) of each container shape that the inner box must lie in: the
# largest axis-aligned square inscribed in the shape, shrunk by a margin so the container shows around it.
_INNER_REGION = {
    "circle": (0.19, 0.19, 0.81, 0.81),
    "square": (0.12, 0.12, 0.88, 0.88),
    "triangle": (0.30, 0.55, 0.70, 0.95),
    "diamond": (0.29, 0.29, 0.71, 0.71),
}


def object_factors(name: str) -> tuple[str, str]:
    """(colour, shape) of an object name such as ``"red circle"``; ``__image__`` maps to itself twice."""
    if name == IMAGE_TOKEN:
        return (IMAGE_TOKEN, IMAGE_TOKEN)
    colour, shape = name.split(" ")
    return (colour, shape)


# ---------------------------------------------------------------------------------------------------------
# Geometry: silhouettes, mask centroids and the sg2im relation rule


def _inside_shape(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether box-normalised points (u right, v down, both in [0, 1]) lie in ``shape`` inscribed in its box.

    circle: the inscribed disc; square: the whole box; triangle: apex at the top centre, base along the
    bottom edge; diamond: vertices at the edge midpoints.
    """
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "square":
        return np.broadcast_to(np.ones((), dtype=bool), np.broadcast_shapes(np.shape(u), np.shape(v)))
    if shape == "triangle":
        return np.abs(u - 0.5) <= 0.5 * v
    if shape == "diamond":
        return np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5
    raise ValueError(f"unknown shape {shape!r}; valid shapes: {', '.join(SHAPES)}")


def shape_mask(shape: str, mask_size: int = MASK_SIZE) -> np.ndarray:
    """The ``[M, M]`` uint8 silhouette of ``shape`` within its box, sampled at the cell centres.

    This is sg2im's mask convention (the object's mask cropped to its box and resized to M x M); the
    silhouette is amodal: a container's mask is its full shape, also where a smaller object lies on it.
    """
    c = (np.arange(mask_size) + 0.5) / mask_size
    return np.ascontiguousarray(_inside_shape(shape, c[None, :], c[:, None]), dtype=np.uint8)


_SHAPE_MASKS = {s: shape_mask(s) for s in SHAPES}


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def mask_centroid(box: Sequence[float] | np.ndarray | torch.Tensor, mask: Any) -> tuple[float, float]:
    """Centre (x, y) of an object as sg2im computes it (``sg2im/data/coco.py``).

    The M x M mask grid is mapped into the box with ``linspace(x0, x1, M)`` / ``linspace(y0, y1, M)``
    (grid points on the box edges, not cell centres) and the coordinates of the cells where the mask is 1
    (here: > 0.5) are averaged; an empty mask gives the box centre.
    """
    x0, y0, x1, y1 = (float(t) for t in _to_numpy(box).reshape(4))
    m = _to_numpy(mask) > 0.5
    mh, mw = m.shape
    total = m.sum()
    if total == 0:
        return 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    xs = np.linspace(x0, x1, mw)
    ys = np.linspace(y0, y1, mh)
    return float((m.sum(axis=0) * xs).sum() / total), float((m.sum(axis=1) * ys).sum() / total)


def relation_from_geometry(box_s: Any, box_o: Any, mask_s: Any, mask_o: Any) -> str:
    """The predicate sg2im derives for subject ``s`` and object ``o`` from their layout (COCO rule).

    Verbatim from google/sg2im ``sg2im/data/coco.py`` (``CocoSceneGraphDataset.__getitem__``), first match:

    - ``surrounding`` if the subject box strictly contains the object box
      (``sx0 < ox0 and sx1 > ox1 and sy0 < oy0 and sy1 > oy1``);
    - ``inside`` if the object box strictly contains the subject box;
    - otherwise ``theta = atan2(dy, dx)`` of ``d = centre(s) - centre(o)`` (image coordinates, y down;
      centres from :func:`mask_centroid`): ``left of`` if ``theta >= 3pi/4 or theta <= -3pi/4``,
      ``above`` if ``-3pi/4 <= theta < -pi/4``, ``right of`` if ``-pi/4 <= theta < pi/4``,
      ``below`` if ``pi/4 <= theta < 3pi/4``.

    Boxes are ``(x0, y0, x1, y1)`` in [0, 1]; masks are ``[M, M]`` within the box (numpy or torch). sg2im does
    the arithmetic in float32 and this in float64; they differ only for angles within ~1e-7 of a threshold.
    """
    sx0, sy0, sx1, sy1 = (float(t) for t in _to_numpy(box_s).reshape(4))
    ox0, oy0, ox1, oy1 = (float(t) for t in _to_numpy(box_o).reshape(4))
    if sx0 < ox0 and sx1 > ox1 and sy0 < oy0 and sy1 > oy1:
        return "surrounding"
    if sx0 > ox0 and sx1 < ox1 and sy0 > oy0 and sy1 < oy1:
        return "inside"
    return direction_from_centres(mask_centroid(box_s, mask_s), mask_centroid(box_o, mask_o))


def direction_from_centres(c_s: Sequence[float], c_o: Sequence[float]) -> str:
    """sg2im's angular rule for subject centre ``c_s`` and object centre ``c_o`` (image coordinates, y down)."""
    theta = math.atan2(c_s[1] - c_o[1], c_s[0] - c_o[0])
    if theta >= 3 * math.pi / 4 or theta <= -3 * math.pi / 4:
        return "left of"
    if -3 * math.pi / 4 <= theta < -math.pi / 4:
        return "above"
    if -math.pi / 4 <= theta < math.pi / 4:
        return "right of"
    return "below"  # pi/4 <= theta < 3pi/4


# ---------------------------------------------------------------------------------------------------------
# Scene generation


@dataclass(frozen=True)
class Scene:
    """One generated scene graph; the ``__image__`` node is the last object (sg2im order)."""

    image_id: str
    objs: tuple[int, ...]  # vocabulary indices, O = n + 1
    boxes: tuple[tuple[float, float, float, float], ...]  # (x0, y0, x1, y1), multiples of 1/1024
    triples: tuple[tuple[int, int, int], ...]  # (s, p, o), local indices

    def masks(self) -> np.ndarray:
        """``[O, M, M]`` uint8 masks; the ``__image__`` node's is all ones."""
        out = np.ones((len(self.objs), MASK_SIZE, MASK_SIZE), dtype=np.uint8)
        for i, o in enumerate(self.objs[:-1]):
            out[i] = _SHAPE_MASKS[object_factors(OBJECT_NAMES[o])[1]]
        return out

    def to_json(self) -> list[Any]:
        """The hashed form: ``[id, object names, boxes rounded to 6 decimals, triples]``."""
        return [
            self.image_id,
            [OBJECT_NAMES[o] for o in self.objs],
            [[round(float(x), 6) for x in b] for b in self.boxes],
            [list(t) for t in self.triples],
        ]


def parse_image_id(image_id: str) -> tuple[str, int]:
    """``"seen-000123"`` -> ``("seen", 123)``; raises ValueError for anything else."""
    pool, _, num = image_id.partition("-")
    if pool not in POOLS or len(num) != 6 or not num.isdigit():
        raise ValueError(f"invalid shapes image id {image_id!r}; expected 'seen-NNNNNN' or 'unseen-NNNNNN'")
    return pool, int(num)


def split_ids(split: str) -> list[str]:
    """The image ids of a split, as the generator defines them (the split files freeze this list)."""
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; valid splits: {', '.join(SPLITS)}")
    pool, start, n = SPLITS[split]
    return [f"{pool}-{i:06d}" for i in range(start, start + n)]


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    # Only Generator.random() is used: its stream is the most stable one across numpy versions.
    return lo + (hi - lo) * float(rng.random())


def _randint(rng: np.random.Generator, n: int) -> int:
    return min(int(rng.random() * n), n - 1)


def _snap(x: float) -> float:
    return round(x * _Q) / _Q


def _separated(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[2] + _GAP <= b[0] or b[2] + _GAP <= a[0] or a[3] + _GAP <= b[1] or b[3] + _GAP <= a[1]


def _place(rng: np.random.Generator, sides: list[float]) -> list[tuple[float, float, float, float]] | None:
    """Random non-overlapping square boxes with the given sides (biggest first), or None if they don't fit."""
    boxes: list[tuple[float, float, float, float]] = []
    for side in sides:
        for _ in range(_PLACE_TRIES):
            x0 = _snap(_uniform(rng, _MARGIN, 1 - _MARGIN - side))
            y0 = _snap(_uniform(rng, _MARGIN, 1 - _MARGIN - side))
            box = (x0, y0, x0 + side, y0 + side)
            if all(_separated(box, b) for b in boxes):
                boxes.append(box)
                break
        else:
            return None
    return boxes


def _layout(rng: np.random.Generator, n: int, nested: bool, container_shape: str) -> list[tuple[float, ...]]:
    """n boxes sorted by decreasing size; if ``nested`` the last one lies inside the first (the container)."""
    n_free = n - 1 if nested else n
    for _ in range(_LAYOUT_TRIES):
        sides = [_snap(_uniform(rng, *_FREE_SIDE)) for _ in range(n_free)]
        if nested:
            sides[0] = _snap(_uniform(rng, *_CONTAINER_SIDE))
        sides.sort(reverse=True)
        boxes: list[tuple[float, ...]] | None = _place(rng, sides)  # type: ignore[assignment]
        if boxes is None:
            continue
        if nested:
            cx0, cy0, cx1, _ = boxes[0]
            cs = cx1 - cx0
            u0, v0, u1, v1 = _INNER_REGION[container_shape]
            hi = min(_INNER_SIDE[1], (u1 - u0) * cs, (v1 - v0) * cs)
            side = _snap(_uniform(rng, _INNER_SIDE[0], hi))
            x0 = _snap(_uniform(rng, cx0 + u0 * cs, cx0 + u1 * cs - side))
            y0 = _snap(_uniform(rng, cy0 + v0 * cs, cy0 + v1 * cs - side))
            boxes.append((x0, y0, x0 + side, y0 + side))
        return boxes
    raise RuntimeError(f"shapes: no layout of {n} objects found in {_LAYOUT_TRIES} tries (generator bug)")


def generate_scene(image_id: str) -> Scene:
    """The scene graph of one image id; a pure function of the id (see the module docstring)."""
    pool, index = parse_image_id(image_id)
    rng = np.random.default_rng([SEED, POOLS[pool], index])
    n = 2 + _randint(rng, 4)  # 2..5 objects
    nested = bool(rng.random() < _P_NESTED)
    # Classes: seen pool draws from the 20 seen combinations; the unseen pool forces one object (a random
    # slot) to be an unseen combination and draws the others from all 24.
    forced = _randint(rng, n) if pool == "unseen" else -1

    def draw(slot: int) -> int:
        choices = _UNSEEN_IDX if slot == forced else _SEEN_IDX if pool == "seen" else _ALL_IDX
        return choices[_randint(rng, len(choices))]

    classes = [draw(k) for k in range(n)]
    container_shape = object_factors(OBJECT_NAMES[classes[0]])[1]
    boxes = _layout(rng, n, nested, container_shape)
    if nested:
        # The inner object (last, smallest box) must differ in colour from its container to be visible.
        colour = object_factors(OBJECT_NAMES[classes[0]])[0]
        while object_factors(OBJECT_NAMES[classes[-1]])[0] == colour:
            classes[-1] = draw(n - 1)
    # Bigger first (draw order = object order); a stable sort keeps the container before its inner object.
    order = sorted(range(n), key=lambda k: -(boxes[k][2] - boxes[k][0]) * (boxes[k][3] - boxes[k][1]))
    objs = [classes[k] for k in order]
    boxes = [boxes[k] for k in order]
    masks = [_SHAPE_MASKS[object_factors(OBJECT_NAMES[o])[1]] for o in objs]

    # Relations exactly as sg2im/data/coco.py: one random partner per object, random direction.
    pred = VOCAB.pred_name_to_idx
    triples: list[tuple[int, int, int]] = []
    for cur in range(n):
        choices = [k for k in range(n) if k != cur]
        other = choices[_randint(rng, len(choices))]
        s, o = (cur, other) if rng.random() > 0.5 else (other, cur)
        triples.append((s, pred[relation_from_geometry(boxes[s], boxes[o], masks[s], masks[o])], o))
    triples += [(i, pred[IN_IMAGE], n) for i in range(n)]
    return Scene(
        image_id=image_id,
        objs=(*objs, OBJECT_NAMES.index(IMAGE_TOKEN)),
        boxes=(*(tuple(b) for b in boxes), (0.0, 0.0, 1.0, 1.0)),  # type: ignore[arg-type]
        triples=tuple(triples),
    )


def render(scene: Scene, image_size: int) -> np.ndarray:
    """uint8 ``[3, S, S]`` image of ``scene``: each pixel is coloured by the last object whose shape
    contains the pixel centre (objects drawn in order, bigger first), else the background. Hard edges."""
    s = image_size
    img = np.empty((3, s, s), dtype=np.uint8)
    img[:] = np.asarray(BACKGROUND, dtype=np.uint8)[:, None, None]
    c = (np.arange(s) + 0.5) / s
    for o, (x0, y0, x1, y1) in zip(scene.objs[:-1], scene.boxes[:-1]):
        colour, shape = object_factors(OBJECT_NAMES[o])
        jx = np.nonzero((c >= x0) & (c <= x1))[0]
        iy = np.nonzero((c >= y0) & (c <= y1))[0]
        if len(jx) == 0 or len(iy) == 0:
            continue
        inside = _inside_shape(
            shape, ((c[jx] - x0) / (x1 - x0))[None, :], ((c[iy] - y0) / (y1 - y0))[:, None]
        )
        patch = img[:, iy[0] : iy[-1] + 1, jx[0] : jx[-1] + 1]
        patch[:, inside] = np.asarray(COLOURS[colour], dtype=np.uint8)[:, None]
    return img


def annotations_sha256(scenes: Iterable[Scene]) -> str:
    """Fingerprint of a split's scene graphs (ids, objects, boxes rounded to 6 decimals, triples), in order."""
    return sha256_json([sc.to_json() for sc in scenes])


def split_sha256(ids: Sequence[str]) -> str:
    """sha256 of the sorted image ids as JSON (the split manifest hash)."""
    return sha256_json(sorted(ids))


def _progress(items: Sequence[str], desc: str) -> Iterable[str]:
    return tqdm(items, desc=desc, unit="img", disable=len(items) <= 300, leave=False)


def write_split_files(dest: Path | None = None) -> list[Path]:
    """(Re)write ``vocab.json`` and ``splits/*.json`` under ``dest`` (default ``datasets/shapes``).

    Split files are frozen data: run this only after a deliberate generator change (and bump
    ``GENERATOR_VERSION``). Returns the written paths.
    """
    dest = Path(dest) if dest is not None else assets_dir() / DATASET
    vocab = {**VOCAB.to_json(), "unseen_combinations": list(UNSEEN_COMBINATIONS)}
    written = [dest / "vocab.json"]
    atomic_write_json(written[0], vocab)
    for split in SPLITS:
        ids = split_ids(split)
        scenes = [generate_scene(i) for i in _progress(ids, f"shapes {split}")]
        path = dest / "splits" / f"{split}.json"
        atomic_write_json(
            path,
            {
                "dataset": DATASET,
                "split": split,
                "version": SPLIT_VERSION,
                "generator_version": GENERATOR_VERSION,
                "seed": SEED,
                "num_images": len(ids),
                "ids": ids,
                "annotations_sha256": annotations_sha256(scenes),
            },
        )
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------------------
# Split files and the cache


def _assets() -> Path:
    return assets_dir() / DATASET


def _check_size(image_size: int) -> None:
    if isinstance(image_size, bool) or image_size not in IMAGE_SIZES:
        raise ValueError(
            f"shapes: unsupported image_size {image_size!r}; supported sizes: {', '.join(map(str, IMAGE_SIZES))}"
        )


def _load_split_file(split: str) -> dict[str, Any]:
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; valid splits: {', '.join(SPLITS)}")
    path = _assets() / "splits" / f"{split}.json"
    meta = read_json(path, "shapes split file")
    expected = {"dataset": DATASET, "split": split, "generator_version": GENERATOR_VERSION}
    for key, want in expected.items():
        if meta.get(key) != want:
            raise ValueError(
                f"split file {path}: field {key!r} is {meta.get(key)!r}, expected {want!r} "
                "(split files and generator out of sync; see write_split_files)"
            )
    ids = meta.get("ids")
    if not isinstance(ids, list) or len(ids) != meta.get("num_images") or len(set(ids)) != len(ids):
        raise ValueError(f"split file {path}: 'ids' must be num_images unique image ids")
    meta["path"] = str(path)
    return meta


def _load_vocab() -> Vocab:
    path = _assets() / "vocab.json"
    vocab = Vocab.load(path)
    if vocab != VOCAB or read_json(path).get("unseen_combinations") != list(UNSEEN_COMBINATIONS):
        raise ValueError(
            f"vocabulary file {path} does not match the shapes generator (see write_split_files)"
        )
    return vocab


def cache_path(split: str, image_size: int, root: Path | None = None) -> Path:
    """``<root or cache_dir()/shapes>/g<GENERATOR_VERSION>/<split>_<size>.npz``."""
    base = Path(root) if root is not None else cache_dir() / DATASET
    return base / f"g{GENERATOR_VERSION}" / f"{split}_{image_size}.npz"


def _pack(scenes: Sequence[Scene], images: np.ndarray, meta: dict[str, Any]) -> bytes:
    objs = np.fromiter((o for sc in scenes for o in sc.objs), dtype=np.int64)
    boxes = np.asarray([b for sc in scenes for b in sc.boxes], dtype=np.float32).reshape(-1, 4)
    masks = np.concatenate([sc.masks() for sc in scenes]) if scenes else np.zeros((0, MASK_SIZE, MASK_SIZE))
    triples = np.asarray([t for sc in scenes for t in sc.triples], dtype=np.int64).reshape(-1, 3)
    obj_ptr = np.cumsum([0] + [len(sc.objs) for sc in scenes]).astype(np.int64)
    triple_ptr = np.cumsum([0] + [len(sc.triples) for sc in scenes]).astype(np.int64)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        images=images,
        objs=objs,
        boxes=boxes,
        masks=masks.astype(np.uint8),
        triples=triples,
        obj_ptr=obj_ptr,
        triple_ptr=triple_ptr,
        ids=np.asarray([sc.image_id for sc in scenes]),
        meta=np.asarray(json.dumps(meta, sort_keys=True)),
    )
    return buf.getvalue()


_KEYS = ("images", "objs", "boxes", "masks", "triples", "obj_ptr", "triple_ptr", "ids", "meta")


def _arrays_to_json(a: dict[str, np.ndarray]) -> list[list[Any]]:
    out = []
    boxes, objs, triples = a["boxes"].tolist(), a["objs"].tolist(), a["triples"].tolist()
    op, tp = a["obj_ptr"].tolist(), a["triple_ptr"].tolist()
    for i, image_id in enumerate(a["ids"].tolist()):
        out.append(
            [
                image_id,
                [OBJECT_NAMES[o] for o in objs[op[i] : op[i + 1]]],
                [[round(float(x), 6) for x in b] for b in boxes[op[i] : op[i + 1]]],
                triples[tp[i] : tp[i + 1]],
            ]
        )
    return out


def _read_cache(path: Path, split_meta: dict[str, Any], image_size: int) -> dict[str, np.ndarray]:
    """Load and validate a cache file; raises ValueError (with the reason) if it is corrupt or stale."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _KEYS if k not in z.files]
            if missing:
                raise ValueError(f"missing arrays {missing}")
            a = {k: z[k] for k in _KEYS}
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"unreadable ({type(e).__name__}: {e})") from None
    n = split_meta["num_images"]
    meta = json.loads(str(a["meta"]))
    if meta.get("generator_version") != GENERATOR_VERSION or meta.get("image_size") != image_size:
        raise ValueError(f"stale metadata {meta}")
    if a["ids"].tolist() != split_meta["ids"]:
        raise ValueError("image ids differ from the split file")
    if a["images"].shape != (n, 3, image_size, image_size) or a["images"].dtype != np.uint8:
        raise ValueError(f"images have shape {a['images'].shape} {a['images'].dtype}")
    o, t = len(a["objs"]), len(a["triples"])
    ok = (
        a["obj_ptr"].shape == (n + 1,)
        and a["triple_ptr"].shape == (n + 1,)
        and a["obj_ptr"][-1] == o
        and a["triple_ptr"][-1] == t
        and a["boxes"].shape == (o, 4)
        and a["masks"].shape == (o, MASK_SIZE, MASK_SIZE)
    )
    if not ok:
        raise ValueError("annotation arrays have inconsistent shapes")
    if sha256_json(_arrays_to_json(a)) != split_meta["annotations_sha256"]:
        raise ValueError("annotations do not match the split file's annotations_sha256")
    return a


def _generate(split: str, split_meta: dict[str, Any], sizes: Sequence[int], root: Path | None) -> float:
    """Generate a split, check it against the split file, write one cache file per size; returns seconds."""
    t0 = time.perf_counter()
    ids = split_meta["ids"]
    scenes: list[Scene] = []
    images = {s: np.empty((len(ids), 3, s, s), dtype=np.uint8) for s in sizes}
    for k, image_id in enumerate(
        _progress(ids, f"shapes: generating {split} ({'/'.join(map(str, sizes))} px)")
    ):
        scene = generate_scene(image_id)
        scenes.append(scene)
        for s in sizes:
            images[s][k] = render(scene, s)
    digest = annotations_sha256(scenes)
    if digest != split_meta["annotations_sha256"]:
        raise RuntimeError(
            f"shapes generator v{GENERATOR_VERSION} produced annotations for split {split!r} that differ from "
            f"the frozen split file {split_meta['path']} (sha256 {digest} != {split_meta['annotations_sha256']}). "
            "The generator changed: revert the change, or bump GENERATOR_VERSION and rewrite the split files "
            "with benchmark.data.shapes.write_split_files()."
        )
    for s in sizes:
        meta = {
            "generator_version": GENERATOR_VERSION,
            "split": split,
            "image_size": s,
            "annotations_sha256": digest,
        }
        atomic_write_bytes(cache_path(split, s, root), _pack(scenes, images[s], meta))
    return time.perf_counter() - t0


def _ensure_cached(
    split: str, sizes: Sequence[int], root: Path | None = None
) -> tuple[dict[int, dict[str, np.ndarray]], float | None, dict[str, Any]]:
    """Load the split at each size from the cache, generating what is missing or corrupt (under a lock).

    Returns ``(arrays by size, generation seconds or None if all came from the cache, split metadata)``.
    """
    for s in sizes:
        _check_size(s)
    split_meta = _load_split_file(split)
    lock = cache_path(split, sizes[0], root).parent / f".{split}.lock"
    with file_lock(lock):
        out: dict[int, dict[str, np.ndarray]] = {}
        todo = []
        for s in sizes:
            path = cache_path(split, s, root)
            if not path.exists():
                todo.append(s)
                continue
            try:
                out[s] = _read_cache(path, split_meta, s)
            except ValueError as e:
                warnings.warn(
                    f"shapes: cache file {path} is corrupt or stale ({e}); regenerating it", stacklevel=3
                )
                todo.append(s)
        seconds = None
        if todo:
            seconds = _generate(split, split_meta, todo, root)
            for s in todo:
                path = cache_path(split, s, root)
                try:
                    out[s] = _read_cache(path, split_meta, s)
                except ValueError as e:
                    raise RuntimeError(
                        f"shapes: freshly written cache file {path} does not read back: {e}"
                    ) from e
    return out, seconds, split_meta


# ---------------------------------------------------------------------------------------------------------
# The dataset


@register("dataset", "shapes")
class ShapesDataset(SceneGraphDataset):
    """Procedural coloured shapes with sg2im COCO-rule relations and held-out colour-shape pairs (built in)."""

    name = DATASET
    mask_size = MASK_SIZE

    def __init__(
        self, split: str, image_size: int, arrays: dict[str, np.ndarray], split_meta: dict[str, Any]
    ):
        self.vocab = _load_vocab()
        self.split = split
        self.image_size = image_size
        self.split_version = str(split_meta["version"])
        self.image_ids: list[str] = list(split_meta["ids"])
        self.split_sha256 = split_sha256(self.image_ids)
        self.annotations_sha256 = str(split_meta["annotations_sha256"])
        self.unseen_combinations = UNSEEN_COMBINATIONS
        self._a = arrays

    @classmethod
    def build(cls, split: str, image_size: int, root: Path | None = None, **kwargs: Any) -> ShapesDataset:
        """Load ``split`` at ``image_size`` (32 or 64) px, generating and caching it on first use.

        ``root`` overrides the cache folder (default ``cache_dir()/shapes``); the vocabulary and split files
        always come from ``datasets/shapes``.
        """
        if kwargs:
            raise TypeError(f"shapes: unexpected option(s) {sorted(kwargs)}")
        if split not in SPLITS:
            raise ValueError(f"unknown shapes split {split!r}; valid splits: {', '.join(SPLITS)}")
        _check_size(image_size)
        arrays, _, split_meta = _ensure_cached(split, (image_size,), root)
        return cls(split, image_size, arrays[image_size], split_meta)

    @classmethod
    def prepare(cls, root: Path | None = None, raw: Path | None = None) -> str:
        """Generate and cache all splits at 32 and 64 px (nothing to download; ``raw`` is not used)."""
        t0 = time.perf_counter()
        _load_vocab()
        lines = [
            f"shapes: procedural, generator v{GENERATOR_VERSION}, cache {cache_path('train', 32, root).parent}"
        ]
        total = 0
        for split in SPLITS:
            _, seconds, meta = _ensure_cached(split, IMAGE_SIZES, root)
            total += meta["num_images"]
            how = "cached" if seconds is None else f"generated in {seconds:.1f} s"
            lines.append(
                f"  {split:<12} {meta['num_images']:>5} images at {'/'.join(map(str, IMAGE_SIZES))} px: {how}"
            )
        lines.append(
            f"  total {total} images x {len(IMAGE_SIZES)} sizes ready in {time.perf_counter() - t0:.1f} s"
        )
        if raw is not None:
            lines.append(f"  (raw={raw} ignored: shapes is generated, not downloaded)")
        return "\n".join(lines)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> SceneGraphItem:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for shapes {self.split} ({n} images)")
        index %= n
        a = self._a
        o0, o1 = int(a["obj_ptr"][index]), int(a["obj_ptr"][index + 1])
        t0, t1 = int(a["triple_ptr"][index]), int(a["triple_ptr"][index + 1])
        return SceneGraphItem(
            image=torch.from_numpy(a["images"][index]).float().div_(255.0),
            objs=torch.from_numpy(a["objs"][o0:o1].copy()),
            boxes=torch.from_numpy(a["boxes"][o0:o1].copy()),
            triples=torch.from_numpy(a["triples"][t0:t1].copy()),
            masks=torch.from_numpy(a["masks"][o0:o1]).float(),
            has_layout=torch.ones(o1 - o0, dtype=torch.bool),
            image_id=self.image_ids[index],
        )

    def object_factors(self) -> list[tuple[str, ...]]:
        """Per vocabulary index, the factors (colour, shape) of the object; ``__image__`` -> itself twice."""
        return [object_factors(n) for n in self.vocab.object_idx_to_name]
