"""Grid2Im object accuracy: the whole path (ImageNet file -> fine-tune -> cache -> score) on a random-init
ResNet-101 saved exactly as torchvision's ``resnet101-63fe2227.pth``, with a tiny fine-tuning budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmark import registry
from benchmark.data.shapes import ShapesDataset
from benchmark.interfaces import EvalInputs, MetricUnavailable
from benchmark.metrics import object_acc_resnet as oar
from benchmark.paths import cache_dir

HUB_FILE = "resnet101-63fe2227.pth"
TINY = oar.Recipe(crop_size=64, epochs=2, step_size=1, max_train_images=12, max_val_images=6)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor], Path]:
    from torchvision.models import resnet101

    shapes_root = cache_dir() / "shapes"  # the generated data stays in the shared test cache
    tmp = tmp_path_factory.mktemp("resnet")
    d = tmp / "torch" / "hub" / "checkpoints"
    d.mkdir(parents=True)
    torch.manual_seed(0)
    state = resnet101().state_dict()
    torch.save(state, d / HUB_FILE)
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCH_HOME", str(tmp / "torch"))
    mp.setenv("SG2I_CACHE", str(tmp / "cache"))  # the fine-tuned test classifier is thrown away
    mp.delenv(oar.WEIGHTS.env, raising=False)
    yield d / HUB_FILE, state, shapes_root
    mp.undo()
    oar._CLASSIFIERS.clear()


def _inputs(shapes_root: Path, n: int = 4) -> EvalInputs:
    load = lambda s: ShapesDataset.build(s, 32, root=shapes_root)  # noqa: E731
    ds = load("test")
    items = [ds[i] for i in range(n)]
    fake = (torch.stack([it.image for it in items]) * 255).round().to(torch.uint8)
    return EvalInputs(
        "shapes", "test", 32, ds.vocab, fake, fake, torch.arange(n), items, torch.device("cpu"), load
    )


def test_fine_tunes_caches_and_scores(env: tuple) -> None:
    file, state, shapes_root = env
    metric = oar.ObjectAccuracyResNet(recipe=TINY)
    assert registry.get("metric", "object_acc_resnet").outputs == {"object_acc_resnet": True}
    inputs = _inputs(shapes_root)
    out = metric.compute(inputs)
    correct, total = metric.last_counts
    assert (
        total == sum(len(it.objs) - 1 for it in inputs.graphs) and out["object_acc_resnet"] == correct / total
    )
    init, trained = metric.provenance()
    assert init.random_init and trained.random_init  # not the published ImageNet file
    assert "not the published file" in init.source and trained.source.startswith("trained:shapes/train crops")

    clf = oar._CLASSIFIERS[next(iter(oar._CLASSIFIERS))]
    net = clf.model.net
    # Grid2Im freezes conv1 / bn1 / layer1 and trains layer2 onwards; the ImageNet fc is replaced.
    assert torch.equal(net.conv1.weight, state["conv1.weight"])
    assert torch.equal(net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert not torch.equal(net.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])
    assert net.fc.out_features == sum(clf.heads.sizes) == 6 + 4  # colour and shape heads
    meta = clf.meta
    assert (
        meta["validation"] == "val split" and len(meta["history"]) == 2 and meta["recipe"]["crop_size"] == 64
    )
    assert meta["train_crops"] > 12 and clf.path.is_file() and clf.path.with_suffix(".json").is_file()

    # The disk cache is reused (no second fine-tuning) and scores the same.
    mtime = clf.path.stat().st_mtime_ns
    oar._CLASSIFIERS.clear()
    again = oar.ObjectAccuracyResNet(recipe=TINY)
    assert again.compute(inputs) == out and clf.path.stat().st_mtime_ns == mtime
    assert oar.classifier_path("shapes", 32, "x", TINY, "y") != oar.classifier_path(
        "shapes", 32, "x", oar.Recipe(), "y"
    )


def test_unavailable_without_imagenet_weights(
    env: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MetricUnavailable) as e:
        oar.ObjectAccuracyResNet(recipe=TINY).compute(_inputs(env[2], 2))
    assert HUB_FILE in str(e.value) and "SG2I_RESNET101_IMAGENET" in str(e.value)


def test_refuses_hours_of_cpu_fine_tuning(env: tuple) -> None:
    with pytest.raises(MetricUnavailable, match="many hours on the CPU"):
        oar.ObjectAccuracyResNet().compute(_inputs(env[2], 2))  # Grid2Im's full recipe on 4,000 images
