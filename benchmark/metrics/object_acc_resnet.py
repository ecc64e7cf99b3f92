"""Object accuracy with Grid2Im's classifier: an ImageNet ResNet-101 fine-tuned on real object crops.

The recipe of ``ashual/scene_generation`` ``scripts/train_accuracy_net.py`` (Ashual & Wolf, "Specifying
Object Attributes and Relations in Interactive Scene Generation", ICCV 2019), :class:`Recipe`'s defaults:

* torchvision ResNet-101 initialised from ImageNet (``IMAGENET1K_V1``, the ``pretrained=True`` weights), its
  ``fc`` replaced by a new linear layer; ``conv1``, ``bn1`` and ``layer1`` frozen (``requires_grad=False``),
  ``layer2`` onwards trained; the whole network in train mode while training (batch norm included);
* object crops at the ground-truth boxes resized to 224 x 224 (bilinear; :func:`object_crops`), ImageNet
  mean/std normalisation; cross-entropy; SGD lr 1e-3, momentum 0.9; ``StepLR(step_size=7, gamma=0.1)`` per
  epoch; 20 epochs; batches of 4 images (all their objects); the epoch with the best validation accuracy
  is kept. Validation is the dataset's ``val`` split (Grid2Im: COCO val), or 10% of the train images when
  the dataset has none.

Shared with ``object_acc_small`` (:mod:`benchmark.metrics.object_acc`): the classes (one softmax head per
object factor when the dataset defines factors, e.g. colour and shape on ``shapes``, else one head over the
objects; the linear layer outputs all heads' logits), the crops, "correct = every head right", the
micro-average over the objects of the generated images cropped at their graphs' ground-truth boxes, and the
recoloured-crop training of colour-free heads (so that unseen colour/shape combinations can be recognised).
Grid2Im trains one head over COCO's classes and does not recolour.

The fine-tuned network is cached as safetensors (+ a JSON sidecar) under
``cache_dir()/classifiers/object_acc_resnet/``, keyed by dataset, image size, train split hash, recipe and
the SHA-256 of the ImageNet file. The ImageNet weights are read from ``$SG2I_RESNET101_IMAGENET`` or the
``torch.hub`` cache (:mod:`benchmark.metrics.pretrained`); without them the metric is unavailable (the
offline stand-in is ``object_acc_small``). Its provenance inherits ``random_init`` from the ImageNet file
(a file that is not the published one never reaches the leaderboard). Fine-tuning runs on the evaluation
device: minutes on a GPU, ~30 h on one CPU core for ``shapes`` (4,000 train images), so a CPU fine-tuning
above ``CPU_BUDGET`` is refused (unavailable, with instructions) unless ``SG2I_CPU_FINETUNE=1``.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.batch import SceneGraphItem
from benchmark.interfaces import EvalInputs, Metric, MetricUnavailable, SceneGraphDataset, WeightProvenance
from benchmark.io import atomic_write_bytes, atomic_write_json, read_json, sha256_file, sha256_json
from benchmark.metrics.object_acc import (
    COLOUR_PROBE_THRESHOLD,
    CROP_SIZE,
    Heads,
    _item_rows,
    colour_probe,
    heads_for,
    memoised_build,
    object_crops,
    recolour,
    to_uint8,
)
from benchmark.metrics.pretrained import WeightsSpec, load_state_dict
from benchmark.paths import cache_dir
from benchmark.progress import tqdm
from benchmark.registry import register

VERSION = "1"
HOLDOUT_FRACTION = 0.1
AUGMENT_FRACTION = 0.5
CPU_BUDGET = 20_000  # crop-epochs at 224 px that fine-tuning may cost on a CPU (~2 h on one core)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS = WeightsSpec(
    what="object_acc_resnet: the ImageNet ResNet-101 to fine-tune",
    env="SG2I_RESNET101_IMAGENET",
    hub_files=("resnet101-63fe2227.pth", "resnet101-5d3b4d8f.pth"),
    digests=("63fe2227", "5d3b4d8f"),
    origin="torchvision ResNet101_Weights.IMAGENET1K_V1",
)

_CLASSIFIERS: dict[str, ResNetClassifier] = {}


@dataclass(frozen=True)
class Recipe:
    """Fine-tuning settings; the defaults are Grid2Im's. ``max_*_images`` cap the splits (tests only)."""

    crop_size: int = 224
    epochs: int = 20
    lr: float = 1e-3
    momentum: float = 0.9
    step_size: int = 7
    gamma: float = 0.1
    batch_images: int = 4
    seed: int = 0
    max_train_images: int | None = None
    max_val_images: int | None = None


class ResNetHeads(nn.Module):
    """torchvision ResNet-101 whose ``fc`` outputs the logits of every head; input uint8 crops [K, 3, S, S]."""

    def __init__(self, head_sizes: Sequence[int]) -> None:
        from torchvision.models import resnet101

        super().__init__()
        self.sizes = tuple(head_sizes)
        self.net = resnet101(weights=None)
        self.net.fc = nn.Linear(self.net.fc.in_features, sum(self.sizes))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, crops: Tensor) -> list[Tensor]:
        x = (crops.float() / 255.0 - self.mean) / self.std
        return list(self.net(x).split(self.sizes, dim=1))

    def freeze_initial_layers(self) -> None:
        """Grid2Im: everything up to and including ``layer1`` is frozen."""
        for m in (self.net.conv1, self.net.bn1, self.net.layer1):
            m.requires_grad_(False)


def imagenet_model(path: Path, heads: Heads, seed: int) -> ResNetHeads:
    """ResNet-101 with the ImageNet weights of ``path`` and a new, seeded ``fc`` for ``heads``."""
    from torchvision.models import resnet101

    with torch.device("meta"):
        expected = resnet101().state_dict()
    state = load_state_dict(path, WEIGHTS.what, expected)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNetHeads(heads.sizes)
    trunk = {k: v for k, v in state.items() if not k.startswith("fc.")}
    model.net.load_state_dict(trunk, strict=False)
    return model


@dataclass
class Rows:
    """The objects of a split: its uint8 images and, per object, box, owning image and labels."""

    images: Tensor
    boxes: Tensor
    owner: Tensor
    labels: Tensor

    def crops(self, idx: Tensor, size: int) -> Tensor:
        """uint8 crops [len(idx), 3, size, size] of the objects ``idx`` (only their images are converted)."""
        uniq, inv = self.owner[idx].unique(return_inverse=True)
        return object_crops(self.images[uniq], self.boxes[idx], inv, size)


def split_rows(ds: SceneGraphDataset, heads: Heads, max_images: int | None = None) -> Rows:
    n = len(ds) if max_images is None else min(len(ds), max_images)
    images, boxes, owner, labels = [], [], [], []
    for start in range(0, n, 256):
        items = [ds[i] for i in range(start, min(n, start + 256))]
        images.append(to_uint8(torch.stack([it.image for it in items])))  # type: ignore[misc]
        b, idx, lab = _item_rows(items, heads)
        boxes.append(b)
        owner.append(idx + start)
        labels.append(lab)
    return Rows(torch.cat(images), torch.cat(boxes), torch.cat(owner), torch.cat(labels))


def subset(rows: Rows, images: Tensor) -> Rows:
    """The objects of the images ``images`` (indices into ``rows.images``), images renumbered."""
    keep = torch.isin(rows.owner, images)
    remap = torch.full((rows.images.shape[0],), -1, dtype=torch.long)
    remap[images] = torch.arange(len(images))
    return Rows(rows.images[images], rows.boxes[keep], remap[rows.owner[keep]], rows.labels[keep])


@torch.inference_mode()
def predict(
    model: ResNetHeads, rows: Rows, idx: Tensor, size: int, device: torch.device, batch: int = 64
) -> Tensor:
    """Predicted class per head, int64 [len(idx), H]."""
    model.eval()
    out = [torch.zeros(0, len(model.sizes), dtype=torch.long)]
    for s in range(0, len(idx), batch):
        logits = model(rows.crops(idx[s : s + batch], size).to(device))
        out.append(torch.stack([lg.argmax(1) for lg in logits], 1).cpu())
    return torch.cat(out)


def accuracy(model: ResNetHeads, rows: Rows, size: int, device: torch.device) -> float:
    k = rows.owner.shape[0]
    if k == 0:
        return float("nan")
    pred = predict(model, rows, torch.arange(k), size, device)
    return float((pred == rows.labels).all(1).double().mean())


def fine_tune(
    model: ResNetHeads,
    train: Rows,
    val: Rows,
    recipe: Recipe,
    device: torch.device,
    desc: str = "object classifier",
) -> dict[str, Any]:
    """Grid2Im's fine-tuning loop (see the module docstring); keeps the best validation epoch in ``model``."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(recipe.seed)
    model.freeze_initial_layers()
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=recipe.step_size, gamma=recipe.gamma)
    # Colour heads learn from the original crops, colour-free heads from recoloured ones (object_acc_small).
    is_val = torch.zeros(train.owner.shape[0] + val.owner.shape[0], dtype=torch.bool)
    is_val[train.owner.shape[0] :] = True
    probe_crops = torch.cat(
        [
            train.crops(torch.arange(train.owner.shape[0]), CROP_SIZE),
            val.crops(torch.arange(val.owner.shape[0]), CROP_SIZE),
        ]
    )
    probe = (
        colour_probe(probe_crops, torch.cat([train.labels, val.labels]), is_val) if val.owner.numel() else []
    )
    colour_heads = [a >= COLOUR_PROBE_THRESHOLD for a in probe] or [False] * len(model.sizes)
    augment = len(model.sizes) > 1 and any(colour_heads) and not all(colour_heads)
    order = torch.argsort(train.owner, stable=True)
    starts = torch.searchsorted(train.owner[order], torch.arange(train.images.shape[0] + 1))
    n_img = train.images.shape[0]
    steps = (n_img + recipe.batch_images - 1) // recipe.batch_images
    best_acc, best_state, best_epoch, history = -1.0, None, 0, []
    bar = tqdm(total=recipe.epochs * steps, desc=desc, unit="step", leave=False)
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        perm = torch.randperm(n_img, generator=gen)
        total, seen = 0.0, 0
        for s in range(0, n_img, recipe.batch_images):
            imgs = perm[s : s + recipe.batch_images]
            idx = torch.cat([order[starts[i] : starts[i + 1]] for i in imgs.tolist()])
            bar.update(1)
            if idx.numel() == 0:
                continue
            x, y = train.crops(idx, recipe.crop_size), train.labels[idx]
            aug = torch.zeros(idx.shape[0], dtype=torch.bool)
            if augment:
                aug = torch.rand(idx.shape[0], generator=gen) < AUGMENT_FRACTION
                x = recolour(x, aug, gen)
            logits = model(x.to(device))
            loss = logits[0].new_zeros(())
            for h, lg in enumerate(logits):
                ce = F.cross_entropy(lg, y[:, h].to(device), reduction="none")
                w = (
                    (~aug).float() if colour_heads[h] else aug.float() if augment else torch.ones(len(idx))
                ).to(device)
                loss = loss + (ce * w).sum() / w.sum().clamp_min(1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
        sched.step()
        acc = accuracy(model, val, recipe.crop_size, device)
        history.append({"epoch": epoch, "train_loss": total / max(seen, 1), "val_acc": acc})
        bar.set_postfix(epoch=epoch, val_acc=f"{acc:.4f}")
        if acc > best_acc or best_state is None:
            best_acc, best_epoch = acc, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    bar.close()
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return {
        "colour_probe_acc": [round(a, 4) for a in probe],
        "recoloured_heads": [h for h, c in enumerate(colour_heads) if augment and not c],
        "train_crops": int(train.owner.shape[0]),
        "val_crops": int(val.owner.shape[0]),
        "best_epoch": best_epoch,
        "val_acc": best_acc,
        "history": history,
        "train_seconds": round(time.perf_counter() - t0, 2),
    }


@dataclass
class ResNetClassifier:
    model: ResNetHeads
    heads: Heads
    path: Path
    sha256: str
    meta: dict[str, Any]
    init: WeightProvenance

    def provenance(self) -> list[WeightProvenance]:
        return [
            self.init,
            WeightProvenance(
                name="object_classifier_resnet101",
                source=f"trained:{self.meta['dataset']}/train crops (Grid2Im recipe) from {self.init.source}",
                sha256=self.sha256,
                random_init=self.init.random_init,
            ),
        ]


def classifier_path(dataset: str, image_size: int, train_sha: str, recipe: Recipe, init_sha: str) -> Path:
    r = sha256_json(dataclasses.asdict(recipe))[:8]
    name = f"{dataset}_{image_size}px_v{VERSION}_r{r}_init{init_sha[:8]}_{train_sha[:16]}.safetensors"
    return cache_dir() / "classifiers" / "object_acc_resnet" / name


def _load(path: Path, init: WeightProvenance) -> ResNetClassifier | None:
    from safetensors.torch import load_file

    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = read_json(meta_path, "object classifier sidecar")
        sha = sha256_file(path)
        if meta.get("version") != VERSION or meta.get("sha256") != sha:
            return None
        heads = Heads.from_json(meta["heads"])
        model = ResNetHeads(heads.sizes)
        model.load_state_dict(load_file(str(path), device="cpu"))
    except Exception as e:  # a damaged cache entry is trained again
        warnings.warn(f"object classifier cache {path} is unusable ({e}); training it again", stacklevel=3)
        return None
    return ResNetClassifier(model.eval(), heads, path, sha, meta, init)


def _val_rows(
    load_split: Callable[[str], SceneGraphDataset], train: Rows, heads: Heads, recipe: Recipe
) -> tuple[Rows, Rows, str]:
    """(train, validation, which): the ``val`` split, else 10% of the train images held out."""
    try:
        val = split_rows(load_split("val"), heads, recipe.max_val_images)
        return train, val, "val split"
    except (ValueError, KeyError, FileNotFoundError):
        n = train.images.shape[0]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(recipe.seed))
        k = max(1, round(HOLDOUT_FRACTION * n))
        return subset(train, perm[k:].sort().values), subset(train, perm[:k].sort().values), "train holdout"


def _check_budget(rows: Rows, recipe: Recipe, device: torch.device) -> None:
    """Refuse a fine-tuning that would take many hours on the CPU (the full recipe on ``shapes``: ~30 h on one
    core, ~5 s per 4-image step), unless ``SG2I_CPU_FINETUNE=1``; on a GPU it takes minutes, once (cached)."""
    work = rows.owner.shape[0] * recipe.epochs * (recipe.crop_size / 224) ** 2  # 224 px crop-epochs
    if device.type == "cpu" and work > CPU_BUDGET and os.environ.get("SG2I_CPU_FINETUNE") != "1":
        raise MetricUnavailable(
            f"object_acc_resnet: fine-tuning ResNet-101 on {rows.owner.shape[0]} crops x {recipe.epochs} epochs "
            "would take many hours on the CPU; run one evaluation with --device cuda (the classifier is cached "
            f"under {cache_dir() / 'classifiers' / 'object_acc_resnet'}), or set SG2I_CPU_FINETUNE=1 to do it anyway"
        )


def get_classifier(
    dataset: str,
    image_size: int,
    load_split: Callable[[str], SceneGraphDataset],
    recipe: Recipe = Recipe(),
    weights: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> ResNetClassifier:
    """The fine-tuned classifier: in-process memo, then the disk cache, then fine-tuning (under a file lock)."""
    from safetensors.torch import save

    init_path = WEIGHTS.resolve(weights)
    init = WEIGHTS.provenance("imagenet_resnet101", init_path)
    train_ds = load_split("train")
    path = classifier_path(dataset, image_size, str(train_ds.split_sha256), recipe, init.sha256 or "")

    def build() -> ResNetClassifier:
        heads = heads_for(train_ds)
        rows = split_rows(train_ds, heads, recipe.max_train_images)
        _check_budget(rows, recipe, torch.device(device))
        train, val, which = _val_rows(load_split, rows, heads, recipe)
        model = imagenet_model(init_path, heads, recipe.seed)
        stats = fine_tune(
            model, train, val, recipe, torch.device(device), f"object classifier ({dataset})"
        )
        model = model.cpu()
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        atomic_write_bytes(path, save(state, metadata={"version": VERSION, "dataset": dataset}))
        sha = sha256_file(path)
        meta = {
            "version": VERSION,
            "dataset": dataset,
            "image_size": image_size,
            "recipe": dataclasses.asdict(recipe),
            "validation": which,
            "train_split_sha256": train_ds.split_sha256,
            "init": dataclasses.asdict(init),
            "heads": heads.to_json(),
            **stats,
            "torch": torch.__version__,
            "sha256": sha,
        }
        atomic_write_json(path.with_suffix(".json"), meta)
        return ResNetClassifier(model.eval(), heads, path, sha, meta, init)

    return memoised_build(path, _CLASSIFIERS, lambda: _load(path, init), build)


def generated_accuracy(
    clf: ResNetClassifier,
    images: Tensor,
    graphs: Sequence[SceneGraphItem],
    image_to_graph: Tensor,
    crop_size: int,
    device: torch.device | str = "cpu",
) -> tuple[int, int]:
    """(correct, total) over the objects of generated uint8 ``images`` cropped at their graphs' GT boxes."""
    device = torch.device(device)
    model = clf.model.to(device)
    correct = total = 0
    for s in range(0, images.shape[0], 256):
        items = [graphs[int(g)] for g in image_to_graph[s : s + 256]]
        boxes, owner, labels = _item_rows(items, clf.heads)
        rows = Rows(to_uint8(images[s : s + 256]).cpu(), boxes, owner, labels)
        pred = predict(model, rows, torch.arange(len(owner)), crop_size, device)
        ok = (pred == labels).all(1)
        correct, total = correct + int(ok.sum()), total + int(ok.numel())
    clf.model.cpu()
    return correct, total


@register(
    "metric",
    "object_acc_resnet",
    outputs={"object_acc_resnet": True},
    mode="ImageNet init, fine-tuned on real crops",
)
class ObjectAccuracyResNet(Metric):
    """Object accuracy of Grid2Im's ResNet-101 (ImageNet init, fine-tuned on real crops); higher is better."""

    weights_missing = staticmethod(WEIGHTS.missing)  # checked before a run (benchmark/preflight.py)

    def __init__(self, recipe: Recipe = Recipe(), weights: str | Path | None = None) -> None:
        self.recipe = recipe
        self.weights = weights
        super().__init__()
        self._used: list[WeightProvenance] = []
        self.last_counts: tuple[int, int] = (0, 0)

    def compute(self, inputs: EvalInputs) -> dict[str, float | None]:
        clf = get_classifier(
            inputs.dataset, inputs.image_size, inputs.load_split, self.recipe, self.weights, inputs.device
        )
        self._used = clf.provenance()
        correct, total = generated_accuracy(
            clf, inputs.fake, inputs.graphs, inputs.fake_to_graph, self.recipe.crop_size, inputs.device
        )
        self.last_counts = (correct, total)
        if total == 0:
            self.unavailable["object_acc_resnet"] = "no object with a known layout in the evaluated graphs"
            return {"object_acc_resnet": None}
        return {"object_acc_resnet": correct / total}

    def provenance(self) -> list[WeightProvenance]:
        return list(self._used)
