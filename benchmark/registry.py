"""Name -> implementation registries for methods, datasets, metrics and text encoders.

Each implementation lives in one file and registers itself with a decorator::

    @register("method", "retrieval")
    class Retrieval: ...

Listing must stay fast (``python -m benchmark ls`` < 3 s), so the registry never imports torch-heavy
modules to discover names: it parses the source of the registry packages with :mod:`ast` and reads the
``@register(kind, name)`` decorators (the lazy name -> module map of lm-evaluation-harness' ``MODEL_MAPPING``,
derived from the files instead of written twice). ``get(kind, name)`` imports only the one module.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
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


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    module: str
    summary: str
    outputs: tuple[str, ...] = ()  # a metric's literal ``outputs = {"name": ...}`` keys, when written as a dict



def register(kind: str, name: str) -> Callable[[T], T]:
    """Class/function decorator that registers ``obj`` under ``(kind, name)``."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; expected one of {KINDS}")

    def deco(obj: T) -> T:
        prev = _REGISTRY[kind].get(name)
        if prev is not None and prev is not obj and getattr(prev, "__qualname__", None) != getattr(obj, "__qualname__", None):
            raise ValueError(f"{kind} {name!r} registered twice ({prev!r} and {obj!r})")
        _REGISTRY[kind][name] = obj
        obj.registry_name = name  # type: ignore[attr-defined]
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


def _literal_outputs(node: ast.ClassDef | ast.FunctionDef) -> tuple[str, ...]:
    """Keys of a class-level ``outputs = {"a": ..., "b": ...}`` dict literal (computed ones are not read)."""
    for stmt in node.body if isinstance(node, ast.ClassDef) else ():
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else getattr(stmt, "target", None)
        value = getattr(stmt, "value", None)
        if getattr(target, "id", None) == "outputs" and isinstance(value, ast.Dict):
            return tuple(k.value for k in value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))
    return ()


def _decorator_names(tree: ast.Module) -> list[tuple[str, str, str, tuple[str, ...]]]:
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
                found.append((dec.args[0].value, dec.args[1].value, doc[0] if doc else "", _literal_outputs(node)))
    return found


@cache
def entries() -> dict[str, dict[str, Entry]]:
    """All registered names by kind, found by parsing sources (no imports of the modules)."""
    table: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
    for package in SEARCH_PACKAGES:
        for module, path in _module_files(package):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for kind, name, summary, outputs in _decorator_names(tree):
                if kind in table:
                    table[kind][name] = Entry(kind, name, module, summary, outputs)
    return table


def names(kind: str) -> list[str]:
    return sorted(entries()[kind])


def unknown(kind: str, name: str) -> UnknownNameError:
    valid = names(kind)
    # names that start with (or contain) what was typed ("coco" -> coco_stuff), then spelling neighbours
    low = name.lower()
    close = [v for v in valid if low and (v.startswith(low) or low in v)]
    close += [v for v in difflib.get_close_matches(name, valid, n=3) if v not in close]
    close = close[:3]
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
