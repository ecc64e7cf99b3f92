"""Object accuracy: does a classifier trained on REAL object crops recognise the objects in generated images?

The protocol of Grid2Im's (Ashual & Wolf, ICCV 2019) and LostGAN's (Sun & Wu, ICCV 2019) object accuracy
(a frozen classifier trained on crops of real images scores the crops of generated ones), scaled down so it trains on CPU: a small CNN (~61k parameters)
is trained once per (dataset, image size, train split hash, classifier version, seed) on ground-truth-box
crops of the dataset's *train* split, cached as safetensors, then applied to crops of the generated images
at the *ground-truth* boxes of their scene graphs.

Crops: each object box ``(x0, y0, x1, y1)`` (normalised) is cut out with ``torchvision.ops.roi_align``
(``aligned=True``, 2x2 samples per bin) to 32x32 and rounded to uint8; the same :func:`object_crops` is used
for training, real-crop evaluation and generated-image evaluation. ``__image__``-like nodes (names starting
with ``__``) and objects whose ``has_layout`` is False are skipped.

Heads: when the dataset has ``object_factors()`` (per vocabulary index a tuple of factor names, e.g.
``"red circle" -> ("red", "circle")``), there is one softmax head per factor position, so unseen
combinations of seen factors (``shapes`` ``test_unseen``) can still be recognised; otherwise a single head
over the object classes. A crop counts as correct only if *every* head is right; the metric is the mean
over all evaluated objects (micro average).

Training (CPU, deterministic): fixed seed 0 for initialisation (``torch.random.fork_rng``) and a
``torch.Generator`` for shuffling and augmentation; Adam (lr 3e-3, cosine decay over 8 epochs, batch 128),
cross-entropy summed over heads; 10% of the train *images* held out for early stopping (best held-out
all-heads accuracy, patience 2, at most 8 epochs; the best epoch's weights are kept). A JSON sidecar
records the classes, train hash, held-out and real ``val`` accuracy, and the training time. Weights are
loaded with ``safetensors`` only (never pickle).

Unseen factor combinations: trained naively, a factor head learns the correlations of the *seen*
combinations (on ``shapes``, no blue circle exists in train, so "blue" votes against "circle"; the shape
head then gets 3% of blue circles right). So the heads are split by a cheap probe (:func:`colour_probe`:
can the mean RGB of the crop centre alone predict the head's label?). Colour heads (probe >= 0.8) learn
from the original crops; colour-free heads learn from recoloured crops (random RGB channel permutation and
per-channel gains, :func:`recolour`), which breaks the colour-shape correlation. Each crop of a batch goes
to one of the two groups (50/50), so the cost is one forward pass. With one head (no factors) or when all
or none of the heads carry colour, nothing is recoloured.
"""

from __future__ import annotations

import copy
import re
import threading
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
from benchmark.interfaces import EvalInputs, Metric, SceneGraphDataset, WeightProvenance
from benchmark.io import atomic_write_bytes, atomic_write_json, file_lock, read_json, sha256_file
from benchmark.paths import cache_dir
from benchmark.progress import tqdm
from benchmark.registry import register

CLASSIFIER_VERSION = "1"
SEED = 0
CROP_SIZE = 32
HOLDOUT_FRACTION = 0.1
MAX_EPOCHS = 8
PATIENCE = 2
BATCH_SIZE = 128
LR = 3e-3
EVAL_BATCH = 1024
COLOUR_PROBE_THRESHOLD = 0.8
AUGMENT_FRACTION = 0.5

_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------------------------
# Classes / heads


@dataclass(frozen=True)
class Heads:
    """What the classifier predicts: one head per factor position (or one over objects).

    ``table[v][h]`` is the class index of vocabulary entry ``v`` under head ``h``; -1 for entries that are
    not objects (``__image__``), which are never cropped.
    """

    names: tuple[str, ...]
    classes: tuple[tuple[str, ...], ...]
    table: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.classes)

    def labels(self, objs: Tensor) -> Tensor:
        """int64 [K, n_heads] labels of vocabulary indices ``objs`` [K]."""
        return torch.tensor(self.table, dtype=torch.long)[objs.long()]

    def to_json(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "classes": [list(c) for c in self.classes],
            "table": [list(t) for t in self.table],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Heads:
        return cls(
            tuple(d["names"]), tuple(tuple(c) for c in d["classes"]), tuple(tuple(t) for t in d["table"])
        )


def _is_object(name: str) -> bool:
    return not name.startswith("__")


def heads_for(dataset: SceneGraphDataset) -> Heads:
    """Factor heads from ``dataset.object_factors()`` when available and consistent, else one object head."""
    names = dataset.vocab.object_idx_to_name
    factors_fn = getattr(dataset, "object_factors", None)
    if callable(factors_fn):
        factors = [tuple(f) for f in factors_fn()]
        obj_factors = [f for n, f in zip(names, factors) if _is_object(n)]
        lengths = {len(f) for f in obj_factors}
        if len(factors) == len(names) and len(lengths) == 1 and lengths != {0}:
            k = lengths.pop()
            classes = tuple(tuple(sorted({f[h] for f in obj_factors})) for h in range(k))
            table = tuple(
                tuple(classes[h].index(f[h]) for h in range(k)) if _is_object(n) else (-1,) * k
                for n, f in zip(names, factors)
            )
            return Heads(tuple(f"factor{h}" for h in range(k)), classes, table)
    objects = tuple(n for n in names if _is_object(n))
    table = tuple((objects.index(n),) if _is_object(n) else (-1,) for n in names)
    return Heads(("object",), (objects,), table)


# ---------------------------------------------------------------------------------------------------------
# Crops


def object_crops(images: Tensor, boxes: Tensor, image_index: Tensor, size: int = CROP_SIZE) -> Tensor:
    """uint8 [K, 3, size, size] crops of uint8 ``images`` [B, 3, H, W] at normalised ``boxes`` [K, 4].

    ``image_index`` [K] says which image each box belongs to. Bilinear ``roi_align`` (``aligned=True``: pixel
    ``i`` covers ``[i, i + 1)``, 2x2 samples per output bin) on the [0, 1] image, then rounded to uint8.
    """
    from torchvision.ops import roi_align

    if images.dtype != torch.uint8:
        raise TypeError(f"object_crops expects uint8 images, got {images.dtype}")
    if boxes.numel() == 0:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8)
    h, w = images.shape[-2:]
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=boxes.device)
    rois = torch.cat([image_index.float()[:, None], boxes.float() * scale], dim=1).to(images.device)
    crops = roi_align(
        images.float() / 255.0, rois, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True
    )
    return (crops * 255.0).round().clamp(0, 255).to(torch.uint8)


def to_uint8(images: Tensor) -> Tensor:
    """float [0, 1] images -> uint8 (round half away); uint8 passes through."""
    if images.dtype == torch.uint8:
        return images
    return (images.float() * 255.0).round().clamp(0, 255).to(torch.uint8)


def _valid(item: SceneGraphItem, object_rows: Tensor) -> Tensor:
    """Which objects of ``item`` are evaluated: real objects (not ``__image__``) with a known layout."""
    ok = object_rows
    if item.has_layout is not None:
        ok = ok & item.has_layout.bool()
    return ok


def _item_rows(items: Sequence[SceneGraphItem], heads: Heads) -> tuple[Tensor, Tensor, Tensor]:
    """(boxes [K, 4], image index [K], labels [K, H]) of the evaluated objects of ``items``."""
    table = torch.tensor(heads.table, dtype=torch.long)
    boxes, index, labels = [], [], []
    for i, it in enumerate(items):
        lab = table[it.objs.long()]
        keep = _valid(it, (lab >= 0).all(dim=1))
        boxes.append(it.boxes[keep].float())
        labels.append(lab[keep])
        index.append(torch.full((int(keep.sum()),), i, dtype=torch.long))
    if not boxes:
        return (
            torch.zeros(0, 4),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, len(heads.names), dtype=torch.long),
        )
    return torch.cat(boxes), torch.cat(index), torch.cat(labels)


def dataset_crops(
    dataset: SceneGraphDataset, heads: Heads, desc: str = "object crops"
) -> tuple[Tensor, Tensor, Tensor]:
    """(crops uint8 [K, 3, 32, 32], labels [K, H], image index [K]) of every object of a real split."""
    crops, labels, owner = [], [], []
    n = len(dataset)
    chunk = 256
    for start in tqdm(range(0, n, chunk), desc=desc, unit="chunk", disable=n <= 2 * chunk, leave=False):
        items = [dataset[i] for i in range(start, min(n, start + chunk))]
        images = to_uint8(torch.stack([it.image for it in items]))  # type: ignore[misc]
        boxes, index, lab = _item_rows(items, heads)
        crops.append(object_crops(images, boxes, index))
        labels.append(lab)
        owner.append(index + start)
    return torch.cat(crops), torch.cat(labels), torch.cat(owner)


# ---------------------------------------------------------------------------------------------------------
# The network


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """4 conv-BN-ReLU blocks (16-32-64-64 channels; a stride-2 first conv and max-pools: 32 -> 16 -> 8 -> 4),
    global average pooling, one linear head per factor. ~61k parameters; input uint8 crops [K, 3, 32, 32]."""

    def __init__(self, head_sizes: Sequence[int], width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(3, w, stride=2),
            _block(w, 2 * w),
            nn.MaxPool2d(2),
            _block(2 * w, 4 * w),
            nn.MaxPool2d(2),
            _block(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.heads = nn.ModuleList(nn.Linear(4 * w, n) for n in head_sizes)

    def forward(self, crops: Tensor) -> list[Tensor]:
        x = crops.float() / 255.0 - 0.5
        z = self.features(x)
        return [h(z) for h in self.heads]


@torch.inference_mode()
def predict(
    model: SmallCNN, crops: Tensor, device: torch.device | str = "cpu", batch_size: int = EVAL_BATCH
) -> Tensor:
    """Predicted class per head, int64 [K, H]."""
    model.eval()
    out = []
    for start in range(0, crops.shape[0], batch_size):
        logits = model(crops[start : start + batch_size].to(device))
        out.append(torch.stack([lg.argmax(dim=1) for lg in logits], dim=1).cpu())
    if not out:
        return torch.zeros(0, len(model.heads), dtype=torch.long)
    return torch.cat(out)


def all_heads_correct(pred: Tensor, labels: Tensor) -> Tensor:
    """bool [K]: every head right."""
    return (pred == labels).all(dim=1)


# ---------------------------------------------------------------------------------------------------------
# Training and the cache


@dataclass
class Classifier:
    """A trained object classifier and where it came from."""

    model: SmallCNN
    heads: Heads
    path: Path
    sha256: str
    meta: dict[str, Any]

    def provenance(self) -> WeightProvenance:
        return WeightProvenance(
            name="object_classifier",
            source=f"trained:{self.meta['dataset']}/train crops",
            sha256=self.sha256,
            random_init=False,
        )


_CLASSIFIERS: dict[str, Classifier] = {}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def classifier_path(dataset: str, image_size: int, train_sha256: str) -> Path:
    """``cache_dir()/classifiers/object_acc_small/<dataset>_<size>px_v<version>_seed<seed>_<train hash>.safetensors``."""
    name = f"{_safe(dataset)}_{image_size}px_v{CLASSIFIER_VERSION}_seed{SEED}_{train_sha256[:16]}.safetensors"
    return cache_dir() / "classifiers" / "object_acc_small" / name


def _on(model: SmallCNN, device: torch.device | str) -> SmallCNN:
    """The model on ``device``; the cached CPU model is copied, never moved."""
    device = torch.device(device)
    return model if device.type == "cpu" else copy.deepcopy(model).to(device)


def _accuracy(model: SmallCNN, crops: Tensor, labels: Tensor, device: torch.device | str = "cpu") -> float:
    if crops.shape[0] == 0:
        return float("nan")
    return int(all_heads_correct(predict(model, crops, device), labels).sum()) / int(crops.shape[0])


def colour_probe(crops: Tensor, labels: Tensor, is_held: Tensor) -> list[float]:
    """Per head, held-out accuracy of a nearest-class-mean classifier on the mean RGB of the crop centre.

    High for a head that names a colour (``shapes`` at 32 px: 0.93 for the colour factor), low for one that
    does not (shape: 0.29, chance 0.25); decides which heads learn from recoloured crops.
    """
    c = crops.shape[-1]
    rgb = crops[:, :, 3 * c // 8 : 5 * c // 8, 3 * c // 8 : 5 * c // 8].float().mean(dim=(2, 3))
    out = []
    for h in range(labels.shape[1]):
        y = labels[:, h]
        classes = torch.unique(y[~is_held])
        means = torch.stack([rgb[~is_held][y[~is_held] == k].mean(dim=0) for k in classes])
        pred = classes[torch.cdist(rgb[is_held], means).argmin(dim=1)]
        out.append(float((pred == y[is_held]).float().mean()) if is_held.any() else 0.0)
    return out


_PERMS = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])


def recolour(x: Tensor, which: Tensor, gen: torch.Generator) -> Tensor:
    """Random colour change of the uint8 crops ``which``: a random RGB channel permutation followed by per-channel gains in [0.6, 1.4] (clamped to [0, 255])."""
    k = torch.randint(0, 6, (x.shape[0],), generator=gen)
    k = torch.where(which, k, torch.zeros_like(k))
    idx = _PERMS[k][:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
    gains = 0.6 + 0.8 * torch.rand(x.shape[0], 3, 1, 1, generator=gen)
    gains = torch.where(which[:, None, None, None], gains, torch.ones_like(gains))
    return (torch.gather(x, 1, idx).float() * gains).round().clamp(0, 255).to(torch.uint8)


def train_classifier(
    train: SceneGraphDataset, heads: Heads, max_epochs: int = MAX_EPOCHS, seed: int = SEED
) -> tuple[SmallCNN, dict[str, Any]]:
    """Train :class:`SmallCNN` on real crops of ``train`` on the CPU, deterministically; returns (model, stats).

    Runs with one intra-op thread (restored afterwards): the result then does not depend on the number of
    cores, and it avoids OpenMP oversubscription, which made 2-thread training 10-15x slower whenever other
    processes were busy on the 2-core CI machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(train, heads, max_epochs, seed)
    finally:
        torch.set_num_threads(threads)


def _train(
    train: SceneGraphDataset, heads: Heads, max_epochs: int, seed: int
) -> tuple[SmallCNN, dict[str, Any]]:
    t0 = time.perf_counter()
    crops, labels, owner = dataset_crops(train, heads, desc=f"{train.name} train crops")
    gen = torch.Generator().manual_seed(seed)
    n_images = len(train)
    held_images = torch.randperm(n_images, generator=gen)[: max(1, int(round(HOLDOUT_FRACTION * n_images)))]
    held = torch.zeros(n_images, dtype=torch.bool)
    held[held_images] = True
    is_held = held[owner]
    tr_x, tr_y = crops[~is_held], labels[~is_held]
    ho_x, ho_y = crops[is_held], labels[is_held]
    probe = colour_probe(crops, labels, is_held)
    # Heads whose label the crop's colour alone predicts carry colour; the others should ignore it.
    colour_heads = [a >= COLOUR_PROBE_THRESHOLD for a in probe]
    augment = len(heads.names) > 1 and any(colour_heads) and not all(colour_heads)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(heads.sizes)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    n = tr_x.shape[0]
    steps_per_epoch = (n + BATCH_SIZE - 1) // BATCH_SIZE
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_epochs * steps_per_epoch)
    best_acc, best_state, best_epoch, bad, history = -1.0, None, 0, 0, []
    bar = tqdm(
        total=max_epochs * steps_per_epoch, desc=f"object classifier ({train.name})", unit="step", leave=False
    )
    for epoch in range(1, max_epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total_loss = 0.0
        for start in range(0, n, BATCH_SIZE):
            idx = perm[start : start + BATCH_SIZE]
            x, y = tr_x[idx], tr_y[idx]
            aug = torch.zeros(idx.shape[0], dtype=torch.bool)
            if augment:
                aug = torch.rand(idx.shape[0], generator=gen) < AUGMENT_FRACTION
                x = recolour(x, aug, gen)
            logits = model(x)
            loss = x.new_zeros((), dtype=torch.float32)
            for h, lg in enumerate(logits):
                ce = F.cross_entropy(lg, y[:, h], reduction="none")
                # Colour heads learn from the original crops, colour-free heads from the recoloured ones.
                w = (~aug).float() if colour_heads[h] else aug.float() if augment else torch.ones_like(ce)
                loss = loss + (ce * w).sum() / w.sum().clamp_min(1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * idx.shape[0]
            bar.update(1)
        acc = _accuracy(model, ho_x, ho_y)
        history.append({"epoch": epoch, "train_loss": total_loss / max(n, 1), "holdout_acc": acc})
        bar.set_postfix(epoch=epoch, holdout_acc=f"{acc:.4f}")
        if acc > best_acc:
            best_acc, best_epoch, bad = acc, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        if bad >= PATIENCE or best_acc >= 1.0:
            break
    bar.close()
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    stats = {
        "colour_probe_acc": [round(a, 4) for a in probe],
        "colour_permuted_heads": [nm for nm, c in zip(heads.names, colour_heads) if augment and not c],
        "train_crops": int(n),
        "holdout_crops": int(ho_x.shape[0]),
        "holdout_images": int(held.sum()),
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "holdout_acc": best_acc,
        "history": history,
        "train_seconds": round(time.perf_counter() - t0, 2),
    }
    return model, stats


def _load(path: Path, meta_path: Path) -> Classifier | None:
    """Load a cached classifier (safetensors only) if its sidecar matches; None if absent or stale."""
    from safetensors.torch import load_file

    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = read_json(meta_path, "object classifier sidecar")
        if meta.get("version") != CLASSIFIER_VERSION:
            return None
        sha = sha256_file(path)
        if meta.get("sha256") != sha:
            return None
        heads = Heads.from_json(meta["heads"])
        model = SmallCNN(heads.sizes)
        model.load_state_dict(load_file(str(path), device="cpu"))
    except Exception as e:  # a damaged or incompatible cache entry is retrained
        warnings.warn(f"object classifier cache {path} is unusable ({e}); retraining it", stacklevel=3)
        return None
    model.eval()
    return Classifier(model, heads, path, sha, meta)


def memoised_build(path: Path, memo: dict[str, Any], load: Callable[[], Any], build: Callable[[], Any]) -> Any:
    """A cached model at ``path``: the in-process ``memo``, then ``load()`` from disk (None if absent or stale),
    then ``build()`` (trains and writes it) under a file lock, so concurrent evaluations train once."""
    key = str(path)
    with _LOCK:
        if key in memo and memo[key].path.is_file():
            return memo[key]
        obj = load()
        if obj is None:
            with file_lock(path.with_name(path.name + ".lock")):
                obj = load()
                if obj is None:
                    obj = build()
        memo[key] = obj
        return obj


def get_classifier(
    dataset: str,
    image_size: int,
    load_split: Callable[[str], SceneGraphDataset],
    train: SceneGraphDataset | None = None,
) -> Classifier:
    """The object classifier for ``dataset`` at ``image_size``: in-process memo, then disk cache, then training.

    Keyed by (dataset, image size, the train split's ``split_sha256``, classifier version, seed). Training
    happens under a file lock so concurrent evaluations train once.
    """
    from safetensors.torch import save

    train = train if train is not None else load_split("train")
    train_sha = str(train.split_sha256)
    path = classifier_path(dataset, image_size, train_sha)
    meta_path = path.with_suffix(".json")

    def build() -> Classifier:
        heads = heads_for(train)
        model, stats = train_classifier(train, heads)
        val_acc = _split_accuracy(model, heads, load_split, "val")
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        atomic_write_bytes(
            path, save(state, metadata={"version": CLASSIFIER_VERSION, "dataset": dataset})
        )
        sha = sha256_file(path)
        meta = {
            "version": CLASSIFIER_VERSION,
            "dataset": dataset,
            "image_size": image_size,
            "crop_size": CROP_SIZE,
            "seed": SEED,
            "train_split_sha256": train_sha,
            "train_images": len(train),
            "heads": heads.to_json(),
            "params": sum(p.numel() for p in model.parameters()),
            "val_acc": val_acc,
            **stats,
            "torch": torch.__version__,
            "sha256": sha,
            "weights": path.name,
        }
        atomic_write_json(meta_path, meta)
        return Classifier(model, heads, path, sha, meta)

    return memoised_build(path, _CLASSIFIERS, lambda: _load(path, meta_path), build)


def _split_accuracy(
    model: SmallCNN, heads: Heads, load_split: Callable[[str], SceneGraphDataset], split: str
) -> float | None:
    try:
        ds = load_split(split)
    except (ValueError, KeyError, FileNotFoundError):
        return None
    crops, labels, _ = dataset_crops(ds, heads, desc=f"{split} crops")
    return _accuracy(model, crops, labels)


def real_crop_accuracy(
    dataset_name: str, split: str, image_size: int, device: torch.device | str = "cpu"
) -> float:
    """All-heads accuracy of the cached (or freshly trained) classifier on real crops of ``split``."""
    from benchmark import registry

    cls = registry.get("dataset", dataset_name)
    load_split: Callable[[str], SceneGraphDataset] = lambda s: cls.build(s, image_size)  # noqa: E731
    clf = get_classifier(dataset_name, image_size, load_split)
    crops, labels, _ = dataset_crops(load_split(split), clf.heads, desc=f"{split} crops")
    return _accuracy(_on(clf.model, device), crops, labels, device)


def generated_crop_accuracy(
    clf: Classifier,
    images: Tensor,
    graphs: Sequence[SceneGraphItem],
    image_to_graph: Tensor,
    device: torch.device | str = "cpu",
) -> tuple[int, int]:
    """(correct, total) over the objects of generated uint8 ``images`` cropped at their graphs' GT boxes."""
    model = _on(clf.model, device)
    correct = total = 0
    chunk = 256
    for start in range(0, images.shape[0], chunk):
        idx = range(start, min(images.shape[0], start + chunk))
        items = [graphs[int(image_to_graph[i])] for i in idx]
        boxes, index, labels = _item_rows(items, clf.heads)
        crops = object_crops(to_uint8(images[start : start + chunk]).cpu(), boxes, index)
        ok = all_heads_correct(predict(model, crops, device), labels)
        correct += int(ok.sum())
        total += int(ok.numel())
    return correct, total


@register("metric", "object_acc_small", outputs={"object_acc_small": True}, mode="all factor heads right")
class ObjectAccuracySmall(Metric):
    """Object accuracy of a small CNN trained on real GT-box crops (all factor heads right); higher is better."""

    def __init__(self) -> None:
        super().__init__()
        self._used: dict[str, WeightProvenance] = {}
        self.last_counts: tuple[int, int] = (0, 0)

    def compute(self, inputs: EvalInputs) -> dict[str, float]:
        clf = get_classifier(inputs.dataset, inputs.image_size, inputs.load_split)
        self._used[clf.sha256] = clf.provenance()
        correct, total = generated_crop_accuracy(
            clf, inputs.fake, inputs.graphs, inputs.fake_to_graph, inputs.device
        )
        self.last_counts = (correct, total)
        if total == 0:
            self.unavailable["object_acc_small"] = "no object with a known layout in the evaluated graphs"
            return {"object_acc_small": None}  # type: ignore[dict-item]
        return {"object_acc_small": correct / total}

    def provenance(self) -> list[WeightProvenance]:
        """The classifiers used by :meth:`compute` so far (empty before the first call: the classifier
        depends on the dataset, which only ``compute`` sees)."""
        return list(self._used.values())


def describe(clf: Classifier) -> str:
    """One line about a classifier (for logs)."""
    m = clf.meta
    return (
        f"object classifier {clf.path.name}: {m.get('params')} params, heads {dict(zip(clf.heads.names, clf.heads.sizes))}, "
        f"holdout {m.get('holdout_acc')}, val {m.get('val_acc')}, trained in {m.get('train_seconds')} s"
    )


__all__ = [
    "CLASSIFIER_VERSION",
    "Classifier",
    "Heads",
    "ObjectAccuracySmall",
    "SmallCNN",
    "classifier_path",
    "dataset_crops",
    "generated_crop_accuracy",
    "get_classifier",
    "heads_for",
    "object_crops",
    "real_crop_accuracy",
    "train_classifier",
]
