"""LPIPS diversity on a random-init AlexNet saved exactly as torchvision's ``alexnet-owt-7be5be79.pth``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmark import registry
from benchmark.interfaces import EvalInputs, MetricUnavailable
from benchmark.metrics import lpips_diversity as ld

HUB_FILE = "alexnet-owt-7be5be79.pth"


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    from torchvision.models import alexnet

    d = tmp_path_factory.mktemp("torch") / "hub" / "checkpoints"
    d.mkdir(parents=True)
    torch.manual_seed(0)
    state = alexnet().state_dict()
    torch.save(state, d / HUB_FILE)
    return d / HUB_FILE, state


@pytest.fixture()
def torch_home(alexnet_file: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(alexnet_file[0].parents[2]))
    monkeypatch.delenv(ld.WEIGHTS.env, raising=False)
    return alexnet_file[0].parent


def _inputs(fake: torch.Tensor, owners: list[int]) -> EvalInputs:
    o = torch.tensor(owners)
    return EvalInputs(
        "shapes", "test", fake.shape[-1], None, fake, fake, o, [], torch.device("cpu"), lambda s: None
    )  # type: ignore[arg-type]


def _images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


def _reference_lpips(state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS v0.1 by hand: AlexNet ReLU1-5 features, channel unit-normalisation, squared difference,
    the shipped 1x1 linear heads, spatial mean, sum over layers (Zhang et al. 2018, eq. 1)."""
    from torchvision.models import alexnet

    net = alexnet()
    net.load_state_dict(state)
    heads = torch.load(ld._heads_file(), map_location="cpu", weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
    scale = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]

    def feats(z: torch.Tensor) -> list[torch.Tensor]:
        h, out = (z.float() / 255 * 2 - 1 - shift) / scale, []
        for i, layer in enumerate(net.features[:12]):
            h = layer(h)
            if i in (1, 4, 7, 9, 11):
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    total = torch.zeros(x.shape[0])
    with torch.no_grad():
        for k, (a, b) in enumerate(zip(feats(x), feats(y))):
            w = heads[f"lin{k}.model.1.weight"]
            total += F.conv2d((a - b) ** 2, w).mean(dim=(1, 2, 3))
    return total


def test_matches_the_formula_and_is_a_distance(torch_home: Path, alexnet_file: tuple[Path, dict]) -> None:
    metric = registry.get("metric", "lpips_diversity")()
    assert metric.outputs == {"lpips_diversity": True}
    x = _images(6, 0)
    # 3 graphs x 2 samples: (0, 3), (1, 4), (2, 5) are pairs; graph 1's two samples are identical.
    fake = torch.cat([x[:3], x[3:4], x[1:2], x[5:6]])
    out = metric.compute(_inputs(fake, [0, 1, 2, 0, 1, 2]))
    ref = _reference_lpips(alexnet_file[1], fake[[0, 1, 2]], fake[[3, 4, 5]])
    assert ref[1] == 0 and bool((ref[[0, 2]] > 0).all())
    assert out["lpips_diversity"] == pytest.approx(float(ref.mean()), rel=1e-4)
    assert metric.last_pairs == 3
    model = ld.load_lpips(alexnet_file[0].resolve())
    d = ld.pair_distances(model, fake, torch.tensor([0, 3]), torch.tensor([3, 0]), "cpu")
    assert d[0] == pytest.approx(float(d[1]), rel=1e-6)  # symmetric
    (trunk, heads) = metric.provenance()
    assert trunk.random_init and "not the published file" in trunk.source
    assert not heads.random_init and heads.source.startswith("package:lpips")


def test_all_sample_pairs_of_each_graph() -> None:
    a, b = ld.sample_pairs(torch.tensor([0, 1, 0, 1, 0, 2]))
    assert sorted(zip(a.tolist(), b.tolist())) == [(0, 2), (0, 4), (1, 3), (2, 4)]


def test_unavailable_cases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(ld.WEIGHTS.env, raising=False)
    metric = registry.get("metric", "lpips_diversity")()
    with pytest.raises(MetricUnavailable, match="samples_per_graph >= 2"):
        metric.compute(_inputs(_images(4, 0), [0, 1, 2, 3]))
    with pytest.raises(MetricUnavailable, match="at least 32 px"):
        metric.compute(_inputs(_images(4, 0, size=16), [0, 1, 0, 1]))
    with pytest.raises(MetricUnavailable) as e:
        metric.compute(_inputs(_images(4, 0), [0, 1, 0, 1]))
    assert HUB_FILE in str(e.value) and "SG2I_LPIPS_ALEXNET" in str(e.value)
