"""Diversity score (DS): LPIPS between samples generated from the same scene graph (LostGAN, LayoutDiffusion).

    DS = mean over graphs g and pairs i < j of its samples of LPIPS(x_g^i, x_g^j),

with ``lpips`` 0.1.4 (Zhang et al. 2018, richzhang/PerceptualSimilarity), AlexNet trunk, linear heads v0.1:
``LPIPS(x, y) = sum_l mean_hw || w_l * (f_l(x) - f_l(y)) ||^2`` over the 5 ReLU outputs ``f_l`` of
AlexNet's features (unit-normalised over channels). Images at the generated resolution (at least 32 px, the
smallest input AlexNet's pooling accepts), mapped from [0, 1] to [-1, 1] (``normalize=True``). With S samples
per graph all ``S (S - 1) / 2`` pairs count (S = 2: the one pair of the literature). Higher = more diverse.

Weights: the linear heads ship inside the ``lpips`` wheel (``lpips/weights/v0.1/alex.pth``); the AlexNet trunk
is torchvision's ImageNet ``alexnet-owt-7be5be79.pth`` (``lpips`` downloads it through torchvision), read from
``$SG2I_LPIPS_ALEXNET`` or the ``torch.hub`` cache (:mod:`benchmark.metrics.pretrained`). We build ``LPIPS``
with ``pnet_rand=True`` (no download) and copy the checked AlexNet tensors into its trunk.
"""

from __future__ import annotations

import importlib.util
import itertools
import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmark.interfaces import EvalInputs, Metric, MetricUnavailable, WeightProvenance
from benchmark.io import file_sha256
from benchmark.metrics.pretrained import WeightsSpec, load_state_dict
from benchmark.progress import tqdm
from benchmark.registry import register

MIN_SIZE = 32
WEIGHTS = WeightsSpec(
    what="lpips_diversity: the ImageNet AlexNet trunk of LPIPS",
    env="SG2I_LPIPS_ALEXNET",
    hub_files=("alexnet-owt-7be5be79.pth",),
    digests=("7be5be79",),
    origin="torchvision AlexNet_Weights.IMAGENET1K_V1",
)

_LOCK = threading.Lock()
_MODELS: dict[tuple[str, int, str], Any] = {}


def _heads_file() -> Path:
    spec = importlib.util.find_spec("lpips")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / "alex.pth"


def load_lpips(path: Path, device: torch.device | str = "cpu") -> Any:
    """``lpips.LPIPS(net="alex", version="0.1")`` with the shipped heads and the AlexNet trunk of ``path``."""
    import warnings

    import lpips
    from torchvision.models import alexnet

    key = (str(path), path.stat().st_mtime_ns, str(torch.device(device)))
    with _LOCK:
        if key not in _MODELS:
            with torch.device("meta"):
                expected = alexnet().state_dict()
            state = load_state_dict(path, WEIGHTS.what, expected)
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore", UserWarning
                )  # lpips passes torchvision's deprecated `pretrained`
                model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
            with torch.no_grad():
                for name, p in model.net.named_parameters():  # "slice2.3.weight" <- "features.3.weight"
                    p.copy_(state["features." + name.split(".", 1)[1]])
            _MODELS[key] = model.to(device).eval()
        return _MODELS[key]


def sample_pairs(fake_to_graph: Tensor) -> tuple[Tensor, Tensor]:
    """Indices (a, b) of every pair a < b of generated images that share a graph."""
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(fake_to_graph.tolist()):
        groups.setdefault(g, []).append(i)
    pairs = [p for idx in groups.values() for p in itertools.combinations(idx, 2)]
    t = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
    return t[:, 0], t[:, 1]


def pair_distances(
    model: Any, images: Tensor, a: Tensor, b: Tensor, device: torch.device | str, batch: int = 64
) -> Tensor:
    """LPIPS of each pair (images[a_k], images[b_k]); uint8 images [N, 3, H, W] -> float64 [K]."""
    out = []
    with torch.inference_mode():
        for s in tqdm(range(0, len(a), batch), desc="lpips pairs", disable=len(a) <= batch, leave=False):
            x = images[a[s : s + batch]].to(device).float() / 255.0
            y = images[b[s : s + batch]].to(device).float() / 255.0
            out.append(model(x, y, normalize=True).reshape(-1).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


@register("metric", "lpips_diversity", outputs={"lpips_diversity": True}, mode="AlexNet, v0.1")
class LPIPSDiversity(Metric):
    """Mean LPIPS (AlexNet, v0.1) between samples of the same graph; higher is more diverse. Needs >= 2 samples."""

    weights_missing = staticmethod(WEIGHTS.missing)  # checked before a run (benchmark/preflight.py)

    def __init__(self, weights: str | Path | None = None) -> None:
        self.weights = weights
        super().__init__()
        self._used: list[WeightProvenance] = []
        self.last_pairs = 0

    def compute(self, inputs: EvalInputs) -> dict[str, float | None]:
        a, b = sample_pairs(inputs.fake_to_graph)
        if len(a) == 0:
            raise MetricUnavailable(
                "lpips_diversity compares samples of the same graph and needs samples_per_graph >= 2 "
                "(set --set eval.samples_per_graph=2)"
            )
        if min(inputs.fake.shape[-2:]) < MIN_SIZE:
            raise MetricUnavailable(
                f"lpips_diversity needs images of at least {MIN_SIZE} px (AlexNet's pooling)"
            )
        path = WEIGHTS.resolve(self.weights)
        heads = _heads_file()
        self._used = [
            WEIGHTS.provenance("lpips_alexnet", path),
            WeightProvenance("lpips_heads", "package:lpips/weights/v0.1/alex.pth", file_sha256(heads)),
        ]
        model = load_lpips(path, inputs.device)
        d = pair_distances(model, inputs.fake, a, b, inputs.device)
        self.last_pairs = len(d)
        return {"lpips_diversity": float(d.mean())}

    def provenance(self) -> list[WeightProvenance]:
        return list(self._used)
