"""Name -> implementation registries for methods, datasets, metrics and text encoders.

Each implementation lives in one file and registers itself with a decorator::

    @register("method", "retrieval")
    class Retrieval: ...

Listing must stay fast (``python -m benchmark ls`` < 3 s), so the registry never imports torch-heavy
modules to discover names: it parses the source of the registry packages with :mod:`ast` and reads the
``@register(kind, name, **facts)`` decorators (the lazy name -> module map of lm-evaluation-harness' ``MODEL_MAPPING``,
derived from the files instead of written twice). ``get(kind, name)`` imports only the one module.

Facts about a plug-in are keyword arguments of its decorator, written as literals so that the parse reads them
(``Entry.meta``) without importing anything. A metric declares ``outputs`` (each reported value's name ->
higher is better) and ``mode`` (its implementation, as recorded in every result and shown by the leaderboard)::

    @register("metric", "fid", outputs={"fid": False}, mode="clean-fid, clean mode, TF Inception pool3")
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

KINDS = ("method", "dataset", "metric", "text_encoder")
# Packages scanned for @register decorators.
SEARCH_PACKAGES = ("baselines", "methods", "benchmark.data", "benchmark.metrics", "benchmark.text_encoders")

_REGISTRY: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown method/dataset/metric/text-encoder name; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly.
        return str(self.args[0])


# Declared facts each kind requires: name -> (type, description) (checked at registration and at parse time).
REQUIRED_META: dict[str, dict[str, tuple[type, str]]] = {
    "metric": {
        "outputs": (dict, "each reported value's name -> higher is better (bool)"),
        "mode": (str, "the implementation, e.g. 'clean-fid, clean mode, TF Inception pool3'"),
    },
}


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    module: str
    summary: str
    meta: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # declared facts

    @property
    def outputs(self) -> dict[str, bool]:
        """A metric's declared outputs: value name -> higher is better."""
        return dict(self.meta.get("outputs", {}))

    @property
    def mode(self) -> str:
        """A metric's declared implementation note."""
        return str(self.meta.get("mode", ""))


def check_meta(kind: str, name: str, meta: dict[str, Any], where: str = "") -> None:
    """Fail with one line naming the plug-in (and file) and the keyword when a required fact is missing or
    malformed."""
    at = f"{where}: " if where else ""
    for key, (tp, what) in REQUIRED_META.get(kind, {}).items():
        if not isinstance(meta.get(key), tp):
            raise ValueError(f"{at}@register({kind!r}, {name!r}): keyword {key!r} must be a literal {tp.__name__}: {what}")
    outputs = meta.get("outputs")
    if kind == "metric" and not (outputs and all(isinstance(k, str) and isinstance(v, bool) for k, v in outputs.items())):
        raise ValueError(f"{at}@register({kind!r}, {name!r}): keyword 'outputs' must map names to True/False")


def register(kind: str, name: str, **meta: Any) -> Callable[[T], T]:
    """Class/function decorator that registers ``obj`` under ``(kind, name)`` with its declared facts ``meta``
    (literals; see the module docstring). A metric class gets ``outputs`` and ``mode`` from them."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; expected one of {KINDS}")
    check_meta(kind, name, meta)

    def deco(obj: T) -> T:
        prev = _REGISTRY[kind].get(name)
        if prev is not None and prev is not obj and getattr(prev, "__qualname__", None) != getattr(obj, "__qualname__", None):
            raise ValueError(f"{kind} {name!r} registered twice ({prev!r} and {obj!r})")
        _REGISTRY[kind][name] = obj
        obj.registry_name = name  # type: ignore[attr-defined]
        obj.registry_meta = MappingProxyType(dict(meta))  # type: ignore[attr-defined]
        if kind == "metric":
            obj.outputs = dict(meta["outputs"])  # type: ignore[attr-defined]
            obj.mode = meta["mode"]  # type: ignore[attr-defined]
        return obj

    return deco


def _module_files(package: str) -> list[tuple[str, Path]]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    out = []
    for loc in spec.submodule_search_locations:
        for path in sorted(Path(loc).glob("*.py")):
            if path.name.startswith("_"):
                continue
            out.append((f"{package}.{path.stem}", path))
    return out


def _literal_meta(dec: ast.Call, where: str) -> dict[str, Any]:
    """The decorator's keyword arguments, which must be literals (read without importing the module)."""
    meta = {}
    for kw in dec.keywords:
        try:
            meta[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            raise ValueError(f"{where}:{kw.value.lineno}: @register keyword {kw.arg!r} must be a literal") from None
    return meta


def _decorator_names(tree: ast.Module, where: str = "") -> list[tuple[str, str, str, dict[str, Any]]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            continue
        for dec in node.decorator_list:
            if (
                isinstance(dec, ast.Call)
                and getattr(dec.func, "id", getattr(dec.func, "attr", None)) == "register"
                and len(dec.args) == 2
                and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in dec.args)
            ):
                doc = (ast.get_docstring(node) or "").strip().splitlines()
                kind, name, meta = dec.args[0].value, dec.args[1].value, _literal_meta(dec, where)
                check_meta(kind, name, meta, where)
                found.append((kind, name, doc[0] if doc else "", meta))
    return found


@cache
def entries() -> dict[str, dict[str, Entry]]:
    """All registered names by kind, found by parsing sources (no imports of the modules)."""
    table: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
    for package in SEARCH_PACKAGES:
        for module, path in _module_files(package):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for kind, name, summary, meta in _decorator_names(tree, str(path)):
                if kind in table:
                    table[kind][name] = Entry(kind, name, module, summary, MappingProxyType(meta))
    return table


def names(kind: str) -> list[str]:
    return sorted(entries()[kind])


def unknown(kind: str, name: str) -> UnknownNameError:
    valid = names(kind)
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}.{hint} Valid {kind}s: {', '.join(valid) or '(none)'}")


def get(kind: str, name: str) -> Any:
    """Import the module that registers ``name`` and return the registered object."""
    if name not in _REGISTRY[kind]:
        entry = entries()[kind].get(name)
        if entry is None:
            raise unknown(kind, name)
        importlib.import_module(entry.module)
    if name not in _REGISTRY[kind]:
        raise unknown(kind, name)
    return _REGISTRY[kind][name]
