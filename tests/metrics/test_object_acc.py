"""Object accuracy: the real-crop classifier on ``shapes`` (accuracy, chance on mismatches, cache, safetensors).

The classifier is trained once for this module in a temporary ``SG2I_CACHE`` (shapes train split at 32 px,
~20-30 s on 2 idle CPU cores) and reused by every test.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmark import registry
from benchmark.batch import SceneGraphItem
from benchmark.data.shapes import ShapesDataset
from benchmark.interfaces import EvalInputs, WeightProvenance
from benchmark.metrics import object_acc as oa
from benchmark.metrics.object_acc import (
    ObjectAccuracySmall,
    get_classifier,
    heads_for,
    object_crops,
    real_crop_accuracy,
)
from benchmark.scene_graph import Vocab

SIZE = 32


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp("sg2i_cache")
    mp.setenv("SG2I_CACHE", str(d))
    yield d
    mp.undo()


def _load_split(split: str) -> ShapesDataset:
    return ShapesDataset.build(split, SIZE)


@pytest.fixture(scope="module")
def clf(cache: Path) -> oa.Classifier:
    return get_classifier("shapes", SIZE, _load_split)


@pytest.fixture(scope="module")
def test_set(cache: Path) -> ShapesDataset:
    return _load_split("test")


def _inputs(ds: ShapesDataset, fake: torch.Tensor, fake_to_graph: torch.Tensor) -> EvalInputs:
    graphs = [ds[i] for i in range(len(ds))]
    real = oa.to_uint8(torch.stack([g.image for g in graphs]))  # type: ignore[misc]
    return EvalInputs(
        dataset="shapes",
        split=ds.split,
        image_size=SIZE,
        vocab=ds.vocab,
        real=real,
        fake=fake,
        fake_to_graph=fake_to_graph,
        graphs=graphs,
        device=torch.device("cpu"),
        load_split=_load_split,
    )


def _real_uint8(ds: ShapesDataset) -> torch.Tensor:
    return oa.to_uint8(torch.stack([ds[i].image for i in range(len(ds))]))  # type: ignore[misc]


def test_real_crop_accuracy_test_and_unseen(clf: oa.Classifier) -> None:
    acc_test = real_crop_accuracy("shapes", "test", SIZE, "cpu")
    acc_unseen = real_crop_accuracy("shapes", "test_unseen", SIZE, "cpu")
    print(
        f"\nreal-crop accuracy shapes@{SIZE}: test {acc_test:.4f}, test_unseen {acc_unseen:.4f}; {oa.describe(clf)}"
    )
    assert acc_test >= 0.95
    assert acc_unseen >= 0.9
    assert clf.meta["val_acc"] >= 0.95
    assert clf.meta["params"] < 500_000


def test_metric_on_real_images_matches_real_crop_accuracy(
    clf: oa.Classifier, test_set: ShapesDataset
) -> None:
    real = _real_uint8(test_set)
    metric = ObjectAccuracySmall()
    assert metric.provenance() == []
    out = metric.compute(_inputs(test_set, real, torch.arange(len(test_set))))
    assert out["object_acc_small"] == pytest.approx(
        real_crop_accuracy("shapes", "test", SIZE, "cpu"), abs=1e-12
    )
    assert metric.last_counts[1] == sum(int((test_set[i].objs != 0).sum()) for i in range(len(test_set)))
    assert metric.provenance() == [
        WeightProvenance(
            name="object_classifier",
            source="trained:shapes/train crops",
            sha256=hashlib.sha256(clf.path.read_bytes()).hexdigest(),
            random_init=False,
        )
    ]


def test_mismatched_images_score_near_chance(clf: oa.Classifier, test_set: ShapesDataset) -> None:
    n = len(test_set)
    real = _real_uint8(test_set)
    # Images paired with the wrong graphs: crops at another scene's boxes.
    shifted = ObjectAccuracySmall().compute(_inputs(test_set, real, (torch.arange(n) + 1) % n))[
        "object_acc_small"
    ]
    # Pure noise images at the right boxes.
    noise = torch.randint(0, 256, real.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    noisy = ObjectAccuracySmall().compute(_inputs(test_set, noise, torch.arange(n)))["object_acc_small"]
    chance = 1 / (6 * 4)  # 6 colours x 4 shapes, both heads must be right
    print(f"\nmismatched graphs {shifted:.4f}, noise {noisy:.4f}, chance {chance:.4f}")
    assert shifted < 0.15 and noisy < 0.15


def test_some_objects_without_layout_are_skipped(clf: oa.Classifier, test_set: ShapesDataset) -> None:
    items = [test_set[i] for i in range(8)]
    for it in items:
        it.has_layout = torch.ones(len(it.objs), dtype=torch.bool)
        it.has_layout[0] = False
    expected = sum(int((it.objs != 0).sum()) - 1 for it in items)
    correct, total = oa.generated_crop_accuracy(clf, _real_uint8(test_set)[:8], items, torch.arange(8))
    assert total == expected and correct <= total


def test_cached_classifier_reused(clf: oa.Classifier, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = sorted((cache / "classifiers" / "object_acc_small").glob("shapes_32px_v1_seed0_*"))
    assert [f.suffix for f in files if f.suffix != ".lock"] == [".json", ".safetensors"]
    mtime = clf.path.stat().st_mtime_ns

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached classifier was retrained")

    monkeypatch.setattr(oa, "train_classifier", no_training)
    monkeypatch.setattr(oa, "_CLASSIFIERS", {})  # a fresh process: only the disk cache is left
    again = get_classifier("shapes", SIZE, _load_split)
    assert again is not clf and again.sha256 == clf.sha256
    assert clf.path.stat().st_mtime_ns == mtime
    x = object_crops(
        _real_uint8(_load_split("val"))[:4], torch.tensor([[0.1, 0.1, 0.5, 0.5]] * 4), torch.arange(4)
    )
    assert torch.equal(oa.predict(again.model, x), oa.predict(clf.model, x))


def test_sidecar_contents(clf: oa.Classifier) -> None:
    meta = json.loads(clf.path.with_suffix(".json").read_text())
    train = _load_split("train")
    assert meta["version"] == oa.CLASSIFIER_VERSION == "1" and meta["seed"] == 0
    assert meta["train_split_sha256"] == train.split_sha256
    assert meta["sha256"] == clf.sha256
    assert meta["heads"]["classes"] == [
        ["blue", "green", "orange", "purple", "red", "yellow"],
        ["circle", "diamond", "square", "triangle"],
    ]
    assert meta["colour_permuted_heads"] == ["factor1"]
    assert meta["train_seconds"] > 0 and 0.95 <= meta["holdout_acc"] <= 1.0


def test_safetensors_load_without_pickle(clf: oa.Classifier, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import safe_open

    raw = clf.path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert raw[8:9] == b"{" and json.loads(raw[8 : 8 + header_len])  # a safetensors header, not a pickle/zip
    with safe_open(str(clf.path), framework="pt") as f:
        keys = set(f.keys())
    assert keys == set(clf.model.state_dict())

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used to load the classifier")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(oa, "_CLASSIFIERS", {})
    assert get_classifier("shapes", SIZE, _load_split).sha256 == clf.sha256


def test_object_crops_cut_the_box() -> None:
    img = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    img[0, 0, 8:16, 4:20] = 255  # a red rectangle: x in [4, 20), y in [8, 16)
    crop = object_crops(img, torch.tensor([[4 / 32, 8 / 32, 20 / 32, 16 / 32]]), torch.tensor([0]))
    assert crop.shape == (1, 3, 32, 32) and crop.dtype == torch.uint8
    assert (crop[0, 0, 2:-2, 2:-2] == 255).all() and (crop[0, 1:] == 0).all()


def test_heads_fall_back_to_object_classes() -> None:
    vocab = Vocab(("__image__", "cat", "dog"), ("__in_image__",))
    heads = heads_for(SimpleNamespace(vocab=vocab))  # type: ignore[arg-type]
    assert heads.names == ("object",) and heads.classes == (("cat", "dog"),)
    assert heads.table == ((-1,), (0,), (1,))
    item = SceneGraphItem(
        image=None, objs=torch.tensor([2, 1, 0]), boxes=torch.rand(3, 4), triples=torch.zeros(0, 3)
    )
    boxes, index, labels = oa._item_rows([item], heads)
    assert labels.tolist() == [[1], [0]] and index.tolist() == [0, 0] and boxes.shape == (2, 4)


def test_registered_by_name() -> None:
    assert registry.get("metric", "object_acc_small") is ObjectAccuracySmall
    assert registry.entries()["metric"]["object_acc_small"].summary
    assert ObjectAccuracySmall.outputs == {"object_acc_small": True}
