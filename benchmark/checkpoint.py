"""Self-describing checkpoints in safetensors: weights, optimizer state and everything needed to rebuild.

A checkpoint is one ``.safetensors`` file. Tensors: ``model.*`` (the method's ``state_dict``) and
``state.*`` (optimizer states, RNG states). The safetensors metadata (str -> str) carries JSON under the
key ``sg2i``: method name, method config, run config, vocabulary, split and protocol versions, step, git
commit and the non-tensor skeleton of the optimizer states. Nothing is ever unpickled.

Integrity (format version 2): the metadata records ``tensors_sha256``, a SHA-256 over every tensor's name,
dtype, shape and bytes (:func:`tensor_digest`); loading recomputes it, so a file whose tensor bytes were
changed or corrupted after writing is refused. This guards against damage, not against a forger who also
rewrites the digest. Version-1 files (no digest) still load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from benchmark.io import atomic_write_bytes

FORMAT = "sg2i-bench-checkpoint"
FORMAT_VERSION = "2"
READABLE_VERSIONS = ("1", "2")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the field."""


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in name order: name, dtype, shape and the raw bytes of each."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}|".encode())
        if t.numel():
            flat = t.cpu().contiguous().reshape(-1)
            h.update(memoryview(flat.view(torch.uint8).numpy()))
    return h.hexdigest()


def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move the tensors of a nested dict/list structure into ``tensors``; return a JSON-able skeleton.

    Dict keys keep their type (optimizer states use int keys), so dicts are encoded as key/value pairs.
    """
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten_state(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__} at {prefix}")


def unflatten_state(skel: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skel, dict):
        if "__tensor__" in skel:
            return tensors[skel["__tensor__"]]
        if "__dict__" in skel:
            return {k: unflatten_state(v, tensors) for k, v in skel["__dict__"]}
        if "__list__" in skel:
            return [unflatten_state(v, tensors) for v in skel["__list__"]]
    return skel


def save_checkpoint(
    path: str | Path,
    model_state: dict[str, torch.Tensor],
    meta: dict[str, Any],
    extra_state: dict[str, Any] | None = None,
) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model_state.items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous()
    skeleton = flatten_state(extra_state or {}, "state", tensors)
    # safetensors refuses shared storage; clone tensors that alias one another.
    seen: set[int] = set()
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        if ptr in seen:
            tensors[k] = v.clone()
        seen.add(ptr)
    header = {
        "format": FORMAT, "format_version": FORMAT_VERSION, **meta, "extra_state": skeleton,
        "tensors_sha256": tensor_digest(tensors),
    }  # fmt: skip
    atomic_write_bytes(path, save(tensors, metadata={"sg2i": json.dumps(header)}))


def read_metadata(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.safetensors"))
        hint = f"; it holds {', '.join(found)}: pass one of them" if found else (
            "; it holds no *.safetensors file (a run folder has checkpoint.safetensors once training wrote one)"
        )
        raise CheckpointError(f"{path}: a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("sg2i")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e})") from None
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file without sg2i-bench metadata (field 'sg2i' missing)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: metadata field 'sg2i' is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path}: metadata field 'format' is {got!r}, expected {FORMAT!r}")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path}: metadata field 'format_version' is {meta.get('format_version')!r}; "
            f"this version reads {', '.join(READABLE_VERSIONS)}"
        )
    if meta["format_version"] != "1" and not isinstance(meta.get("tensors_sha256"), str):
        raise CheckpointError(f"{path}: metadata field 'tensors_sha256' is missing")
    return meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict, dict, dict]:
    """Return (meta, model_state, extra_state). Only safetensors is read: no pickle is involved."""
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt tensor data ({e})") from None
    expected = meta.pop("tensors_sha256", None)
    if expected is not None and tensor_digest(tensors) != expected:
        raise CheckpointError(
            f"{path}: the tensor data does not match metadata field 'tensors_sha256' "
            "(the file was modified or corrupted after it was written)"
        )
    if str(device) != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        extra = unflatten_state(meta.pop("extra_state", {}), tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: metadata field 'extra_state' refers to a missing tensor ({e})") from None
    return meta, model_state, extra


def config_from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Rebuild a (possibly nested) frozen dataclass from ``dataclasses.asdict`` output."""
    import typing

    from benchmark.config import renamed

    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    d = {renamed(names, k): v for k, v in d.items()}
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v, tp = d[f.name], hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(v, dict):
            v = config_from_dict(tp, v)
        elif typing.get_origin(tp) is tuple and isinstance(v, list):
            v = tuple(v)
        kwargs[f.name] = v
    return cls(**kwargs)
