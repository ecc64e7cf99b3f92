"""``4dor``: 4D-OR semantic scene graphs of simulated knee surgeries (egeozsoy/4D-OR, MICCAI 2022).

Files followed (formats in ``datasets/4dor/README.md``; repositories egeozsoy/4D-OR and egeozsoy/MM-OR):

- ``data/relationships_{train,validation,test}.json`` (4D-OR repository ``data/``): ``{"scans": [...]}``,
  each scan ``{"take_idx", "scan" (6-digit string), "objects" {"1": name, ...}, "relationships" [[subj_key,
  obj_key, pred_idx, pred_name], ...], "human_idx_to_name" {"human_k": role}}``. The split is by take
  (``helpers/configurations.py`` ``TAKE_SPLIT``): train 1, 3, 5, 7, 9, 10 / val 4, 8 / test 2, 6; a scan
  whose ``take_idx`` is not in its file's split is an error. ``data/classes.txt`` (12) and
  ``data/relationships.txt`` (14) are checked when present.
- ``export_holistic_take{t}_processed/timestamp_to_pcd_and_frames_list.json``: a list indexed by scan
  number; the colour image of camera ``c`` is ``colorimage/camera0{c}_colorimage-{idx}.jpg`` with
  ``idx = lst[int(scan)][1][f"color_{c}"]`` (``data_preparation_utils.py load_full_image_data``, ORacle
  ``load_image_paths``).
- ``export_holistic_take{t}_processed/segmentation_export_{c}/camera0{c}_colorimage-{idx}.png``, else
  ``..._interpolated.png`` (the later panoptic exports, cameras 1, 2, 5 only; read in this order by MM-OR
  ``scene_graph_generation/create_take_sample_segmasks.py``): 8-bit grayscale label maps with the labels of
  MM-OR ``TRACK_TO_METAINFO`` (:data:`PANOPTIC_LABELS`).

Scene graphs. Nodes are the scan's objects in key order ("1".."n", which 4D-OR assigns in sorted-name order),
then ``__image__`` last with an ``(i, __in_image__, __image__)`` triple per object (sg2im
``encode_scene_graphs``). Humans are named by **role**: ``human_k`` becomes the node ``head surgeon``,
``assistant surgeon``, ``circulating nurse`` or ``anaesthetist`` from ``human_idx_to_name``; role ``none``
and a ``human_k`` without a role entry become ``person`` (``human_k`` is a per-scan index with no meaning of
its own across takes, the role is what an image shows). The vocabulary therefore replaces the six
``human_0..5`` classes of ``classes.txt`` by five role names: 11 object names + ``__image__``. Predicates
are the 14 of ``relationships.txt`` in natural words (``CloseTo`` -> ``close to``) + ``__in_image__``; the
``none`` class that 4D-OR's loaders append for "no relation" is not a relation to draw and is not kept (a
relationship labelled ``none`` is skipped and counted by :meth:`Or4dDataset.prepare`). Names are natural
language, so ``phrases()`` gives them as they are.

Layout. Where the chosen camera has a panoptic export for the frame, an object's box is the bounding
rectangle of its label's pixels (MM-OR ``or_dataset.py``: ``cv2.boundingRect(mask == label)``), normalised
by the label map's size, and its mask the 16x16 crop of those pixels (area-resized, a cell is on when more
than half of it is covered). Humans join the label map through their role (``head surgeon`` -> label 10
``head_surgeon`` ...; MM-OR's role names). Objects without a label (``instrument``, ``person``), without
pixels in the map, sharing a label with another node of the scan, and every object of a frame without an
export have ``has_layout`` False, box ``[0, 0, 1, 1]`` and an all-zero mask (placeholders that carry no
information; methods must use ground-truth layout only where ``has_layout`` is True).

Images are decoded once (JPEG DCT-domain reduction via ``PIL.Image.draft``, then an anti-aliased bilinear
resize of the whole 4:3 frame to a square, as sg2im resizes COCO/VG images) and cached with the layout as
``.npz`` per (split, camera, size) under ``cache_dir()/4dor``; the cache is rebuilt when the annotations or
any image/label-map file change (sizes and mtimes are fingerprinted). Samples are ordered by the sha256 of
their id ("take1/000009"), so the first N graphs of a split (the protocol's evaluation subset) spread over
all takes and surgical phases; split manifests list the ids sorted.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from benchmark.data.packing import (
    PACKED_KEYS,
    PackedDataset,
    cached,
    check_packed,
    pack,
    progress,
    read_npz,
    split_sha256,
)
from benchmark.io import atomic_write_json, read_json, sha256_file, sha256_json
from benchmark.paths import cache_dir, data_root
from benchmark.registry import register
from benchmark.scene_graph import IMAGE_TOKEN, IN_IMAGE, SceneGraphError, Vocab, _lookup

DATASET = "4dor"
SPLIT_VERSION = "1.0"
LOADER_VERSION = "1"  # bump on any change to decoding, layout derivation or the cache format
MASK_SIZE = 16
IMAGE_SIZES = (32, 64, 128)
PREPARED_SIZES = (32, 64)  # the protocol's tier sizes, cached by `prepare`
CAMERAS = (1, 2, 3, 4, 5, 6)
SEGMENTATION_CAMERAS = (1, 2, 5)
# Camera 1: one of the three cameras with panoptic exports (so boxes and masks exist), and the first of them
# in MM-OR's own loop over 4D-OR exports. No view is documented as better than 2 or 5; `prepare` reports
# the image and export coverage of every camera so the choice can be checked on the real files.
DEFAULT_CAMERA = 1

SPLITS = ("train", "val", "test")
TAKE_SPLIT: dict[str, tuple[int, ...]] = {"train": (1, 3, 5, 7, 9, 10), "val": (4, 8), "test": (2, 6)}
ANNOTATION_FILES = {
    "train": "relationships_train.json",
    "val": "relationships_validation.json",
    "test": "relationships_test.json",
}
# Frames per take (last frame + 1 of surgery_phase_recognition/phases_to_frames/phase_to_frames_{N}.json).
FRAMES_PER_TAKE = {1: 766, 2: 679, 3: 652, 4: 682, 5: 639, 6: 699, 7: 656, 8: 650, 9: 628, 10: 683}
EXPECTED_SIZES = {
    s: sum(FRAMES_PER_TAKE[t] for t in takes) for s, takes in TAKE_SPLIT.items()
}  # 4024/1332/1378

# data/classes.txt and data/relationships.txt, verbatim and in file order.
SOURCE_CLASSES: tuple[str, ...] = (
    "Patient", "anesthesia_equipment", "human_0", "human_1", "human_2", "human_3", "human_4", "human_5",
    "instrument", "instrument_table", "operating_table", "secondary_table",
)  # fmt: skip
SOURCE_PREDICATES: tuple[str, ...] = (
    "Assisting", "Cementing", "Cleaning", "CloseTo", "Cutting", "Drilling", "Hammering", "Holding", "LyingOn",
    "Operating", "Preparing", "Sawing", "Suturing", "Touching",
)  # fmt: skip
NO_RELATION = "none"  # appended by 4D-OR's loaders as the 15th class; not kept here
# human_idx_to_name roles -> node names. A human_k without a role entry is also a "person".
ROLES = {
    "head-surgeon": "head surgeon",
    "assistant-surgeon": "assistant surgeon",
    "circulating-nurse": "circulating nurse",
    "anaesthetist": "anaesthetist",
    "none": "person",
}
NO_ROLE = "person"
CLASS_NAMES = {
    "Patient": "patient",
    "anesthesia_equipment": "anesthesia equipment",
    "instrument": "instrument",
    "instrument_table": "instrument table",
    "operating_table": "operating table",
    "secondary_table": "secondary table",
}
PREDICATE_NAMES = {
    "Assisting": "assisting",
    "Cementing": "cementing",
    "Cleaning": "cleaning",
    "CloseTo": "close to",
    "Cutting": "cutting",
    "Drilling": "drilling",
    "Hammering": "hammering",
    "Holding": "holding",
    "LyingOn": "lying on",
    "Operating": "operating",
    "Preparing": "preparing",
    "Sawing": "sawing",
    "Suturing": "suturing",
    "Touching": "touching",
}
OBJECT_NAMES: tuple[str, ...] = (
    IMAGE_TOKEN, "patient", "anesthesia equipment", "head surgeon", "assistant surgeon", "circulating nurse",
    "anaesthetist", "person", "instrument", "instrument table", "operating table", "secondary table",
)  # fmt: skip
PREDICATES: tuple[str, ...] = (IN_IMAGE, *PREDICATE_NAMES.values())
VOCAB = Vocab(OBJECT_NAMES, PREDICATES)
# Node name -> label in the panoptic exports (MM-OR TRACK_TO_METAINFO; datasets/4dor/README.md). instrument
# and person have none: the exports label tools as drill/hammer/saw/cementer and other people as
# unrelated_person/student/nurse, and which of those a 4D-OR node is cannot be told (UNVERIFIED on real
# files).
PANOPTIC_LABELS = {
    "instrument table": 1,
    "anesthesia equipment": 2,
    "operating table": 3,
    "patient": 5,
    "anaesthetist": 7,
    "circulating nurse": 8,
    "assistant surgeon": 9,
    "head surgeon": 10,
    "secondary table": 28,
}
LAYOUT_NONE, LAYOUT_EXPORT, LAYOUT_INTERPOLATED = 0, 1, 2  # per-sample source of the layout

ACCESS = (
    "4D-OR is available on request: fill out the form linked in the 4D-OR repository README "
    "(github.com/egeozsoy/4D-OR; https://forms.gle/9cR3H5KcFUr5VKxr9), agreeing to the dataset's terms of "
    "use, then unzip the download"
)
_HOW = {
    "annotations": "the scene-graph files ship with the 4D-OR code repository (github.com/egeozsoy/4D-OR, "
    "folder data/): copy relationships_{train,validation,test}.json into <root>/data/",
    "take": f"{ACCESS} and put its export_holistic_take<N>_processed/ folders into <root>/",
    "image": f"the colour images come with the take folders of the dataset download ({ACCESS})",
    "segmentation": "panoptic segmentations of cameras 1, 2, 5 (4D-OR_panoptic_segmentations.zip, announced "
    "in the 4D-OR repository README and hosted with MM-OR): unzip so that "
    "export_holistic_take<N>_processed/segmentation_export_<c>/ exist; without them objects have no layout",
}


def take_dir(root: Path, take: int) -> Path:
    return root / f"export_holistic_take{take}_processed"


def annotation_path(root: Path, split: str) -> Path:
    return root / "data" / ANNOTATION_FILES[split]


def frames_list_path(root: Path, take: int) -> Path:
    return take_dir(root, take) / "timestamp_to_pcd_and_frames_list.json"


def image_path(root: Path, take: int, camera: int, color_idx: str) -> Path:
    return take_dir(root, take) / "colorimage" / f"camera0{camera}_colorimage-{color_idx}.jpg"


def segmentation_paths(root: Path, take: int, camera: int, color_idx: str) -> tuple[Path, Path]:
    """(export, interpolated export) paths of a frame; the first that exists is used."""
    folder = take_dir(root, take) / f"segmentation_export_{camera}"
    stem = f"camera0{camera}_colorimage-{color_idx}"
    return folder / f"{stem}.png", folder / f"{stem}_interpolated.png"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown 4dor split {split!r}; valid splits: {', '.join(SPLITS)}")


def _check_camera(camera: Any) -> int:
    if isinstance(camera, bool) or camera not in CAMERAS:
        raise ValueError(f"4dor: unknown camera {camera!r}; valid cameras: {', '.join(map(str, CAMERAS))}")
    return int(camera)


def _order_key(sample_id: str) -> str:
    return hashlib.sha256(sample_id.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Scene graphs from the relationship files


@dataclass(frozen=True)
class Scan:
    """One annotated frame: vocabulary indices of its objects (key order) and (s, p, o) triples among them."""

    take: int
    scan: str
    objs: tuple[int, ...]
    triples: tuple[tuple[int, int, int], ...]

    @property
    def id(self) -> str:
        return f"take{self.take}/{self.scan}"


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_relationships(path: Path, split: str) -> tuple[list[Scan], Counter[str]]:
    """Read ``relationships_<split>.json``; returns the scans (file order) and counts of tolerated oddities.

    Errors (``SceneGraphError``, naming the file and the scan): a malformed scan, a ``take_idx`` outside the
    split, a duplicate scan, an unknown object, role or predicate name, a relationship key not among the
    scan's objects. Tolerated and counted: humans without a role entry, ``none`` relationships (skipped), a
    ``pred_idx`` that disagrees with the name (4D-OR's loaders re-derive the index from the name, as here).
    """
    _check_split(split)
    data = read_json(path, "4D-OR relationships file")
    if not isinstance(data, dict) or not isinstance(data.get("scans"), list):
        raise SceneGraphError(f"{path}: expected an object with a 'scans' list")
    classes = {n: i for i, n in enumerate(SOURCE_CLASSES)}
    preds = {n: i for i, n in enumerate((*SOURCE_PREDICATES, NO_RELATION))}
    roles = {n: i for i, n in enumerate(ROLES)}
    obj_idx, pred_idx = VOCAB.object_name_to_idx, VOCAB.pred_name_to_idx
    notes: Counter[str] = Counter()
    scans: list[Scan] = []
    seen: set[str] = set()
    for i, s in enumerate(data["scans"]):
        where = f"{path}: scans[{i}]"
        if not isinstance(s, dict):
            raise SceneGraphError(f"{where}: expected an object, got {type(s).__name__}")
        take, scan = s.get("take_idx"), s.get("scan")
        if not _is_int(take) or not isinstance(scan, str) or len(scan) != 6 or not scan.isdigit():
            raise SceneGraphError(
                f"{where}: needs an integer 'take_idx' and a 6-digit 'scan' string, got {take!r}, {scan!r}"
            )
        where = f"{path}: scan take{take}/{scan}"
        if take not in TAKE_SPLIT[split]:
            owner = next((k for k, v in TAKE_SPLIT.items() if take in v), None)
            raise SceneGraphError(
                f"{where}: take {take} belongs to split {owner!r}, not {split!r} "
                f"(4D-OR TAKE_SPLIT: {'; '.join(f'{k} {list(v)}' for k, v in TAKE_SPLIT.items())})"
            )
        if f"take{take}/{scan}" in seen:
            raise SceneGraphError(f"{where}: duplicate scan")
        seen.add(f"take{take}/{scan}")
        objects, rels, humans = s.get("objects"), s.get("relationships"), s.get("human_idx_to_name", {})
        if (
            not isinstance(objects, dict)
            or not objects
            or not all(isinstance(k, str) and k.isdigit() for k in objects)
        ):
            raise SceneGraphError(f"{where}: 'objects' must map keys '1'..'n' to class names")
        if not isinstance(rels, list) or not isinstance(humans, dict):
            raise SceneGraphError(
                f"{where}: 'relationships' must be a list and 'human_idx_to_name' an object"
            )
        keys = sorted(objects, key=int)
        objs = []
        for k in keys:
            name = objects[k]
            _lookup(name, classes, "object", f"{where}: objects[{k!r}]")
            if name.startswith("human_"):
                role = humans.get(name)
                if role is None:
                    notes["humans without a role entry (named 'person')"] += 1
                    objs.append(obj_idx[NO_ROLE])
                    continue
                _lookup(role, roles, "role", f"{where}: human_idx_to_name[{name!r}]")
                objs.append(obj_idx[ROLES[role]])
            else:
                objs.append(obj_idx[CLASS_NAMES[name]])
        local = {int(k): j for j, k in enumerate(keys)}
        triples = []
        for r_i, r in enumerate(rels):
            w = f"{where}: relationships[{r_i}]"
            if not isinstance(r, list) or len(r) != 4 or not all(map(_is_int, r[:3])):
                raise SceneGraphError(
                    f"{w}: expected [subject_key, object_key, pred_idx, pred_name], got {r!r}"
                )
            subj, obj, p_idx, p_name = r
            _lookup(p_name, preds, "predicate", w)
            for role_name, key in (("subject", subj), ("object", obj)):
                if key not in local:
                    raise SceneGraphError(
                        f"{w}: {role_name} key {key} is not among the scan's objects {keys}"
                    )
            if p_name == NO_RELATION:
                notes["relationships labelled 'none' (skipped)"] += 1
                continue
            if p_idx != preds[p_name]:
                notes["pred_idx disagreeing with pred_name (name used)"] += 1
            triples.append((local[subj], pred_idx[PREDICATE_NAMES[p_name]], local[obj]))
        scans.append(Scan(take, scan, tuple(objs), tuple(triples)))
    return scans, notes


def _check_list_file(path: Path, expected: Sequence[str]) -> None:
    """``data/classes.txt`` / ``data/relationships.txt``, when present, must list exactly ``expected``."""
    if path.is_file():
        got = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if got != list(expected):
            raise SceneGraphError(f"{path}: expected {list(expected)}, found {got}")


# ---------------------------------------------------------------------------------------------------------
# Files of a split


@dataclass(frozen=True)
class Sample:
    """A scan with the files of one camera: colour image and (if any) panoptic label map."""

    scan: Scan
    image: Path
    segmentation: Path | None
    source: int  # LAYOUT_NONE / LAYOUT_EXPORT / LAYOUT_INTERPOLATED

    @property
    def id(self) -> str:
        return self.scan.id


@dataclass
class Resolved:
    """What :func:`resolve` found for one split; ``missing`` maps a kind (see ``_HOW``) to missing paths."""

    split: str
    camera: int
    scans: list[Scan]  # every annotated scan, file order
    samples: list[Sample]  # the scans whose files were found, evaluation order
    missing: dict[str, list[Path]]
    notes: Counter[str]
    fingerprint: str = ""

    @property
    def ids_sha256(self) -> str:
        """The split manifest hash (:func:`benchmark.data.packing.split_sha256` of the sample ids)."""
        return split_sha256([s.id for s in self.samples])


def _color_index(frames: Any, scan: Scan, camera: int, path: Path) -> str:
    """``lst[int(scan)][1][f"color_{c}"]`` with errors that name the list file and the scan."""
    n = int(scan.scan)
    entry = frames[n] if n < len(frames) else None
    if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], dict)):
        raise SceneGraphError(f"{path}: no [timestamp, files] entry at index {n} for scan {scan.id}")
    idx = entry[1].get(f"color_{camera}")
    if not isinstance(idx, (str, int)) or isinstance(idx, bool):
        raise SceneGraphError(f"{path}: entry {n} (scan {scan.id}) has no 'color_{camera}' image index")
    return str(idx)


def resolve(root: Path, split: str, camera: int = DEFAULT_CAMERA) -> Resolved:
    """Parse the split's annotations and find each scan's files; never raises for missing files.

    Samples are in evaluation order (sha256 of the id). The fingerprint covers the annotations and the size
    and mtime of every image and label map, so the cache notices any change on disk.
    """
    _check_split(split)
    camera = _check_camera(camera)
    missing: dict[str, list[Path]] = {k: [] for k in ("annotations", "take", "image")}
    ann = annotation_path(root, split)
    if not ann.is_file():
        missing["annotations"].append(ann)
        return Resolved(split, camera, [], [], missing, Counter())
    _check_list_file(root / "data" / "classes.txt", SOURCE_CLASSES)
    _check_list_file(root / "data" / "relationships.txt", SOURCE_PREDICATES)
    scans, notes = parse_relationships(ann, split)
    frames: dict[int, Any] = {}
    for take in sorted({s.take for s in scans}):
        path = frames_list_path(root, take)
        if not path.is_file():
            missing["take"].append(path if take_dir(root, take).is_dir() else take_dir(root, take))
            continue
        frames[take] = read_json(path, "4D-OR timestamp list")
        if not isinstance(frames[take], list):
            raise SceneGraphError(f"{path}: expected a JSON list indexed by scan number")
    samples, stats = [], []
    for scan in sorted(scans, key=lambda s: _order_key(s.id)):
        if scan.take not in frames:
            continue
        idx = _color_index(frames[scan.take], scan, camera, frames_list_path(root, scan.take))
        img = image_path(root, scan.take, camera, idx)
        try:
            st = img.stat()
        except FileNotFoundError:
            missing["image"].append(img)
            continue
        seg, source, seg_stat = None, LAYOUT_NONE, None
        if camera in SEGMENTATION_CAMERAS:
            for kind, p in zip(
                (LAYOUT_EXPORT, LAYOUT_INTERPOLATED), segmentation_paths(root, scan.take, camera, idx)
            ):
                try:
                    pst = p.stat()
                except FileNotFoundError:
                    continue
                seg, source, seg_stat = p, kind, (pst.st_size, pst.st_mtime_ns)
                break
        samples.append(Sample(scan, img, seg, source))
        stats.append(
            [scan.id, scan.objs, scan.triples, str(img.relative_to(root)), st.st_size, st.st_mtime_ns,
             None if seg is None else str(seg.relative_to(root)), seg_stat]
        )  # fmt: skip
    fingerprint = sha256_json({"loader": LOADER_VERSION, "camera": camera, "samples": stats})
    return Resolved(split, camera, scans, samples, missing, notes, fingerprint)


def _missing_report(root: Path, missing: dict[str, list[Path]], limit: int = 5) -> list[str]:
    lines = []
    for kind, paths in missing.items():
        if not paths:
            continue
        lines.append(
            f"  missing {kind} ({len(paths)}): "
            + ", ".join(map(str, paths[:limit]))
            + (" ..." if len(paths) > limit else "")
        )
        lines.append(f"    how to get them: {_HOW[kind].replace('<root>', str(root))}")
    return lines


# ---------------------------------------------------------------------------------------------------------
# Pixels and layout


def read_label_map(path: Path) -> np.ndarray:
    """uint8 [H, W] panoptic labels. 8-bit grayscale PNGs are read as they are; paletted/RGB ones are
    converted with ITU-R 601 luma, which is what MM-OR's ``cv2.imread(path, cv2.IMREAD_GRAYSCALE)`` does."""
    try:
        with Image.open(path) as im:
            if im.mode in ("P", "RGB", "RGBA", "LA"):
                im = im.convert("L")
            if im.mode != "L":
                raise ValueError(
                    f"4dor: label map {path} has PNG mode {im.mode!r}; expected 8-bit grayscale labels"
                )
            return np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"4dor: corrupt or unreadable label map {path}: {e}") from None


def load_image(path: Path, sizes: Sequence[int]) -> tuple[dict[int, np.ndarray], tuple[int, int]]:
    """The JPEG at ``path`` as uint8 ``[3, S, S]`` per size (whole frame squashed to a square; JPEG DCT
    reduction to at least the largest size, then an anti-aliased bilinear resize), and its (W, H)."""
    try:
        with Image.open(path) as im:
            full = im.size
            im.draft("RGB", (max(sizes), max(sizes)))
            rgb = im.convert("RGB")
            rgb.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"4dor: corrupt or unreadable image {path}: {e}") from None
    out = {
        s: np.asarray(rgb.resize((s, s), Image.Resampling.BILINEAR), dtype=np.uint8).transpose(2, 0, 1)
        for s in sizes
    }
    return out, full


def layout_from_label_map(
    label_map: np.ndarray, objs: Sequence[int], mask_size: int = MASK_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes float32 [n, 4] (x0, y0, x1, y1 in [0, 1]), masks uint8 [n, M, M] and has_layout bool [n] of the
    objects ``objs`` (vocabulary indices, no ``__image__``) from a panoptic label map.

    The box is ``cv2.boundingRect(label_map == label)`` in pixel edges over the map's width/height; the mask
    is that crop area-resized to M x M, a cell on when more than half covered. Objects without a panoptic
    label, without pixels, or sharing their label with another object of the scan get no layout.
    """
    n = len(objs)
    boxes = np.tile(np.array([0.0, 0.0, 1.0, 1.0], dtype=np.float32), (n, 1))
    masks = np.zeros((n, mask_size, mask_size), dtype=np.uint8)
    has = np.zeros(n, dtype=bool)
    labels = [PANOPTIC_LABELS.get(OBJECT_NAMES[o]) for o in objs]
    counts = Counter(labels)
    h, w = label_map.shape
    for i, label in enumerate(labels):
        if label is None or counts[label] > 1:
            continue
        hit = label_map == label
        rows = np.flatnonzero(hit.any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(hit.any(axis=0))
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        boxes[i] = (x0 / w, y0 / h, x1 / w, y1 / h)
        crop = Image.fromarray(hit[y0:y1, x0:x1].astype(np.uint8) * 255)
        masks[i] = np.asarray(crop.resize((mask_size, mask_size), Image.Resampling.BOX)) >= 128
        has[i] = True
    return boxes, masks, has


# ---------------------------------------------------------------------------------------------------------
# The cache

_KEYS = (*PACKED_KEYS, "has_layout", "source", "ids", "images")


def cache_path(root: Path, split: str, camera: int, image_size: int) -> Path:
    """``cache_dir()/4dor/v<LOADER_VERSION>/<sha of root>/<split>_camera<c>_<size>px.npz``."""
    tag = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return cache_dir() / DATASET / f"v{LOADER_VERSION}" / tag / f"{split}_camera{camera}_{image_size}px.npz"


def _decode(res: Resolved, sizes: Sequence[int]) -> dict[int, tuple[dict[str, np.ndarray], dict[str, Any]]]:
    """Decode every image and label map of a split once; (arrays, cache metadata) per size."""
    img_idx, in_img = VOCAB.object_name_to_idx[IMAGE_TOKEN], VOCAB.pred_name_to_idx[IN_IMAGE]
    images = {s: np.empty((len(res.samples), 3, s, s), dtype=np.uint8) for s in sizes}
    objs, boxes, masks, has, triples = [], [], [], [], []
    image_box = np.array([[0.0, 0.0, 1.0, 1.0]], dtype=np.float32)
    image_mask = np.ones((1, MASK_SIZE, MASK_SIZE), dtype=np.uint8)
    desc = f"4dor: decoding {res.split} camera {res.camera} ({'/'.join(map(str, sizes))} px)"
    for k, smp in enumerate(progress(res.samples, desc)):
        pix, (w, h) = load_image(smp.image, sizes)
        for s in sizes:
            images[s][k] = pix[s]
        n = len(smp.scan.objs)
        if smp.segmentation is not None:
            label_map = read_label_map(smp.segmentation)
            lh, lw = label_map.shape
            if abs(lw * h - lh * w) > 0.01 * lw * h:
                raise ValueError(
                    f"4dor: label map {smp.segmentation} is {lw}x{lh} but image {smp.image} is {w}x{h}: "
                    "different aspect ratios, the boxes would not align"
                )
            b, m, hl = layout_from_label_map(label_map, smp.scan.objs)
        else:
            b = np.tile(image_box, (n, 1))
            m, hl = np.zeros((n, MASK_SIZE, MASK_SIZE), dtype=np.uint8), np.zeros(n, dtype=bool)
        objs.append([*smp.scan.objs, img_idx])
        boxes.append(np.concatenate([b, image_box]))
        masks.append(np.concatenate([m, image_mask]))
        has.append([*hl, True])
        triples.append([*smp.scan.triples, *((i, in_img, n) for i in range(n))])
    shared = {
        **pack(objs, boxes, masks, triples, MASK_SIZE, has_layout=has),
        "source": np.asarray([smp.source for smp in res.samples], dtype=np.int64),
        "ids": np.asarray([smp.id for smp in res.samples], dtype=np.str_),
    }
    return {s: ({**shared, "images": images[s]}, _meta(res, s)) for s in sizes}


def _meta(res: Resolved, image_size: int) -> dict[str, Any]:
    return {
        "loader_version": LOADER_VERSION,
        "split": res.split,
        "camera": res.camera,
        "image_size": image_size,
        "fingerprint": res.fingerprint,
    }


def _read_cache(path: Path, res: Resolved, image_size: int) -> dict[str, np.ndarray]:
    """Load and validate a cache file; raises ValueError (with the reason) if it is corrupt or stale."""
    a, meta = read_npz(path, _KEYS)
    if meta != _meta(res, image_size):
        raise ValueError("stale: the annotations, images or label maps changed since it was written")
    n, size = len(res.samples), image_size
    if a["ids"].tolist() != [s.id for s in res.samples] or a["images"].shape != (n, 3, size, size):
        raise ValueError("arrays have inconsistent shapes")
    check_packed(a, n, MASK_SIZE)
    return a


def _ensure_cached(
    res: Resolved, root: Path, sizes: Sequence[int]
) -> tuple[dict[int, dict[str, np.ndarray]], float | None]:
    """Arrays of ``res`` at each size from the cache, decoding what is missing or stale (under a lock).

    Returns (arrays by size, decoding seconds or None if everything came from the cache).
    """
    return cached(
        sizes,
        lambda s: cache_path(root, res.split, res.camera, s),
        lambda path, s: _read_cache(path, res, s),
        lambda todo: _decode(res, todo),
        cache_path(root, res.split, res.camera, sizes[0]).parent / f".{res.split}_camera{res.camera}.lock",
        "4dor",
    )


# ---------------------------------------------------------------------------------------------------------
# Manifests


def manifest_path(root: Path, split: str) -> Path:
    return root / "manifests" / f"{split}.json"


def _manifest(root: Path, res: Resolved) -> dict[str, Any]:
    ids = sorted(s.id for s in res.samples)
    per_take = Counter(s.scan.take for s in res.samples)
    return {
        "dataset": DATASET,
        "split": res.split,
        "version": SPLIT_VERSION,
        "takes": list(TAKE_SPLIT[res.split]),
        "num_samples": len(ids),
        "expected_num_samples": EXPECTED_SIZES[res.split],
        "samples_per_take": {str(t): per_take.get(t, 0) for t in TAKE_SPLIT[res.split]},
        "annotations": ANNOTATION_FILES[res.split],
        "annotations_sha256": sha256_file(annotation_path(root, res.split)),
        "sha256": res.ids_sha256,
        "ids": ids,
    }


def _check_manifest(root: Path, res: Resolved) -> None:
    """A split manifest written by ``prepare`` freezes the split: other samples are refused."""
    path = manifest_path(root, res.split)
    if path.is_file():
        meta = read_json(path, "4dor split manifest")
        if meta.get("sha256") != res.ids_sha256:
            raise ValueError(
                f"4dor: the {res.split} samples found under {root} differ from the split manifest {path} "
                f"(sha256 {res.ids_sha256} != {meta.get('sha256')}): the annotation files changed since "
                "`python -m benchmark prepare 4dor` wrote it; restore them or rerun prepare"
            )


# ---------------------------------------------------------------------------------------------------------
# The dataset


@register("dataset", "4dor")
class Or4dDataset(PackedDataset):
    """4D-OR operating-room scene graphs (roles as nodes) with one camera's images and panoptic layouts."""

    name = DATASET
    mask_size = MASK_SIZE

    def __init__(self, res: Resolved, image_size: int, arrays: dict[str, np.ndarray]) -> None:
        self.vocab = VOCAB
        self.split = res.split
        self.image_size = image_size
        self.camera = res.camera
        self.split_version = (
            SPLIT_VERSION if res.camera == DEFAULT_CAMERA else f"{SPLIT_VERSION}+camera{res.camera}"
        )
        self.image_ids: list[str] = [s.id for s in res.samples]
        self.split_sha256 = res.ids_sha256
        self._a = arrays

    @classmethod
    def requirements(
        cls, splits: Sequence[str], root: Path | None = None, camera: int = DEFAULT_CAMERA
    ) -> tuple[list[str], dict[str, tuple[int, int]]]:
        """Everything ``splits`` need that is missing (one line per kind, with where to get it, all at once) and
        each readable split's (scans found, scans in 4D-OR); nothing is decoded. Used by ``run``'s preflight."""
        root = Path(root) if root is not None else data_root() / DATASET
        missing: dict[str, list[Path]] = {k: [] for k in ("annotations", "take", "image", "segmentation")}
        sizes: dict[str, tuple[int, int]] = {}
        for split in dict.fromkeys(splits):
            _check_split(split)
            res = resolve(root, split, camera)
            # The takes the annotations name; without annotations, every take of the split (4D-OR's TAKE_SPLIT).
            takes = [take_dir(root, t) for t in sorted({s.take for s in res.scans} or set(TAKE_SPLIT[split]))]
            if res.missing["annotations"]:
                missing["take"] += [d for d in takes if not d.is_dir()]
            if camera in SEGMENTATION_CAMERAS:  # a separate archive: needed also where the take is missing
                seg = [d / f"segmentation_export_{camera}" for d in takes]
                missing["segmentation"] += [d for d in seg if not d.is_dir()]
            for kind in ("annotations", "take", "image"):
                missing[kind] += res.missing[kind]
            if not res.missing["annotations"]:
                sizes[split] = (len(res.samples), EXPECTED_SIZES[split])
        return _missing_report(root, {k: list(dict.fromkeys(v)) for k, v in missing.items()}), sizes

    @classmethod
    def build(
        cls,
        split: str,
        image_size: int,
        root: Path | None = None,
        camera: int = DEFAULT_CAMERA,
        **kwargs: Any,
    ) -> Or4dDataset:
        """Load ``split`` ("train", "val", "test") at ``image_size`` (32, 64 or 128) px from ``camera``.

        ``root`` is the 4D-OR folder (default ``SG2I_DATA_ROOT/4dor``) holding ``data/relationships_*.json``
        and the ``export_holistic_take<N>_processed/`` folders. A camera other than the protocol's (1) is
        recorded in ``split_version`` ("1.0+camera5"). Images and layouts are cached (module docstring).
        """
        if kwargs:
            raise TypeError(f"4dor: unexpected option(s) {sorted(kwargs)}; options: root, camera")
        _check_split(split)
        if isinstance(image_size, bool) or image_size not in IMAGE_SIZES:
            sizes = ", ".join(map(str, IMAGE_SIZES))
            raise ValueError(f"4dor: unsupported image_size {image_size!r}; supported sizes: {sizes}")
        root = Path(root) if root is not None else data_root() / DATASET
        res = resolve(root, split, camera)
        if any(res.missing.values()):
            lines = [f"4dor {split}: files are missing under {root}:", *_missing_report(root, res.missing)]
            lines.append("  check everything with: python -m benchmark prepare 4dor --raw <4D-OR folder>")
            raise FileNotFoundError("\n".join(lines))
        if not res.samples:
            raise ValueError(f"4dor: {annotation_path(root, split)} holds no scans")
        _check_manifest(root, res)
        arrays, _ = _ensure_cached(res, root, (image_size,))
        return cls(res, image_size, arrays[image_size])

    @classmethod
    def prepare(cls, root: Path | None = None, raw: Path | None = None) -> str:
        """Check the 4D-OR files, write split manifests, report counts and layout coverage, fill the cache.

        ``raw`` is a folder holding ``data/`` and the ``export_holistic_take<N>_processed/`` folders; its
        entries are symlinked into ``root`` (default ``SG2I_DATA_ROOT/4dor``) where ``root`` lacks them.
        Manifests are written for the splits whose files are all present; then, if anything is missing,
        ``FileNotFoundError`` carries the whole report. A scan count that differs from 4D-OR's (4,024 /
        1,332 / 1,378) is reported as a MISMATCH and warned about. Finally the caches at
        :data:`PREPARED_SIZES` px are filled (every image and label map decoded once: corrupt files show).
        """
        t0 = time.perf_counter()
        root = Path(root) if root is not None else data_root() / DATASET
        lines = [f"4dor: root {root}, camera {DEFAULT_CAMERA} (protocol), split version {SPLIT_VERSION}"]
        if raw is not None:
            lines += _link_raw(Path(raw), root)
        problems: list[str] = []
        resolved = {}
        for split in SPLITS:
            res = resolve(root, split)
            resolved[split] = res
            problems += _missing_report(root, res.missing)
            if res.missing["annotations"]:
                continue
            n, want = len(res.scans), EXPECTED_SIZES[split]
            per_take = Counter(s.take for s in res.scans)
            takes = ", ".join(f"{t}: {per_take.get(t, 0)}/{FRAMES_PER_TAKE[t]}" for t in TAKE_SPLIT[split])
            flag = "ok" if n == want else f"!! MISMATCH: expected {want} ({n - want:+d})"
            lines.append(f"  {split:<5} {n:>5} scans [{flag}]; per take (found/expected) {takes}")
            if n != want:
                warnings.warn(f"4dor {split}: {n} scans where 4D-OR has {want}", stacklevel=2)
            lines += [f"        {k}: {v}" for k, v in sorted(res.notes.items())]
            if res.samples and not any(res.missing.values()):
                atomic_write_json(manifest_path(root, split), _manifest(root, res))
        lines += _camera_coverage(root)
        if problems:  # everything missing at once (take folders and segmentations too), not split by split
            problems = cls.requirements(SPLITS, root)[0] or problems
            raise FileNotFoundError("\n".join([*lines, "4dor: files are missing:", *problems]))
        for split, res in resolved.items():
            if not res.samples:
                continue
            arrays, seconds = _ensure_cached(res, root, PREPARED_SIZES)
            how = "cached" if seconds is None else f"decoded in {seconds:.1f} s"
            sizes = "/".join(map(str, PREPARED_SIZES))
            lines.append(f"  {split:<5} layout: {_coverage(arrays[PREPARED_SIZES[0]])}; {sizes} px {how}")
        cache = cache_path(root, "train", DEFAULT_CAMERA, 64).parent
        lines.append(f"  manifests in {root / 'manifests'}, cache in {cache}")
        lines.append(f"  done in {time.perf_counter() - t0:.1f} s")
        return "\n".join(lines)

    @classmethod
    def write_fixture(
        cls,
        root: Path,
        *,
        scans_per_take: int = 4,
        image_size: tuple[int, int] = (64, 48),
        cameras: Sequence[int] = CAMERAS,
    ) -> None:
        """A tiny 4D-OR in the real on-disk format under ``root`` (:mod:`benchmark.data.fixtures.or4d`)."""
        from benchmark.data.fixtures.or4d import write_fixture

        write_fixture(Path(root), scans_per_take=scans_per_take, image_size=image_size, cameras=cameras)

    def layout_sources(self) -> np.ndarray:
        """Per sample: 0 no panoptic export, 1 an export, 2 an interpolated export."""
        return self._a["source"].copy()


def _coverage(a: dict[str, np.ndarray]) -> str:
    """'N/M samples with an export (k interpolated); objects with a layout, overall and per class'."""
    src = a["source"]
    real = a["objs"] != VOCAB.object_name_to_idx[IMAGE_TOKEN]
    objs, has = a["objs"][real], a["has_layout"][real]
    per_class = ", ".join(
        f"{OBJECT_NAMES[c]} {int(has[objs == c].sum())}/{int((objs == c).sum())}" for c in np.unique(objs)
    )
    return (
        f"{int((src != LAYOUT_NONE).sum())}/{len(src)} samples with an export "
        f"({int((src == LAYOUT_INTERPOLATED).sum())} interpolated); objects with a box "
        f"{int(has.sum())}/{len(has)} ({per_class})"
    )


def _camera_coverage(root: Path) -> list[str]:
    """Colour images and panoptic exports per camera, per take folder present (directory listings only)."""
    lines = []
    for take in sorted(FRAMES_PER_TAKE):
        folder = take_dir(root, take)
        if not folder.is_dir():
            continue
        counts: Counter[str] = Counter()
        colour = folder / "colorimage"
        if colour.is_dir():
            for entry in os.scandir(colour):
                if entry.name.startswith("camera0") and entry.name.endswith(".jpg"):
                    counts[f"img{entry.name[7]}"] += 1
        for c in SEGMENTATION_CAMERAS:
            seg = folder / f"segmentation_export_{c}"
            if seg.is_dir():
                counts[f"seg{c}"] = sum(1 for e in os.scandir(seg) if e.name.endswith(".png"))
        images = " ".join(f"{c}:{counts[f'img{c}']}" for c in CAMERAS)
        segs = " ".join(f"{c}:{counts[f'seg{c}']}" for c in SEGMENTATION_CAMERAS)
        lines.append(f"  take {take:>2}: colour images per camera {images}; panoptic exports {segs}")
        if not any(counts[f"seg{c}"] for c in SEGMENTATION_CAMERAS):
            lines.append(f"          no panoptic exports: {_HOW['segmentation']}")
    return lines


def _link_raw(raw: Path, root: Path) -> list[str]:
    """Symlink ``raw/data`` and ``raw/export_holistic_take*_processed`` into ``root`` where it lacks them."""
    if not raw.is_dir():
        raise FileNotFoundError(f"4dor: --raw folder {raw} not found. {ACCESS}.")
    if raw.resolve() == root.resolve():
        return []
    root.mkdir(parents=True, exist_ok=True)
    linked, kept = [], []
    for name in ["data", *(take_dir(Path(), t).name for t in sorted(FRAMES_PER_TAKE))]:
        src, dst = raw / name, root / name
        if not src.exists():
            continue
        if dst.exists() or dst.is_symlink():
            kept.append(name)
            continue
        dst.symlink_to(src.resolve(), target_is_directory=True)
        linked.append(name)
    out = [f"  linked from {raw}: {', '.join(linked) or 'nothing'}"]
    if kept:
        out.append(f"  already in {root} (left as they are): {', '.join(kept)}")
    return out
