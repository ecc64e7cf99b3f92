"""FID and KID on clean-fid Inception pool3 features (clean-fid 0.1.35, ``cleanfid/fid.py``).

Features come from :func:`benchmark.metrics.inception.inception_features` (clean-fid ``mode="clean"``,
computed in memory). The statistics are clean-fid's own functions:

* **FID** (Heusel et al. 2017), ``cleanfid.fid.frechet_distance``: fit Gaussians ``N(mu_f, C_f)`` and
  ``N(mu_r, C_r)`` to the fake and real features (``np.cov`` with ``rowvar=False``, i.e. the unbiased
  ``1/(N-1)`` covariance) and return the squared Fréchet (2-Wasserstein) distance

      d^2 = ||mu_f - mu_r||^2 + Tr(C_f + C_r - 2 (C_f C_r)^{1/2}),

  with the matrix square root from ``scipy.linalg.sqrtm`` (``eps = 1e-6`` added to the diagonals only when
  the product is so singular that ``sqrtm`` is not finite; a tiny imaginary part is dropped).
  FID is biased upwards at small N, so only numbers with the same N are comparable. For N_fake + N_real + 1
  < 2048 the statistics are first expressed in an orthonormal basis of the span of the features, which is
  exact and avoids a slow ``sqrtm`` of a singular 2048 x 2048 matrix (see :func:`fid_from_features`).
* **KID** (Bińkowski et al. 2018), ``cleanfid.fid.kernel_distance``: the unbiased estimator of the squared
  MMD with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3`` (``d = 2048``),

      MMD^2_u = 1/(m(m-1)) sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] - 2/m^2 sum_{i, j} k(x_i, y_j),

  averaged over ``num_subsets = 100`` random subsets of size ``m = min(N_fake, N_real, 1000)`` drawn
  without replacement. clean-fid draws them with numpy's *global* RNG; we seed it with 0 for the call and
  restore its state afterwards, so KID is deterministic. When both sets have ``m`` images, every "subset"
  is the whole set and all 100 terms are equal (up to float summation order). KID is reported raw (not
  x1000). Being unbiased it can be slightly negative: for a set against itself the value is exactly
  ``-(2/m) * (mean_i k(x_i, x_i) - mean_{i != j} k(x_i, x_j))``, an O(1/m) negative number, not 0.

Real-image features are cached on disk under ``cache_dir()/ref_features/<dataset>/`` keyed by split, image
size, number of images, SHA-256 of the real uint8 bytes and the Inception weights' SHA-256, so FID, KID
and later evaluations reuse them. Within a process, features are memoised by the SHA-256 of the image
tensor, so FID and KID of the same evaluation compute the fake features once.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from benchmark.interfaces import EvalInputs, Metric, WeightProvenance
from benchmark.io import atomic_write_bytes, file_lock, file_sha256
from benchmark.metrics.inception import (
    inception_features,
    inception_provenance,
    resolve_inception_weights,
    weights_key,
)
from benchmark.paths import cache_dir
from benchmark.registry import register

KID_NUM_SUBSETS = 100
KID_MAX_SUBSET_SIZE = 1000
KID_SEED = 0
REF_CACHE_VERSION = "1"
_MEMO_SIZE = 8
_MEMO: OrderedDict[str, np.ndarray] = OrderedDict()


def tensor_sha256(t: Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (CPU, contiguous)."""
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _memo_get(key: str) -> np.ndarray | None:
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    return None


def _memo_put(key: str, feats: np.ndarray) -> None:
    _MEMO[key] = feats
    _MEMO.move_to_end(key)
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)


def clear_memo() -> None:
    """Forget the in-process feature memo (tests)."""
    _MEMO.clear()


def image_features(
    images: Tensor,
    device: torch.device | str = "cpu",
    weights: str | Path | None = None,
    batch_size: int = 32,
    sha: str | None = None,
    desc: str = "inception features",
) -> np.ndarray:
    """Inception features of uint8 images, memoised in-process by the SHA-256 of the tensor."""
    key = f"{sha or tensor_sha256(images)}|{weights_key(weights)}"
    feats = _memo_get(key)
    if feats is None:
        feats = inception_features(images, device, batch_size=batch_size, path=weights, desc=desc)
        feats.setflags(write=False)
        _memo_put(key, feats)
    return feats


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def reference_cache_path(
    dataset: str, split: str, image_size: int, num_images: int, images_sha256: str, weights_sha256: str
) -> Path:
    """Where the real-image features of one evaluation split live on disk."""
    name = f"{_safe(split)}_{image_size}px_n{num_images}_{images_sha256[:16]}_w{weights_sha256[:12]}.npz"
    return cache_dir() / "ref_features" / _safe(dataset) / name


def reference_features(
    images: Tensor,
    dataset: str,
    split: str,
    image_size: int,
    device: torch.device | str = "cpu",
    weights: str | Path | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Features of the real images of a split: in-process memo, then the on-disk ``.npz`` cache, then compute.

    The file is written atomically (under a lock so that concurrent evaluations compute it once). It stores
    float32 features (the network's own precision, so nothing is lost) and the full hashes it was keyed by.
    """
    sha = tensor_sha256(images)
    file, _ = resolve_inception_weights(weights)
    wsha = file_sha256(file)
    key = f"{sha}|{weights_key(weights)}"
    feats = _memo_get(key)
    if feats is not None:
        return feats
    path = reference_cache_path(dataset, split, image_size, int(images.shape[0]), sha, wsha)
    with file_lock(path.with_name(path.name + ".lock")):
        feats = _load_reference(path, sha, wsha)
        if feats is None:
            feats = inception_features(
                images, device, batch_size=batch_size, path=weights, desc=f"inception features (real {split})"
            )
            buf = io.BytesIO()
            np.savez(
                buf,
                feats=feats.astype(np.float32),
                images_sha256=np.array(sha),
                weights_sha256=np.array(wsha),
                version=np.array(REF_CACHE_VERSION),
            )
            atomic_write_bytes(path, buf.getvalue())
    feats.setflags(write=False)
    _memo_put(key, feats)
    return feats


def _load_reference(path: Path, sha: str, wsha: str) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["images_sha256"]) != sha or str(z["weights_sha256"]) != wsha:
                return None
            if str(z["version"]) != REF_CACHE_VERSION:
                return None
            return z["feats"].astype(np.float64)
    except (OSError, KeyError, ValueError):  # a damaged cache file is recomputed
        return None


def _check_count(feats: np.ndarray, what: str) -> None:
    if feats.shape[0] < 2:
        raise ValueError(f"need at least 2 {what} images for FID/KID, got {feats.shape[0]}")


def _frechet_fallback(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The same formula as clean-fid's ``frechet_distance``, for SciPy versions without ``sqrtm(disp=)``."""
    from scipy import linalg

    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _span_coordinates(fake: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both feature sets in an orthonormal basis of the span of their centred rows and mean difference.

    Exact for FID: with ``Q`` (D x r) orthonormal and ``Q Q^T`` the identity on that span, ``Q^T (mu_f - mu_r)``
    keeps its norm, ``Tr(Q^T C Q) = Tr(C)`` and ``(Q^T C_f Q)(Q^T C_r Q) = Q^T C_f C_r Q`` has the same non-zero
    spectrum as ``C_f C_r``. Only done when ``r = N_f + N_r + 1 < D``; otherwise the features are returned as is.
    """
    n1, n2, d = fake.shape[0], real.shape[0], fake.shape[1]
    if n1 + n2 + 1 >= d:
        return fake, real
    mu1, mu2 = fake.mean(axis=0), real.mean(axis=0)
    span = np.concatenate([fake - mu1, real - mu2, (mu1 - mu2)[None]], axis=0)
    q, _ = np.linalg.qr(span.T)  # reduced QR: q is D x r with orthonormal columns
    return fake @ q, real @ q


def fid_from_features(fake: np.ndarray, real: np.ndarray) -> float:
    """FID between two feature sets [N, D] (clean-fid ``frechet_distance`` on means and covariances).

    When ``N_fake + N_real + 1 < D`` the covariances have rank < D and everything lives in the
    (N_fake + N_real + 1)-dimensional span of the centred features and the mean difference; the statistics
    are then taken in an orthonormal basis of that span (:func:`_span_coordinates`), which leaves the
    Fréchet distance unchanged and replaces a 2048 x 2048 ``sqrtm`` (~30-60 s on a 2-core CPU) by a small
    one. It is also more accurate: a set against itself gives ~1e-13 instead of the ~-6e-5 of ``sqrtm`` on
    the singular 2048 x 2048 product; on two different 8-image sets the two agree to 3e-8 relative.
    """
    from cleanfid import fid as cfid
    from scipy.linalg import LinAlgWarning

    _check_count(fake, "generated")
    _check_count(real, "real")
    fake, real = _span_coordinates(fake, real)
    mu1, sigma1 = np.mean(fake, axis=0), np.cov(fake, rowvar=False)
    mu2, sigma2 = np.mean(real, axis=0), np.cov(real, rowvar=False)
    with warnings.catch_warnings():
        # scipy >= 1.16 deprecates sqrtm(disp=...) and warns that the low-rank product is singular or
        # ill-conditioned; clean-fid handles a non-finite result itself (eps on the diagonal).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", LinAlgWarning)
        try:
            return float(cfid.frechet_distance(mu1, sigma1, mu2, sigma2))
        except TypeError as e:
            if "disp" not in str(e):
                raise
            return _frechet_fallback(mu1, sigma1, mu2, sigma2)


@contextlib.contextmanager
def _seeded_numpy(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG for the block and restore its previous state afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def kid_from_features(
    fake: np.ndarray,
    real: np.ndarray,
    num_subsets: int = KID_NUM_SUBSETS,
    max_subset_size: int = KID_MAX_SUBSET_SIZE,
    seed: int = KID_SEED,
) -> float:
    """KID (raw, not x1000) via clean-fid ``kernel_distance``: unbiased MMD^2, cubic kernel, seeded subsets."""
    from cleanfid import fid as cfid

    _check_count(fake, "generated")
    _check_count(real, "real")
    with _seeded_numpy(seed):
        return float(
            cfid.kernel_distance(fake, real, num_subsets=num_subsets, max_subset_size=max_subset_size)
        )


class _InceptionMetric(Metric):
    """Shared plumbing: weights, provenance and the (memoised/cached) real and fake features."""

    def __init__(self, weights: str | Path | None = None, batch_size: int = 32) -> None:
        super().__init__()
        self.weights = weights
        self.batch_size = batch_size

    def provenance(self) -> list[WeightProvenance]:
        return [inception_provenance(self.weights)]

    def features(self, inputs: EvalInputs) -> tuple[np.ndarray, np.ndarray]:
        """(fake, real) features float64 [N, 2048] of one evaluation."""
        real = reference_features(
            inputs.real,
            inputs.dataset,
            inputs.split,
            inputs.image_size,
            inputs.device,
            self.weights,
            self.batch_size,
        )
        fake = image_features(
            inputs.fake,
            inputs.device,
            self.weights,
            self.batch_size,
            desc=f"inception features (fake {inputs.split})",
        )
        return fake, real


@register("metric", "fid", outputs={"fid": False}, mode="clean-fid, clean mode, TF Inception pool3")
class FID(_InceptionMetric):
    """Fréchet Inception Distance (clean-fid, clean mode, TF Inception pool3); lower is better."""

    def compute(self, inputs: EvalInputs) -> dict[str, float]:
        fake, real = self.features(inputs)
        return {"fid": fid_from_features(fake, real)}


@register("metric", "kid", outputs={"kid": False}, mode="clean-fid, unbiased cubic-kernel MMD^2, raw value")
class KID(_InceptionMetric):
    """Kernel Inception Distance (clean-fid, unbiased cubic-kernel MMD^2, raw value); lower is better."""

    def compute(self, inputs: EvalInputs) -> dict[str, float]:
        fake, real = self.features(inputs)
        return {"kid": kid_from_features(fake, real)}
