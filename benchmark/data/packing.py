"""Packed scene graphs: the arrays a prepared split is stored as, their ``.npz`` files, items and split hashes.

A dataset loader parses its raw format, then packs. A split of N graphs is a dict of flat arrays with
row pointers (the compressed-sparse-row layout of ``scipy.sparse.csr_matrix``, and of PyTorch Geometric's
batched graphs): the objects of graph ``i`` are rows ``obj_ptr[i]:obj_ptr[i + 1]`` of ``objs`` int64
``[O]`` (vocabulary indices), ``boxes`` float32 ``[O, 4]`` (``x0, y0, x1, y1`` in [0, 1]), ``masks`` uint8
``[O, M, M]`` and, where a dataset has objects without a layout, ``has_layout`` bool ``[O]``; its triples
are rows ``triple_ptr[i]:triple_ptr[i + 1]`` of ``triples`` int64 ``[T, 3]`` ``(s, p, o)`` with ``s``/``o``
indices local to the graph. ``images`` uint8 ``[N, 3, S, S]`` and ``ids`` ``[N]`` complete a cache file; a
JSON ``meta`` string records what the file was built from and is compared before it is used.

``split_sha256`` (sha256 of the sorted image ids as compact JSON) is the split manifest hash every
dataset records in its results.
"""

from __future__ import annotations

import io
import json
import os
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from benchmark.batch import SceneGraphItem
from benchmark.interfaces import SceneGraphDataset
from benchmark.io import atomic_write_bytes, file_lock, sha256_json
from benchmark.progress import tqdm

Arrays = dict[str, np.ndarray]
PACKED_KEYS = ("objs", "boxes", "masks", "triples", "obj_ptr", "triple_ptr")
T = TypeVar("T")


def split_sha256(ids: Sequence[str] | Sequence[int]) -> str:
    """sha256 of the sorted image ids as compact JSON: the split manifest hash results record.

    Ids keep their type (strings sort as strings, VG's integer ids as integers), so each dataset's hash is
    the one its manifests have always recorded.
    """
    return sha256_json(sorted(ids))  # type: ignore[type-var]


def concat_rows(rows: Sequence[Any], shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """``rows`` (each one ``shape`` item or a stack ``[k, *shape]`` of them) as one ``[K, *shape]`` array."""
    parts = [np.asarray(r, dtype=dtype).reshape(-1, *shape) for r in rows]
    return np.concatenate(parts) if parts else np.zeros((0, *shape), dtype=dtype)


def pack(
    objs: Sequence[Sequence[int]],
    boxes: Sequence[Any],
    masks: Sequence[Any],
    triples: Sequence[Sequence[Sequence[int]]],
    mask_size: int,
    has_layout: Sequence[Any] | None = None,
) -> Arrays:
    """The packed arrays (module docstring) of graphs given one entry per graph: object indices, boxes
    ``[n, 4]``, masks ``[n, M, M]``, triples ``[t, 3]`` and optionally has_layout ``[n]``."""
    out = {
        "objs": np.fromiter((o for g in objs for o in g), dtype=np.int64),
        "boxes": concat_rows(boxes, (4,), np.float32),
        "masks": concat_rows(masks, (mask_size, mask_size), np.uint8),
        "triples": np.asarray([t for g in triples for t in g], dtype=np.int64).reshape(-1, 3),
        "obj_ptr": np.cumsum([0, *map(len, objs)]).astype(np.int64),
        "triple_ptr": np.cumsum([0, *map(len, triples)]).astype(np.int64),
    }
    if has_layout is not None:
        out["has_layout"] = concat_rows(has_layout, (), bool)
    return out


def check_packed(a: Arrays, n: int, mask_size: int) -> None:
    """Raise ValueError unless the packed arrays of ``a`` describe ``n`` graphs consistently."""
    o, t = len(a["objs"]), len(a["triples"])
    ok = (
        a["obj_ptr"].shape == (n + 1,) and a["obj_ptr"][-1] == o
        and a["triple_ptr"].shape == (n + 1,) and a["triple_ptr"][-1] == t
        and a["boxes"].shape == (o, 4) and a["masks"].shape == (o, mask_size, mask_size)
        and a.get("has_layout", np.zeros(o)).shape == (o,)
    )  # fmt: skip
    if not ok:
        raise ValueError("annotation arrays have inconsistent shapes")


def write_npz(path: Path, arrays: Arrays, meta: dict[str, Any]) -> None:
    """``arrays`` and the JSON ``meta`` as one compressed ``.npz``, written atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays, meta=np.asarray(json.dumps(meta, sort_keys=True)))
    atomic_write_bytes(path, buf.getvalue())


def read_npz(path: Path, keys: Sequence[str]) -> tuple[Arrays, dict[str, Any]]:
    """The arrays ``keys`` and the ``meta`` dict of a :func:`write_npz` file (never unpickles).

    Raises ValueError with the reason when the file is unreadable or lacks an array.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in (*keys, "meta") if k not in z.files]
            if missing:
                raise ValueError(f"missing arrays {missing}")
            a = {k: z[k] for k in keys}
            meta = json.loads(str(z["meta"]))
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, json.JSONDecodeError) as e:
        raise ValueError(f"unreadable ({type(e).__name__}: {e})") from None
    return a, meta


def cached(
    keys: Sequence[Any],
    path_of: Callable[[Any], Path],
    read: Callable[[Path, Any], Arrays],
    build: Callable[[list[Any]], dict[Any, tuple[Arrays, dict[str, Any]]]],
    lock: Path,
    what: str,
) -> tuple[dict[Any, Arrays], float | None]:
    """Arrays per key (an image size) from cache files, building what is missing, corrupt or stale.

    Under ``lock``: each file is read with ``read`` (which raises ValueError when it is unusable, with a
    warning naming the file); ``build(todo)`` returns ``(arrays, meta)`` per missing key, which are written
    with :func:`write_npz` and read back, so a file is used only once it reads back. Returns (arrays by key,
    build seconds or None when everything came from the cache).
    """
    with file_lock(lock):
        out: dict[Any, Arrays] = {}
        todo = []
        for k in keys:
            path = path_of(k)
            if not path.exists():
                todo.append(k)
                continue
            try:
                out[k] = read(path, k)
            except ValueError as e:
                warnings.warn(
                    f"{what}: cache file {path} is corrupt or stale ({e}); rebuilding it", stacklevel=3
                )
                todo.append(k)
        if not todo:
            return out, None
        t0 = time.perf_counter()
        for k, (arrays, meta) in build(todo).items():
            path = path_of(k)
            write_npz(path, arrays, meta)
            try:
                out[k] = read(path, k)
            except ValueError as e:
                raise RuntimeError(
                    f"{what}: freshly written cache file {path} does not read back: {e}"
                ) from e
        return out, time.perf_counter() - t0


def write_image_array(path: Path, images: Iterable[np.ndarray], n: int, size: int) -> None:
    """``n`` uint8 ``[3, size, size]`` images into one ``[n, 3, size, size]`` ``.npy`` file (row by row
    through a memory map, so a split need not fit in memory), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
        for r, image in enumerate(images):
            arr[r] = image
        arr.flush()
        del arr
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_image_array(path: Path, n: int, size: int) -> None:
    """Raise ValueError unless ``path`` is an :func:`write_image_array` file of ``n`` images of ``size`` px."""
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"image cache {path}: {e}") from None
    if arr.shape != (n, 3, size, size) or arr.dtype != np.uint8:
        raise ValueError(f"image cache {path} has shape {arr.shape} {arr.dtype}")


def progress(items: Sequence[T], desc: str, quiet: bool = False) -> Iterable[T]:
    """``items`` with a tqdm bar on stderr, shown only for jobs of more than 300 items."""
    return tqdm(items, desc=desc, unit="img", disable=quiet or len(items) <= 300, leave=False)


def check_index(index: int, n: int, what: str) -> int:
    """``index`` in ``[0, n)`` (negative counts from the end); IndexError naming ``what`` otherwise."""
    if not -n <= index < n:
        raise IndexError(f"index {index} out of range for {what} ({n} images)")
    return index % n


class PackedDataset(SceneGraphDataset):
    """A split held as packed arrays in memory (``self._a``, with ``images``): items are slices of them.

    Subclasses set ``image_ids`` and ``_a``; ``has_layout`` defaults to all True when the arrays lack it.
    """

    image_ids: list[str]
    _a: Arrays

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> SceneGraphItem:
        index = check_index(index, len(self), f"{self.name} {self.split}")
        a = self._a
        o0, o1 = int(a["obj_ptr"][index]), int(a["obj_ptr"][index + 1])
        t0, t1 = int(a["triple_ptr"][index]), int(a["triple_ptr"][index + 1])
        has = a.get("has_layout")
        return SceneGraphItem(
            image=torch.from_numpy(a["images"][index]).float().div_(255.0),
            objs=torch.from_numpy(a["objs"][o0:o1].copy()),
            boxes=torch.from_numpy(a["boxes"][o0:o1].copy()),
            triples=torch.from_numpy(a["triples"][t0:t1].copy()),
            masks=torch.from_numpy(a["masks"][o0:o1]).float(),
            has_layout=torch.ones(o1 - o0, dtype=torch.bool)
            if has is None
            else torch.from_numpy(has[o0:o1].copy()),
            image_id=self.image_ids[index],
        )
