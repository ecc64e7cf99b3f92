"""Name -> implementation registries for methods, datasets, metrics and text encoders.

Each implementation lives in one file and registers itself with a decorator::

    @register("method", "retrieval")
    class Retrieval: ...

Listing must stay fast (``python -m benchmark ls`` < 3 s), so the registry never imports torch-heavy
modules to discover names: it parses the source of the registry packages with :mod:`ast` and reads the
``@register(kind, name, **facts)`` decorators (the lazy name -> module map of lm-evaluation-harness' ``MODEL_MAPPING``,
derived from the files instead of written twice). ``get(kind, name)`` imports only the one module.

Variants of one method that differ only in config defaults are *presets* of it, declared as a literal table::

    @register("method", "sg2im")
    @register_presets("sg2im", {
        "sg2im_clip": {"summary": "...", "config": {"text_encoder": "clip"},
                       "tiers": {"smoke": {"method.text_encoder_weights": "random"}}},
    })
    class Sg2Im(Method): ...

Each preset is a registered method name whose class is generated from the family class: its ``Config`` has the
preset's defaults and its ``tier_overrides`` are the family's updated with the preset's. The family name is
recorded in each result beside the method name (the report's text-encoder ablation groups by it).

Plug-ins from other installed distributions declare entry points in the group ``sg2i_bench.plugins`` whose
value is a module or package path (``toy = "my_pkg.plugins"``); the named module (or every module of the
named package) is scanned for the same decorators, still without importing it.

Facts about a plug-in are keyword arguments of its decorator, written as literals so that the parse reads them
(``Entry.meta``) without importing anything. A metric declares ``outputs`` (each reported value's name ->
higher is better) and ``mode`` (its implementation, as recorded in every result and shown by the leaderboard)::

    @register("metric", "fid", outputs={"fid": False}, mode="clean-fid, clean mode, TF Inception pool3")
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import importlib.metadata
import importlib.util
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

KINDS = ("method", "dataset", "metric", "text_encoder")
# Packages scanned for @register decorators.
SEARCH_PACKAGES = ("baselines", "methods", "benchmark.data", "benchmark.metrics", "benchmark.text_encoders")
PLUGIN_GROUP = "sg2i_bench.plugins"  # importlib.metadata entry-point group of out-of-tree plug-ins
PRESET_KEYS = ("summary", "config", "tiers")

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
    family: str = ""  # methods: the family a preset belongs to (a plain method is its own family)
    path: str = ""  # the source file that registers the name
    plugin: str = ""  # "distribution (entry point)" for names registered by an installed plug-in

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
    """All registered names by kind, found by parsing sources (no imports of the modules): the registry
    packages, then the modules named by installed plug-ins' entry points (:func:`plugin_sources`)."""
    table: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
    sources = [(m, p, "") for package in SEARCH_PACKAGES for m, p in _module_files(package)]
    for module, path, plugin in sources + plugin_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found = [
            Entry(kind, name, module, summary, MappingProxyType(meta))
            for kind, name, summary, meta in _decorator_names(tree, str(path))
            if kind in KINDS
        ]
        families = _registered_families(tree)
        for e in found + _preset_entries(tree, module, path):
            family = e.family or (families.get(e.name, e.name) if e.kind == "method" else "")
            _add(table, dataclasses.replace(e, family=family, path=str(path), plugin=plugin))
    return table


def _add(table: dict[str, dict[str, Entry]], entry: Entry) -> None:
    prev = table[entry.kind].get(entry.name)
    if prev is not None and entry.plugin and prev.path != entry.path:
        raise ValueError(
            f"plug-in {entry.plugin}: {entry.path}: {entry.kind} {entry.name!r} is already registered by "
            f"{prev.path}; rename it in the plug-in"
        )
    table[entry.kind][entry.name] = entry


# --- presets: variants of one method that differ only in config defaults ------------------------------------


def _is_call_to(dec: ast.expr, func: str) -> bool:
    return isinstance(dec, ast.Call) and getattr(dec.func, "id", getattr(dec.func, "attr", None)) == func


def _preset_table(dec: ast.Call, path: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """``(family, table)`` of a ``@register_presets("family", {...})`` decorator; the table must be a literal."""
    where = f"{path}:{dec.lineno}: register_presets"
    if len(dec.args) != 2 or not (isinstance(dec.args[0], ast.Constant) and isinstance(dec.args[0].value, str)):
        raise ValueError(f"{where}: expected register_presets('family', {{name: {{...}}}})")
    try:
        table = ast.literal_eval(dec.args[1])
    except ValueError:
        raise ValueError(f"{where}: field 'table' must be a literal dict (it is read without importing)") from None
    return dec.args[0].value, table


def _registered_families(tree: ast.Module) -> dict[str, str]:
    """Method name -> family, for classes decorated with both ``@register("method", name)`` and presets."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            fams = [d.args[0].value for d in node.decorator_list if _is_call_to(d, "register_presets") and d.args
                    and isinstance(d.args[0], ast.Constant)]  # fmt: skip
            for d in node.decorator_list if fams else ():
                if _is_call_to(d, "register") and len(d.args) == 2 and getattr(d.args[0], "value", None) == "method":
                    out[getattr(d.args[1], "value", "")] = fams[0]
    return out


def _preset_entries(tree: ast.Module, module: str, path: Path) -> list[Entry]:
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        for dec in node.decorator_list:
            if _is_call_to(dec, "register_presets"):
                family, table = _preset_table(dec, path)  # type: ignore[arg-type]
                doc = (ast.get_docstring(node) or "").strip().splitlines()
                for name, spec in table.items():
                    summary = spec.get("summary", "") if isinstance(spec, dict) else ""
                    out.append(Entry("method", name, module, summary or (doc[0] if doc else ""), family=family))
    return out


def register_presets(family: str, table: dict[str, dict[str, Any]]) -> Callable[[type[T]], type[T]]:
    """Register each ``name -> {"summary", "config", "tiers"}`` of ``table`` as a preset of the decorated method.

    ``config`` maps fields of the method's ``Config`` to the preset's defaults; ``tiers`` maps a tier to dotted
    overrides (``method.x``) applied over the family's ``tier_overrides[tier]``. The registered object is a
    class generated from the family class (only ``Config`` and ``tier_overrides`` differ), so checkpoints and
    results keep the preset's name. Keep the table a literal: ``ls`` reads it without importing the module.
    """

    def deco(cls: type[T]) -> type[T]:
        cls.family = family  # type: ignore[attr-defined]
        for name, spec in table.items():
            register("method", name)(_preset_class(cls, family, name, spec))
        return cls

    return deco


def _preset_class(base: Any, family: str, name: str, spec: dict[str, Any]) -> type:
    module = sys.modules.get(base.__module__)
    where = f"{getattr(module, '__file__', None) or base.__module__}: preset {name!r}"
    if not isinstance(spec, dict) or set(spec) - set(PRESET_KEYS):
        bad = sorted(set(spec) - set(PRESET_KEYS)) if isinstance(spec, dict) else spec
        raise ValueError(f"{where}: unknown field(s) {bad}; valid: {', '.join(PRESET_KEYS)}")
    from benchmark.config import apply_overrides  # config imports the registry lazily; no cycle at import

    cfg_cls, config, tiers = base.Config, dict(spec.get("config", {})), dict(spec.get("tiers", {}))
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    for key in config:
        if key not in fields:
            raise ValueError(f"{where}: field 'config.{key}' is not a field of {cfg_cls.__name__}")
    filled = apply_overrides(cfg_cls(), config)  # type-checked and coerced like --set
    hints = typing.get_type_hints(cfg_cls)
    title = "".join(p[:1].upper() + p[1:] for p in name.split("_"))
    config_cls = dataclasses.make_dataclass(
        f"{title}Config",
        [(k, hints[k], dataclasses.field(default=getattr(filled, k))) for k in config],
        bases=(cfg_cls,),
        frozen=True,
        namespace={"__doc__": f"{cfg_cls.__name__} with the defaults of preset {name!r}: {config}."},
    )
    merged = {t: {**base.tier_overrides.get(t, {}), **tiers.get(t, {})} for t in {**base.tier_overrides, **tiers}}
    cls = type(title, (base,), {"__doc__": spec.get("summary") or base.__doc__, "Config": config_cls,
                                "tier_overrides": merged, "family": family, "preset": name})  # fmt: skip
    for obj in (config_cls, cls):  # reachable by module and name, so that pickle (submitit) finds them
        obj.__module__ = base.__module__
        if module is not None:
            old = getattr(module, obj.__name__, None)
            if old is not None and getattr(old, "__qualname__", None) != obj.__qualname__:
                raise ValueError(f"{where}: generated class name {obj.__name__} is already used in {base.__module__}")
            setattr(module, obj.__name__, obj)
    return cls


def family(name: str) -> str:
    """The method family of a registered method (its preset family, else the name itself), import-free."""
    entry = entries()["method"].get(name)
    return entry.family if entry is not None and entry.family else name


# --- plug-ins from other installed distributions -------------------------------------------------------------


def plugin_sources() -> list[tuple[str, Path, str]]:
    """``(module, file, "distribution (entry point)")`` for each module named by a ``sg2i_bench.plugins`` entry
    point: the module itself, or every public module of a package. Found on ``sys.path`` without importing."""
    out = []
    for ep in sorted(importlib.metadata.entry_points(group=PLUGIN_GROUP), key=lambda e: (e.name, e.value)):
        dist = getattr(getattr(ep, "dist", None), "name", "?")
        where = f"{dist} ({ep.name} = {ep.value})"
        if ep.attr:
            raise ValueError(f"plug-in {where}: entry point value must be a module or package path, not an object")
        files = _plugin_files(ep.module)
        if not files:
            raise ValueError(f"plug-in {where}: module {ep.module!r} not found on sys.path")
        out += [(module, path, where) for module, path in files]
    return out


def _plugin_files(module: str) -> list[tuple[str, Path]]:
    from importlib.machinery import PathFinder

    spec, search, name = None, None, ""
    for part in module.split("."):  # walk the path without executing any package's __init__
        name = f"{name}.{part}" if name else part
        spec = PathFinder.find_spec(name, search)
        if spec is None:
            return []
        search = spec.submodule_search_locations
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [
            (f"{module}.{p.stem}", p)
            for loc in spec.submodule_search_locations
            for p in sorted(Path(loc).glob("*.py"))
            if not p.name.startswith("_")
        ]
    return [(module, Path(spec.origin))] if spec.origin and spec.origin.endswith(".py") else []


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
