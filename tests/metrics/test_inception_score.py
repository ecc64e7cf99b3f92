"""Inception Score: the formula against numpy, known values, and the weight loading on a random-init file
saved exactly as pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a state dict of torchvision's
Inception3 layout with 1008 classes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark import registry
from benchmark.interfaces import EvalInputs, MetricUnavailable
from benchmark.metrics import inception_score as isc

HUB_FILE = "pt_inception-2015-12-05-6726825d.pth"


def _numpy_is(logits: np.ndarray, splits: int = 10, seed: int = 2020) -> float:
    """Independent IS: shuffle, split at i*N//splits, exp(mean KL(p(y|x) || p(y))) per split, mean."""
    x = logits[np.random.RandomState(seed).permutation(len(logits))].astype(np.float64)
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n, scores = len(x), []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        py = part.mean(0)
        scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), axis=1))))
    return float(np.mean(scores))


def test_formula_matches_numpy_on_known_logits() -> None:
    logits = torch.randn(53, 1008, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    mean, std = isc.inception_score_from_logits(logits)
    assert mean == pytest.approx(_numpy_is(logits.numpy()), rel=1e-12)
    assert std > 0


def test_known_values() -> None:
    # 100 confident predictions of 100 different classes: every split holds 10 distinct classes -> IS = 10.
    onehot = torch.zeros(100, 1008, dtype=torch.float64)
    onehot[torch.arange(100), torch.arange(100) * 7] = 1.0
    assert isc.inception_score_from_logits(onehot * 80)[0] == pytest.approx(10.0, rel=1e-9)
    # One class for all images (or identical predictions): p(y|x) = p(y) -> IS = 1.
    assert isc.inception_score_from_logits(torch.randn(1, 1008).repeat(30, 1))[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 10"):
        isc.inception_score_from_logits(torch.randn(9, 1008))


@pytest.fixture()
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(isc.WEIGHTS.env, raising=False)
    d = tmp_path / "torch" / "hub" / "checkpoints"
    d.mkdir(parents=True)
    return d


def _random_file(path: Path) -> dict[str, torch.Tensor]:
    from torchvision.models.inception import Inception3

    torch.manual_seed(0)
    state = Inception3(num_classes=1008, aux_logits=False, init_weights=False).state_dict()
    torch.save(state, path)
    return state


def _inputs(fake: torch.Tensor) -> EvalInputs:
    owners = torch.arange(fake.shape[0])
    return EvalInputs("shapes", "test", 32, None, fake, fake, owners, [], torch.device("cpu"), lambda s: None)  # type: ignore[arg-type]


def test_unavailable_without_the_file(torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metric = registry.get("metric", "inception_score")()
    assert metric.outputs == {"is": True}
    fake = torch.zeros(12, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(MetricUnavailable) as e:
        metric.compute(_inputs(fake))
    assert (
        HUB_FILE in str(e.value) and str(torch_home) in str(e.value) and "SG2I_INCEPTION_IS" in str(e.value)
    )
    monkeypatch.setenv("SG2I_INCEPTION_IS", str(torch_home / "missing.pth"))
    with pytest.raises(MetricUnavailable, match="missing.pth is not a file"):
        metric.compute(_inputs(fake))
    bad = torch_home / "alexnet.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, bad)
    monkeypatch.setenv("SG2I_INCEPTION_IS", str(bad))
    with pytest.raises(MetricUnavailable, match="missing keys"):
        metric.compute(_inputs(fake))


def test_loads_the_hub_file_and_flags_unpublished_weights(torch_home: Path) -> None:
    state = _random_file(torch_home / HUB_FILE)
    gen = torch.Generator().manual_seed(1)
    fake = torch.randint(0, 256, (12, 3, 32, 32), generator=gen, dtype=torch.uint8)
    metric = registry.get("metric", "inception_score")()
    out = metric.compute(_inputs(fake))
    path = (torch_home / HUB_FILE).resolve()
    net = isc.load_network(path)
    assert torch.equal(net.fc.weight, state["fc.weight"]) and torch.equal(
        net.Mixed_7c.branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"]
    )
    logits = isc.inception_logits(fake, path)
    assert logits.shape == (12, 1008)
    # logits_unbiased: the fc layer without its bias (OpenAI's TF IS reads the MatMul before the bias add).
    other = torch_home / "biased.pth"
    torch.save({**state, "fc.bias": state["fc.bias"] + torch.linspace(0, 50, 1008)}, other)
    assert torch.allclose(isc.inception_logits(fake, other.resolve()), logits, atol=1e-5)
    assert out["is"] == pytest.approx(isc.inception_score_from_logits(logits)[0])
    assert out["is"] >= 1.0 and np.isfinite(out["is"])
    (prov,) = metric.provenance()
    assert prov.random_init and "not the published file" in prov.source and len(prov.sha256 or "") == 64
    with pytest.raises(MetricUnavailable, match="at least 10"):
        metric.compute(_inputs(fake[:9]))
