"""``vg``: Visual Genome scene graphs as preprocessed and loaded by google/sg2im.

Data: ``<root>/{train,val,test}.h5`` + ``vocab.json`` in the layout of sg2im ``scripts/preprocess_vg.py``
(written by ``python -m benchmark prepare vg --raw DIR``, i.e. :mod:`benchmark.data.vg_preprocess`), plus our
``manifest.json`` (sorted image ids, hashes, counts); images under ``<root>/images/VG_100K{,_2}/``. The root
defaults to ``$SG2I_DATA_ROOT/vg``.

Items follow sg2im ``sg2im/data/vg.py`` (``VgSceneGraphDataset.__getitem__``, after fix 57e1c08 of sg2im
issue #6) with its training defaults ``max_objects=10``, ``use_orphaned_objects=True``,
``include_relationships=True``:

- the objects that take part in a relationship come first (in CPython ``set`` order, as sg2im); if there are
  more than ``max_objects - 1`` of them, ``max_objects`` of them are sampled (sg2im's off-by-one: up to
  ``max_objects + 1`` nodes with ``__image__``); if fewer than ``max_objects - 1``, orphans (objects without
  relationships) are sampled to fill up to ``max_objects - 1``;
- the ``__image__`` node is appended last with box ``[0, 0, 1, 1]``; triples are the image's relationships
  whose two endpoints were kept (indices as Python ints: the issue #6 fix, without which only ``__in_image__``
  triples survived), then ``(i, __in_image__, __image__)`` for every object;
- boxes ``[x / WW, y / HH, (x + w) / WW, (y + h) / HH]`` with ``WW, HH`` the size of the image *file*, not
  clamped (VG boxes may cross the border);
- the image is converted to RGB and resized to ``(image_size, image_size)`` with PIL bilinear (sg2im
  ``Resize``; no crop, aspect ratio not kept), as float [0, 1] (sg2im then ImageNet-normalises; the suite does
  not); masks are ``None`` (VG has none).

Unlike sg2im, which draws from the global ``random`` module, the subsampling of item ``i`` draws from
``random.Random(derive_seed("vg", split, seed, epoch, i))``, so items are reproducible across runs, workers
and processes; :meth:`VgDataset.set_epoch` gives a new draw per epoch like sg2im's fresh sampling.
"""

from __future__ import annotations

import json
import random
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmark.batch import SceneGraphItem
from benchmark.data import vg_preprocess as pp
from benchmark.data.packing import check_index, split_sha256
from benchmark.data.vg_preprocess import (
    H5_DATASETS,
    IMAGE_DIR_NAME,
    MANIFEST_NAME,
    REQUIRED_SPLITS,
    VOCAB_NAME,
    PreprocessConfig,
    VGDataError,
)
from benchmark.interfaces import SceneGraphDataset
from benchmark.io import read_json, sha256_file
from benchmark.paths import data_root
from benchmark.registry import register
from benchmark.scene_graph import IMAGE_TOKEN, IN_IMAGE, Vocab
from benchmark.seeding import derive_seed

DATASET = "vg"
OPTIONS_NAME = "preprocess_options.json"  # optional, in the raw folder: non-default thresholds (fixtures)
# sg2im scripts/train.py VG defaults.
MAX_OBJECTS = 10
USE_ORPHANED_OBJECTS = True
INCLUDE_RELATIONSHIPS = True


def default_root() -> Path:
    """``$SG2I_DATA_ROOT/vg``."""
    return data_root() / DATASET


def _h5py() -> Any:
    return pp._h5py()


def read_h5(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays the loader needs and the decoded ``image_paths`` of one sg2im split file, validated.

    A missing, truncated or corrupt file raises with the file name; a missing dataset or a wrong dtype/shape
    names the file and the dataset. ``image_paths`` come back from h5py 3 as ``bytes`` and are decoded as
    UTF-8 (with h5py 2, as sg2im used, they were ``str``; ``os.path.join`` fails on bytes).
    """
    h5py = _h5py()
    if not path.is_file():
        raise FileNotFoundError(f"vg: prepared split file not found: {path}")
    need = (
        "image_ids",
        "object_names",
        "object_boxes",
        "objects_per_image",
        "relationship_subjects",
        "relationship_predicates",
        "relationship_objects",
        "relationships_per_image",
    )
    try:
        with h5py.File(path, "r") as f:
            absent = [k for k in H5_DATASETS if k not in f]
            if absent:
                raise VGDataError(
                    f"vg: HDF5 file {path} lacks dataset(s) {absent}; it is not in sg2im's preprocess_vg.py "
                    "layout: re-run `python -m benchmark prepare vg`"
                )
            arrays = {k: np.asarray(f[k][()]) for k in need}
            raw_paths = f["image_paths"][()]
    except OSError as e:
        raise VGDataError(
            f"vg: cannot read HDF5 file {path} (truncated or corrupt?): {e}; "
            "re-run `python -m benchmark prepare vg`"
        ) from None
    n = arrays["image_ids"].shape[0] if arrays["image_ids"].ndim == 1 else -1
    mo = arrays["object_names"].shape[1] if arrays["object_names"].ndim == 2 else -1
    mr = arrays["relationship_subjects"].shape[1] if arrays["relationship_subjects"].ndim == 2 else -1
    shapes = {
        "image_ids": (n,),
        "object_names": (n, mo),
        "object_boxes": (n, mo, 4),
        "objects_per_image": (n,),
        "relationship_subjects": (n, mr),
        "relationship_predicates": (n, mr),
        "relationship_objects": (n, mr),
        "relationships_per_image": (n,),
    }
    for k, shape in shapes.items():
        a = arrays[k]
        if a.shape != shape or -1 in shape:
            raise VGDataError(f"vg: HDF5 file {path}: dataset {k!r} has shape {a.shape}, expected {shape}")
        if k != "object_boxes" and not np.issubdtype(a.dtype, np.integer):
            raise VGDataError(f"vg: HDF5 file {path}: dataset {k!r} has dtype {a.dtype}, expected int32")
    if raw_paths.shape != (n,):
        raise VGDataError(
            f"vg: HDF5 file {path}: dataset 'image_paths' has shape {raw_paths.shape}, expected {(n,)}"
        )
    try:
        paths = [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in raw_paths.tolist()]
    except UnicodeDecodeError as e:
        raise VGDataError(f"vg: HDF5 file {path}: dataset 'image_paths' is not UTF-8 ({e})") from None
    opi, rpi = arrays["objects_per_image"], arrays["relationships_per_image"]
    if n and (opi.min() < 0 or opi.max() > mo or rpi.min() < 0 or rpi.max() > mr):
        raise VGDataError(
            f"vg: HDF5 file {path}: objects/relationships_per_image out of range [0, {mo}] / [0, {mr}]"
        )
    return arrays, paths


def load_vocab(root: Path) -> tuple[Vocab, dict[str, Any]]:
    """The suite's :class:`Vocab` and sg2im's full vocab dict from ``<root>/vocab.json``."""
    path = root / VOCAB_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"vg: vocabulary file not found: {path}; run `python -m benchmark prepare vg --raw DIR`"
        )
    d = read_json(path, "vocabulary file")
    vocab = Vocab.from_json(d if isinstance(d, dict) else {}, source=str(path))
    if vocab.object_idx_to_name[:1] != (IMAGE_TOKEN,) or vocab.pred_idx_to_name[:1] != (IN_IMAGE,):
        raise VGDataError(f"vg: vocabulary file {path}: index 0 must be {IMAGE_TOKEN!r} / {IN_IMAGE!r}")
    return vocab, d


def load_manifest(root: Path) -> dict[str, Any] | None:
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    m = read_json(path, "manifest file")
    if not isinstance(m, dict) or not isinstance(m.get("splits"), dict):
        raise VGDataError(f"vg: manifest file {path}: field 'splits' is missing")
    return m


def natural_phrase(name: str) -> str:
    """A vocabulary name as text-encoder input: underscores to spaces, whitespace collapsed, lower case."""
    return " ".join(name.replace("_", " ").split()).lower()


@register("dataset", "vg")
class VgDataset(SceneGraphDataset):
    """Visual Genome v1.4 scene graphs, preprocessed and sampled as sg2im (179 objects / 46 predicates)."""

    name = DATASET

    def __init__(
        self,
        split: str,
        image_size: int,
        arrays: dict[str, np.ndarray],
        image_paths: list[str],
        vocab: Vocab,
        image_dir: Path,
        split_version: str,
        seed: int = 0,
        max_objects: int = MAX_OBJECTS,
        use_orphaned_objects: bool = USE_ORPHANED_OBJECTS,
        include_relationships: bool = INCLUDE_RELATIONSHIPS,
        h5_path: Path | None = None,
    ) -> None:
        self.split = split
        self.image_size = image_size
        self.vocab = vocab
        self.image_dir = image_dir
        self.split_version = split_version
        self.seed = seed
        self.epoch = 0
        self.max_objects = max_objects
        self.use_orphaned_objects = use_orphaned_objects
        self.include_relationships = include_relationships
        self.h5_path = h5_path
        self.image_paths = image_paths
        self.vg_image_ids: list[int] = [int(i) for i in arrays["image_ids"].tolist()]
        self.image_ids = [str(i) for i in self.vg_image_ids]
        self.split_sha256 = split_sha256(self.vg_image_ids)
        self._names = arrays["object_names"]
        self._boxes = arrays["object_boxes"]
        self._opi = arrays["objects_per_image"]
        self._rs = arrays["relationship_subjects"]
        self._rp = arrays["relationship_predicates"]
        self._ro = arrays["relationship_objects"]
        self._rpi = arrays["relationships_per_image"]
        self._image_idx = vocab.object_name_to_idx[IMAGE_TOKEN]
        self._in_image = vocab.pred_name_to_idx[IN_IMAGE]

    # -----------------------------------------------------------------------------------------------------
    # Construction

    @classmethod
    def build(
        cls,
        split: str,
        image_size: int,
        root: Path | None = None,
        *,
        seed: int = 0,
        max_objects: int = MAX_OBJECTS,
        use_orphaned_objects: bool = USE_ORPHANED_OBJECTS,
        include_relationships: bool = INCLUDE_RELATIONSHIPS,
        image_dir: Path | None = None,
    ) -> VgDataset:
        """Load ``<root>/<split>.h5`` (root default ``$SG2I_DATA_ROOT/vg``); images from ``image_dir``.

        ``image_dir`` defaults to ``<root>/images`` if it exists, else the folder recorded in the manifest.
        The keyword options are sg2im ``VgSceneGraphDataset``'s, with its ``scripts/train.py`` VG defaults.
        """
        root = Path(root) if root is not None else default_root()
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"vg: image_size must be a positive integer, got {image_size!r}")
        if isinstance(max_objects, bool) or not isinstance(max_objects, int) or max_objects < 1:
            raise ValueError(f"vg: max_objects must be a positive integer, got {max_objects!r}")
        manifest = load_manifest(root)
        valid = list(manifest["splits"]) if manifest else list(REQUIRED_SPLITS)
        if split not in valid:
            raise ValueError(f"unknown vg split {split!r}; valid splits: {', '.join(valid)}")
        h5_path = root / f"{split}.h5"
        if not h5_path.is_file():
            raise FileNotFoundError(
                f"vg: prepared split file not found: {h5_path}. Prepare Visual Genome with "
                f"`python -m benchmark prepare vg --raw DIR --root {root}` (see datasets/vg/README.md)"
            )
        vocab, _ = load_vocab(root)
        arrays, image_paths = read_h5(h5_path)
        names, preds = arrays["object_names"], arrays["relationship_predicates"]
        if names.size and (names.max() >= vocab.num_objects or preds.max() >= vocab.num_predicates):
            raise VGDataError(
                f"vg: {h5_path} uses object/predicate indices beyond {root / VOCAB_NAME}: mixed preparations?"
            )
        if manifest is not None:
            entry = manifest["splits"].get(split, {})
            got = split_sha256(arrays["image_ids"].tolist())
            if entry.get("ids_sha256") != got or entry.get("num_images") != len(image_paths):
                raise VGDataError(
                    f"vg: {h5_path} does not match {root / MANIFEST_NAME} (image ids sha256 {got[:16]}, "
                    f"{len(image_paths)} images): re-run `python -m benchmark prepare vg`"
                )
            split_version = str(manifest.get("split_version", pp.SPLIT_VERSION))
        else:
            warnings.warn(
                f"vg: no {MANIFEST_NAME} in {root}: HDF5 files written by another tool (e.g. sg2im's own "
                "script) are used as they are; prepare them with `python -m benchmark prepare vg` to pin and "
                "check them",
                stacklevel=2,
            )
            split_version = "unversioned"
        if image_dir is None:
            image_dir = root / IMAGE_DIR_NAME
            if not image_dir.is_dir() and manifest is not None and manifest.get("image_dir"):
                recorded = Path(manifest["image_dir"])
                image_dir = recorded if recorded.is_absolute() else root / recorded
        return cls(
            split,
            image_size,
            arrays,
            image_paths,
            vocab,
            Path(image_dir),
            split_version,
            seed=seed,
            max_objects=max_objects,
            use_orphaned_objects=use_orphaned_objects,
            include_relationships=include_relationships,
            h5_path=h5_path,
        )

    @classmethod
    def prepare(cls, root: Path | None = None, raw: Path | None = None) -> str:
        """Preprocess the raw VG files in ``raw`` (default ``root``) into ``root`` (``$SG2I_DATA_ROOT/vg``).

        Needs the files of :data:`benchmark.data.vg_preprocess.RAW_FILES` (nothing is downloaded); without
        them but with prepared files in ``root``, only checks those. Thresholds are sg2im's unless the raw
        folder holds a ``preprocess_options.json`` (as test fixtures do). Returns a report; mismatches with
        the expected vocabulary (179 / 46) and split sizes are flagged loudly.
        """
        root = Path(root) if root is not None else default_root()
        raw = Path(raw) if raw is not None else root
        missing = pp.missing_raw_files(raw)
        if missing:
            if all((root / f"{s}.h5").is_file() for s in REQUIRED_SPLITS) and (root / VOCAB_NAME).is_file():
                return cls._check(root, note=f"raw files not found in {raw}: checked the prepared files only")
            raise FileNotFoundError(
                f"vg: raw Visual Genome files missing in {raw} (nothing is downloaded by the suite):\n  "
                + "\n  ".join(missing)
                + f"\n  images: {pp.IMAGE_SOURCES}"
                + f"\nPut them in one folder and run: python -m benchmark prepare vg --raw DIR --root {root}"
            )
        cfg = pp.SG2IM_DEFAULTS
        options = raw / OPTIONS_NAME
        if options.is_file():
            cfg = PreprocessConfig.from_dict(read_json(options, "preprocessing options file"))
        if cls._up_to_date(root, raw, cfg):
            return cls._check(root, note="already prepared from these raw files (input hashes match)")
        res = pp.preprocess(
            raw, root, cfg, image_dir=raw / IMAGE_DIR_NAME, echo=lambda m: print(m, file=sys.stderr)
        )
        if options.is_file():
            res.notes.insert(0, f"thresholds from {options}: {json.dumps(read_json(options))}")
        report = pp.format_report(res)
        for split in res.manifest["splits"]:  # read back what was written
            cls.build(split, 64, root=root)
        return report

    @staticmethod
    def _up_to_date(root: Path, raw: Path, cfg: PreprocessConfig) -> bool:
        try:
            m = load_manifest(root)
        except (ValueError, FileNotFoundError):
            return False
        if m is None or m.get("config") != asdict(cfg):
            return False
        for name, info in m.get("inputs", {}).items():
            p = raw / name
            if (
                not p.is_file()
                or p.stat().st_size != info.get("bytes")
                or sha256_file(p) != info.get("sha256")
            ):
                return False
        for s in m["splits"].values():
            p = root / s.get("file", "")
            if not p.is_file() or sha256_file(p) != s.get("h5_sha256"):
                return False
        return (root / VOCAB_NAME).is_file()

    @classmethod
    def _check(cls, root: Path, note: str) -> str:
        manifest = load_manifest(root)
        vocab, d = load_vocab(root)
        lines = [f"vg: prepared data in {root} ({note})"]
        nobj, npred = vocab.num_objects, vocab.num_predicates
        flag = (
            ""
            if (nobj, npred) == (pp.EXPECTED_NUM_OBJECTS, pp.EXPECTED_NUM_PREDICATES)
            else "  <-- !! expected 179 / 46"
        )
        lines.append(
            f"  vocabulary: {nobj} objects, {npred} predicates, "
            f"{len(d.get('attribute_idx_to_name', []))} attributes{flag}"
        )
        splits = list(manifest["splits"]) if manifest else list(REQUIRED_SPLITS)
        for split in splits:
            ds = cls.build(split, 64, root=root)
            exp = pp.REPRODUCED_SPLIT_SIZES.get(split)
            lines.append(
                f"  {split:<6} {len(ds):>6} images (re-run on VG 1.4: {exp}; "
                f"paper [R]: {pp.PAPER_SPLIT_SIZES.get(split)}), "
                f"ids sha256 {ds.split_sha256[:16]}, images in {ds.image_dir}"
            )
        if manifest and manifest.get("problems"):
            lines += [f"  !! vg MISMATCH: {p}" for p in manifest["problems"]]
        return "\n".join(lines)

    # -----------------------------------------------------------------------------------------------------
    # Items

    def __len__(self) -> int:
        return len(self.image_paths)

    def set_epoch(self, epoch: int) -> None:
        """Use another draw of the random object subsampling (sg2im draws anew at every access)."""
        self.epoch = int(epoch)

    def item_rng(self, index: int) -> random.Random:
        """The generator of item ``index``'s object subsampling: a function of (split, seed, epoch, index)."""
        return random.Random(derive_seed(DATASET, self.split, self.seed, self.epoch, index))

    def object_indices(self, index: int, rng: random.Random) -> list[int]:
        """Which object slots of image ``index`` the item uses, in order (sg2im ``__getitem__``).

        Slots in relationships first, in CPython ``set`` order (sg2im builds the same set from Python ints);
        more than ``max_objects - 1`` of them -> ``rng.sample(..., max_objects)`` (sg2im's off-by-one quirk);
        fewer than ``max_objects - 1`` and ``use_orphaned_objects`` -> add ``rng.sample`` of the orphans.
        """
        n_rel = int(self._rpi[index])
        subs = self._rs[index, :n_rel].tolist()  # Python ints: the sg2im issue #6 fix
        objs = self._ro[index, :n_rel].tolist()
        with_rels: set[int] = set()
        without_rels = set(range(int(self._opi[index])))
        for s, o in zip(subs, objs):
            with_rels.add(s)
            with_rels.add(o)
            without_rels.discard(s)
            without_rels.discard(o)
        obj_idxs = list(with_rels)
        orphans = list(without_rels)
        if len(obj_idxs) > self.max_objects - 1:
            obj_idxs = rng.sample(obj_idxs, self.max_objects)
        if len(obj_idxs) < self.max_objects - 1 and self.use_orphaned_objects:
            num_to_add = min(self.max_objects - 1 - len(obj_idxs), len(orphans))
            obj_idxs += rng.sample(orphans, num_to_add)
        return obj_idxs

    def load_image(self, index: int) -> tuple[torch.Tensor, int, int]:
        """(float [3, S, S] in [0, 1], file width WW, file height HH): PIL RGB, bilinear resize, no crop."""
        path = self.image_dir / self.image_paths[index]
        s = self.image_size
        try:
            with open(path, "rb") as f, Image.open(f) as image:
                ww, hh = image.size
                image = image.convert("RGB").resize((s, s), Image.Resampling.BILINEAR)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"vg: image file not found: {path} (image_id {self.image_ids[index]}, split {self.split}); "
                f"images come from {pp.IMAGE_SOURCES}"
            ) from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise VGDataError(
                f"vg: cannot read image file {path} (image_id {self.image_ids[index]}): "
                f"{type(e).__name__}: {e}"
            ) from None
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
        return x, ww, hh

    def __getitem__(self, index: int) -> SceneGraphItem:
        index = check_index(index, len(self), f"vg {self.split}")
        image, ww, hh = self.load_image(index)
        obj_idxs = self.object_indices(index, self.item_rng(index))
        num = len(obj_idxs) + 1
        objs = [int(self._names[index, k]) for k in obj_idxs] + [self._image_idx]
        boxes = []
        for k in obj_idxs:
            x, y, w, h = self._boxes[index, k].tolist()
            boxes.append([float(x) / ww, float(y) / hh, float(x + w) / ww, float(y + h) / hh])
        boxes.append([0.0, 0.0, 1.0, 1.0])
        mapping = {k: i for i, k in enumerate(obj_idxs)}
        triples = []
        if self.include_relationships:
            n_rel = int(self._rpi[index])
            for s, p, o in zip(
                self._rs[index, :n_rel].tolist(),
                self._rp[index, :n_rel].tolist(),
                self._ro[index, :n_rel].tolist(),
            ):
                s, o = mapping.get(s), mapping.get(o)
                if s is not None and o is not None:
                    triples.append([s, p, o])
        triples += [[i, self._in_image, num - 1] for i in range(num - 1)]
        return SceneGraphItem(
            image=image,
            objs=torch.tensor(objs, dtype=torch.long),
            boxes=torch.tensor(boxes, dtype=torch.float32),
            triples=torch.tensor(triples, dtype=torch.long).reshape(-1, 3),
            masks=None,
            has_layout=torch.ones(num, dtype=torch.bool),
            image_id=self.image_ids[index],
        )

    def phrases(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Natural phrases: ``__image__`` -> image, ``__in_image__`` -> in image, ``"White "`` -> white."""
        return (
            tuple(natural_phrase(n) for n in self.vocab.object_idx_to_name),
            tuple(natural_phrase(n) for n in self.vocab.pred_idx_to_name),
        )

    # -----------------------------------------------------------------------------------------------------
    # Fixture

    @classmethod
    def write_fixture(cls, root: Path, repeat: int = 1) -> None:
        """A tiny raw VG copy in the real v1.4 layouts, preprocessed, under ``root``
        (:mod:`benchmark.data.fixtures.vg`); ``repeat`` > 1 appends copies with new ids (for benchmarks)."""
        from benchmark.data.fixtures.vg import write_fixture

        write_fixture(Path(root), repeat)
