"""Speed of the dataset loaders (COCO-Stuff, Visual Genome, 4D-OR): build start-up and loading throughput.

Run: ``python -m pytest benchmarks/test_bench_datasets.py -p no:cacheprovider --benchmark-enable
-o addopts=--import-mode=importlib``. Figures are reported (``extra_info``), never asserted.
"""

from __future__ import annotations

import pytest

# --- 4D-OR (benchmark/data/or4d.py) ------------------------------------------------------------------------
# The 4D-OR fixture in the real on-disk format, scaled to 3,500 scans (train 1,400 / val 700 / test 1,400)
# with 320x240 JPEGs and label maps of camera 1. Timings are reported (extra_info), never asserted.

_OR4D_SCANS_PER_TAKE = 700


@pytest.fixture(scope="module")
def or4d_root(tmp_path_factory):
    from benchmark.data.or4d import Or4dDataset

    root = tmp_path_factory.mktemp("or4d") / "4dor"
    Or4dDataset.write_fixture(root, scans_per_take=_OR4D_SCANS_PER_TAKE, image_size=(320, 240), cameras=(1,))
    return root


def _timed(fn):
    """Run ``fn``, keep its value and last duration (benchmarks may be disabled: not from ``benchmark.stats``)."""
    import time

    out = {}

    def run():
        t0 = time.perf_counter()
        out["value"] = fn()
        out["seconds"] = time.perf_counter() - t0
        return out["value"]

    return run, out


def test_or4d_build_cold_start(benchmark, or4d_root, tmp_path, monkeypatch):
    """build("train", 64) with an empty cache: parse, stat, decode every JPEG and label map, write the cache."""
    from benchmark.data.or4d import Or4dDataset

    counter = iter(range(100))

    def setup():
        monkeypatch.setenv("SG2I_CACHE", str(tmp_path / f"cache{next(counter)}"))

    run, out = _timed(lambda: Or4dDataset.build("train", 64, root=or4d_root))
    benchmark.pedantic(run, setup=setup, rounds=2, iterations=1)
    n = len(out["value"])
    benchmark.extra_info.update(samples=n, seconds=out["seconds"], samples_per_s=n / out["seconds"])


def test_or4d_build_warm_start(benchmark, or4d_root, tmp_path, monkeypatch):
    """build("train", 64) with the cache filled: parse the annotations, stat the files, load the .npz."""
    from benchmark.data.or4d import Or4dDataset

    monkeypatch.setenv("SG2I_CACHE", str(tmp_path / "cache"))
    Or4dDataset.build("train", 64, root=or4d_root)
    run, out = _timed(lambda: Or4dDataset.build("train", 64, root=or4d_root))
    benchmark.pedantic(run, rounds=5, iterations=1)
    benchmark.extra_info.update(samples=len(out["value"]), seconds=out["seconds"])


def test_or4d_loading_throughput(benchmark, or4d_root, tmp_path, monkeypatch):
    """One epoch of the training split at 64x64 through a DataLoader (batch 32, one process, collate)."""
    from torch.utils.data import DataLoader

    from benchmark.batch import collate
    from benchmark.data.or4d import Or4dDataset

    monkeypatch.setenv("SG2I_CACHE", str(tmp_path / "cache"))
    ds = Or4dDataset.build("train", 64, root=or4d_root)
    loader = DataLoader(ds, batch_size=32, shuffle=False, num_workers=0, collate_fn=collate)
    run, out = _timed(lambda: sum(b.num_images for b in loader))
    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info.update(samples=out["value"], samples_per_s=out["value"] / out["seconds"])


def test_or4d_decode_full_resolution(benchmark, tmp_path, monkeypatch):
    """Cache build per sample at the real 2048x1536 resolution (JPEG + label map of camera 1), 16 samples."""
    from benchmark.data.or4d import Or4dDataset

    root = tmp_path / "4dor"
    Or4dDataset.write_fixture(root, scans_per_take=8, image_size=(2048, 1536), cameras=(1,))
    counter = iter(range(100))

    def setup():
        monkeypatch.setenv("SG2I_CACHE", str(tmp_path / f"cache{next(counter)}"))

    run, out = _timed(lambda: Or4dDataset.build("train", 64, root=root))
    benchmark.pedantic(run, setup=setup, rounds=2, iterations=1)
    n = len(out["value"])
    benchmark.extra_info.update(samples=n, ms_per_sample=1000 * out["seconds"] / n)


# --- Visual Genome (benchmark/data/vg.py) ------------------------------------------------------------------
# The VG fixture (real v1.4 JSON layouts, sg2im preprocessing) repeated 300 times: 3,000 train / 600 val /
# 900 test graphs; the copies reuse the fixture's 23 JPEGs (200x260 to 480x360 in the splits). Timings are
# reported (extra_info), never asserted.

_VG_REPEAT = 300
_VG_ITEMS = 512


@pytest.fixture(scope="module")
def vg_root(tmp_path_factory):
    from benchmark.data.vg import VgDataset

    root = tmp_path_factory.mktemp("vg") / "vg"
    VgDataset.write_fixture(root, repeat=_VG_REPEAT)
    return root


def test_vg_preprocess_scaled(benchmark, vg_root, tmp_path):
    """sg2im's preprocessing of the scaled raw fixture (JSON parsing, vocabularies, encoding, HDF5)."""
    from benchmark.data import vg_preprocess as pp
    from benchmark.io import read_json

    cfg = pp.PreprocessConfig.from_dict(read_json(vg_root / "preprocess_options.json"))
    counter = iter(range(100))
    run, out = _timed(
        lambda: pp.preprocess(vg_root, tmp_path / f"out{next(counter)}", cfg, vg_root / "images")
    )
    benchmark.pedantic(run, rounds=2, iterations=1)
    n = sum(s["num_split_file_ids"] for s in out["value"].manifest["splits"].values())
    benchmark.extra_info.update(raw_images=n, seconds=out["seconds"])


def test_vg_build_startup(benchmark, vg_root):
    """build("train", 64): read and validate the HDF5 file, vocabulary and manifest (3,000 graphs)."""
    from benchmark.data.vg import VgDataset

    run, out = _timed(lambda: VgDataset.build("train", 64, root=vg_root))
    benchmark.pedantic(run, rounds=5, iterations=1)
    benchmark.extra_info.update(samples=len(out["value"]), seconds=out["seconds"])


def test_vg_loading_throughput(benchmark, vg_root):
    """512 items at 64x64 in one process: JPEG decode, bilinear resize, object sampling, triples."""
    from benchmark.data.vg import VgDataset

    ds = VgDataset.build("train", 64, root=vg_root)
    run, out = _timed(lambda: [ds[i] for i in range(_VG_ITEMS)])
    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info.update(samples=_VG_ITEMS, samples_per_s=_VG_ITEMS / out["seconds"])


def test_vg_loading_throughput_one_worker(benchmark, vg_root):
    """512 items at 64x64 through a DataLoader with one worker process (batch 32, collate)."""
    from torch.utils.data import DataLoader

    from benchmark.batch import collate
    from benchmark.data.vg import VgDataset

    ds = VgDataset.build("train", 64, root=vg_root)
    loader = DataLoader(ds, batch_size=32, sampler=range(_VG_ITEMS), num_workers=1, collate_fn=collate)
    run, out = _timed(lambda: sum(b.num_images for b in loader))
    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info.update(samples=out["value"], samples_per_s=out["value"] / out["seconds"])


def test_vg_loading_throughput_800px(benchmark, tmp_path):
    """As above with the fixture's JPEGs re-saved at 800x600 (VG_100K images are up to 800 px wide)."""
    from PIL import Image

    from benchmark.data.vg import VgDataset

    root = tmp_path / "vg"
    VgDataset.write_fixture(root, repeat=20)
    for path in (root / "images").rglob("*.jpg"):
        with Image.open(path) as im:
            im.resize((800, 600), Image.Resampling.BICUBIC).save(path, quality=90)
    ds = VgDataset.build("train", 64, root=root)
    n = min(_VG_ITEMS, len(ds))
    run, out = _timed(lambda: [ds[i] for i in range(n)])
    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info.update(samples=n, samples_per_s=n / out["seconds"])


# --- COCO-Stuff (benchmark/data/coco_stuff.py) --------------------------------------------------------------
# The COCO-Stuff fixture in the real on-disk format plus 2,000 train images of 640x480 (COCO's usual size; 3-8
# objects each, polygons and stuff RLEs; their JPEGs are hard links to 16 rendered ones): 2,006 train images.
# The sg2im-style baseline repeats google/sg2im's per-item work (JPEG decode + resize, pycocotools decode of
# every mask at full size, crop, scikit-image resize, torch centres, relations) on the same items, so the
# ratio is measured side by side. Timings are reported (extra_info), never asserted.

_COCO_EXTRA = 2000
_COCO_ITEMS = 512


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    from benchmark.data.coco_stuff import CocoStuffDataset

    root = tmp_path_factory.mktemp("coco") / "coco_stuff"
    CocoStuffDataset.write_fixture(root, extra_images=_COCO_EXTRA)
    return root


def test_coco_build_cold_start(benchmark, coco_root):
    """build("train", 64) on an unprepared root: parse the JSON, filter, decode and resize every mask, write the
    index and the 64 px image cache (every kept JPEG decoded once)."""
    import shutil

    from benchmark.data.coco_stuff import CocoStuffDataset, prepared_dir

    run, out = _timed(lambda: CocoStuffDataset.build("train", 64, root=coco_root))
    benchmark.pedantic(run, setup=lambda: shutil.rmtree(prepared_dir(coco_root), ignore_errors=True), rounds=2,
                       iterations=1)
    n = len(out["value"])
    benchmark.extra_info.update(samples=n, seconds=out["seconds"], ms_per_image=1000 * out["seconds"] / n)


def test_coco_build_warm_start(benchmark, coco_root):
    """build("train", 64) on a prepared root: read the manifest, stat the inputs, load the index."""
    from benchmark.data.coco_stuff import CocoStuffDataset

    CocoStuffDataset.build("train", 64, root=coco_root)
    run, out = _timed(lambda: CocoStuffDataset.build("train", 64, root=coco_root))
    benchmark.pedantic(run, rounds=5, iterations=1)
    benchmark.extra_info.update(samples=len(out["value"]), seconds=out["seconds"])


@pytest.mark.parametrize("cached", [True, False], ids=["image_cache", "decode_jpeg"])
def test_coco_loading_throughput(benchmark, coco_root, cached):
    """512 items at 64x64 in one process: from the prepared 64 px image cache, or decoding each 640x480 JPEG
    (what sizes without a cache do); annotations, masks and relations the same way in both."""
    from benchmark.data.coco_stuff import CocoStuffDataset

    ds = CocoStuffDataset.build("train", 64, root=coco_root)
    if not cached:
        ds._cache_file = None  # decode every JPEG
    run, out = _timed(lambda: [ds[i] for i in range(_COCO_ITEMS)])
    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info.update(samples=_COCO_ITEMS, samples_per_s=_COCO_ITEMS / out["seconds"])


def test_coco_loading_throughput_one_worker(benchmark, coco_root):
    """512 items at 64x64 through a DataLoader with one worker process (batch 32, collate), image cache."""
    from torch.utils.data import DataLoader

    from benchmark.batch import collate
    from benchmark.data.coco_stuff import CocoStuffDataset

    ds = CocoStuffDataset.build("train", 64, root=coco_root)
    loader = DataLoader(ds, batch_size=32, sampler=range(_COCO_ITEMS), num_workers=1, collate_fn=collate)
    run, out = _timed(lambda: sum(b.num_images for b in loader))
    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info.update(samples=out["value"], samples_per_s=out["value"] / out["seconds"])


def _sg2im_getitem(coco_root, ds, anti_aliasing):
    """google/sg2im ``CocoSceneGraphDataset.__getitem__``'s work per item at 64x64 (JPEG decode + bilinear
    resize, pycocotools decode of every mask at full size, crop, scikit-image resize, centres, relations) for
    the first 128 train items of ``ds``: returns ``(item(image_id), image_ids)``."""
    import json
    import math
    import random
    from collections import defaultdict

    import numpy as np
    import torch
    from PIL import Image
    from pycocotools import mask as mask_utils

    skt = pytest.importorskip("skimage.transform")

    ids = {int(i) for i in ds.image_ids[:128]}
    files, objects = {}, defaultdict(list)
    for kind in ("instances", "stuff"):
        data = json.loads((coco_root / f"annotations/{kind}_train2017.json").read_text())
        files.update({im["id"]: (im["file_name"], im["width"] * im["height"]) for im in data["images"]})
        for ann in data["annotations"]:
            if ann["image_id"] in ids and ann["bbox"][2] * ann["bbox"][3] / files[ann["image_id"]][1] > 0.02:
                objects[ann["image_id"]].append(ann)
    kwargs = {} if anti_aliasing is None else {"anti_aliasing": anti_aliasing}

    def item(image_id):
        with Image.open(coco_root / "images/train2017" / files[image_id][0]) as image:
            ww, hh = image.size
            img = torch.from_numpy(np.array(image.convert("RGB").resize((64, 64), Image.BILINEAR)))
        img = img.permute(2, 0, 1).float().div(255)
        boxes, masks = [], []
        for ann in objects[image_id]:
            x, y, w, h = ann["bbox"]
            boxes.append(torch.FloatTensor([x / ww, y / hh, (x + w) / ww, (y + h) / hh]))
            seg = ann["segmentation"]
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, hh, ww))
            else:
                rle = mask_utils.frPyObjects(seg, hh, ww) if isinstance(seg["counts"], list) else seg
            mx0, my0 = round(x), round(y)
            m = mask_utils.decode(rle)[my0:max(my0 + 1, round(y + h)), mx0:max(mx0 + 1, round(x + w))]
            masks.append(torch.from_numpy(skt.resize(255.0 * m, (16, 16), mode="constant", **kwargs) > 128))
        boxes, masks = torch.stack(boxes), torch.stack(masks)
        centres = []
        for b, m in zip(boxes, masks):
            xs = torch.linspace(float(b[0]), float(b[2]), 16).view(1, 16).expand(16, 16)
            ys = torch.linspace(float(b[1]), float(b[3]), 16).view(16, 1).expand(16, 16)
            centres.append([xs[m].mean(), ys[m].mean()] if m.any() else [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
        centres = torch.FloatTensor(centres)
        triples = []
        for cur in range(len(boxes)):
            other = random.choice([k for k in range(len(boxes)) if k != cur])
            s, o = (cur, other) if random.random() > 0.5 else (other, cur)
            d = centres[s] - centres[o]
            triples.append([s, math.atan2(d[1], d[0]), o])
        return img, boxes, masks, triples

    return item, [int(i) for i in ds.image_ids[:128]]


@pytest.mark.parametrize("anti_aliasing", [None, False], ids=["skimage_default", "skimage_0.14"])
def test_coco_sg2im_getitem_baseline(benchmark, coco_root, anti_aliasing):
    """google/sg2im ``CocoSceneGraphDataset.__getitem__``'s work per item on the first 128 train items at 64x64:
    scikit-image's current default resize (anti-aliased) or 0.14's (sg2im's pin, none)."""
    from benchmark.data.coco_stuff import CocoStuffDataset

    ds = CocoStuffDataset.build("train", 64, root=coco_root)
    item, order = _sg2im_getitem(coco_root, ds, anti_aliasing)
    run, out = _timed(lambda: [item(i) for i in order])
    benchmark.pedantic(run, rounds=2, iterations=1)
    benchmark.extra_info.update(samples=len(order), samples_per_s=len(order) / out["seconds"])


@pytest.mark.parametrize("cached", [True, False], ids=["image_cache", "decode_jpeg"])
def test_coco_item_vs_sg2im_getitem(benchmark, coco_root, cached):
    """The same 128 train items at 64x64: sg2im's ``__getitem__`` rules (scikit-image 0.14 resize, its pin)
    vs ours (``ds[i]``, from the 64 px image cache or decoding each JPEG), alternately."""
    from benchmark.data.coco_stuff import CocoStuffDataset
    from benchmarks.side_by_side import alternate

    ds = CocoStuffDataset.build("train", 64, root=coco_root)
    if not cached:
        ds._cache_file = None  # decode every JPEG
    item, order = _sg2im_getitem(coco_root, ds, False)
    n = len(order)
    alternate(benchmark, f"COCO-Stuff items at 64 px ({'cached' if cached else 'uncached'}), 128 items",
              lambda: [item(i) for i in order], lambda: [ds[i] for i in range(n)], rounds=3, warmup=1,
              peer_name="sg2im __getitem__ rules", items=n)
