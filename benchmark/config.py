"""Run configuration: typed defaults in dataclasses, overrides as data.

Resolution order (later wins): dataclass defaults -> the dataset protocol's tier budget
(``datasets/<name>/protocol.json``) -> the method's ``tier_overrides[tier]`` -> the user's ``--set key=value``.
Keys are dotted: ``train.steps``, ``eval.num_graphs``, ``method.learning_rate``, ``image_size``.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from benchmark.protocol import TIERS, load_protocol, tier_settings


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimisation steps (0 for methods that do not train)
    batch_size: int = 32
    checkpoint_every: int = 500  # steps between self-describing checkpoints (and at the end)
    log_every: int = 50
    # The GPU path (benchmark/accel.py resolves them per device; None = by device; the result records them)
    precision: str = "auto"  # autocast: auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16 (+ GradScaler)
    channels_last: bool | None = None  # NHWC weights and images (None: on for CUDA)
    fused_optimizer: bool = True  # fused Adam/AdamW kernels (CUDA only)
    compile: bool = False  # torch.compile of the method's compile_targets
    grad_accum: int = 1  # micro-batches per optimiser step; batch_size stays the global batch
    num_workers: int | None = None  # DataLoader workers (None: 4 on CUDA, 0 on CPU)
    pin_memory: bool | None = None  # (None: on for CUDA)
    persistent_workers: bool = True  # keep the workers between epochs (when num_workers > 0)
    non_blocking: bool = True  # asynchronous host-to-device copies (CUDA, pinned memory)


@dataclass(frozen=True)
class EvalConfig:
    splits: tuple[str, ...] = ()  # default: the protocol's eval_splits
    num_graphs: int = 256  # first N graphs of each split, in split-file order
    samples_per_graph: int = 1
    batch_size: int = 64
    layout: str = "pred"  # "pred" (method predicts the layout) or "gt" (ground-truth boxes/masks)
    metrics: tuple[str, ...] = ()  # default: the protocol's metric list


@dataclass(frozen=True)
class RunConfig:
    method: str
    dataset: str
    method_cfg: Any  # the method's frozen Config dataclass
    tier: str = "quick"
    seed: int = 0
    device: str = "auto"
    image_size: int = 32
    protocol: str = ""  # protocol variant: "" = protocol.json, "lostgan" = protocol_lostgan.json
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["method_cfg"] = dataclasses.asdict(self.method_cfg)
        return d


# Fields renamed so that one idea has one name across methods; the old name is still accepted (result files and
# checkpoints written before the rename use it), with a deprecation message.
RENAMED_FIELDS: dict[str, str] = {"lr": "learning_rate"}


def public_key(key: str) -> str:
    """A config key as the user writes it (``method.x``, not the internal ``method_cfg.x``)."""
    return key.replace("method_cfg.", "method.", 1) if key.startswith("method_cfg.") else key


def renamed(names: set[str] | frozenset[str], key: str, where: str = "") -> str:
    """``key``, or its new name (announced on stderr) when ``key`` is a deprecated alias of a field in ``names``."""
    new = RENAMED_FIELDS.get(key)
    if key in names or new not in names:
        return key
    print(f"warning: {public_key(where + key)} is deprecated, read as {public_key(where + new)}", file=sys.stderr)
    return new


def parse_value(text: str) -> Any:
    """``--set`` values: Python literals (``3``, ``1e-4``, ``True``, ``[1, 2]``), otherwise the plain string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else Any
        return tuple(_coerce(v, inner, key) for v in value)
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ValueError(f"--set {key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"--set {key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"--set {key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        return str(value)
    return value


def apply_overrides(obj: Any, overrides: dict[str, Any], prefix: str = "") -> Any:
    """Return a copy of the frozen dataclass ``obj`` with dotted-key ``overrides`` applied (type-checked)."""
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        head = renamed(names, head, prefix)
        if head not in names:
            raise ValueError(
                f"--set {public_key(prefix + key)}: unknown field {head!r} of {type(obj).__name__}; "
                f"valid: {', '.join(sorted(names))}"
            )
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            changes[head] = _coerce(value, hints[head], public_key(prefix + key))
    for head, sub in nested.items():
        changes[head] = apply_overrides(changes.get(head, getattr(obj, head)), sub, prefix=f"{prefix}{head}.")
    return dataclasses.replace(obj, **changes)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def parse_sets(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def _version_key(version: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return None


def historical_overrides(
    tier_history: dict[str, dict[str, dict[str, Any]]], tier: str, version: str
) -> dict[str, Any] | None:
    """The overrides ``tier`` had under protocol ``version``, from a method's ``tier_history``; None: the current
    ones (``tier_overrides``).

    A key of ``tier_history`` is the *last* protocol version in which the recipe it lists for a tier was in
    force, so a recipe that lasted several versions is written once: the recipe of ``version`` is the one under
    the smallest key >= ``version`` that lists ``tier`` (versions compare numerically, "1.10" > "1.9"); with no
    such key the tier has not changed since ``version``. A version that is not dot-separated integers only
    matches its own key.
    """
    entries = {k: v[tier] for k, v in tier_history.items() if tier in v}
    if version in entries:
        return entries[version]
    want = _version_key(version)
    if want is None:
        return None
    later = [(key, k) for k in entries if (key := _version_key(k)) is not None and key >= want]
    return entries[min(later)[1]] if later else None


def build_run_config(
    method: str,
    dataset: str,
    tier: str = "quick",
    seed: int = 0,
    device: str = "auto",
    sets: dict[str, Any] | None = None,
    protocol: str = "",
    protocol_version: str = "",
) -> RunConfig:
    """Resolve the full configuration of one (method, dataset, tier) run.

    ``protocol_version``: resolve the tier as it was under that earlier version of the protocol (the method's
    ``tier_history`` entry for it, when it has one; the protocol file's own tier settings are the current ones).
    """
    from benchmark import registry

    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; valid tiers: {', '.join(TIERS)}")
    method_cls = registry.get("method", method)
    if dataset not in registry.names("dataset"):
        raise registry.unknown("dataset", dataset)
    proto = load_protocol(dataset, protocol)
    settings = tier_settings(proto, tier)
    overrides = method_cls.tier_overrides.get(tier, {})
    if protocol_version and protocol_version != proto["version"]:
        earlier = historical_overrides(method_cls.tier_history, tier, protocol_version)
        overrides = overrides if earlier is None else earlier
    base = RunConfig(
        method=method, dataset=dataset, method_cfg=method_cls.Config(), tier=tier, seed=seed, device=device,
        protocol=protocol,
    )
    layers = [
        _flatten(settings),
        {"eval.splits": tuple(proto["eval_splits"]), "eval.metrics": tuple(proto["metrics"])},
        {k.replace("method.", "method_cfg.", 1): v for k, v in overrides.items()},
        {k.replace("method.", "method_cfg.", 1): v for k, v in (sets or {}).items()},
    ]
    cfg = base
    for layer in layers:
        cfg = apply_overrides(cfg, layer)
    if cfg.eval.layout not in ("pred", "gt"):
        raise ValueError(f"--set eval.layout: expected 'pred' or 'gt', got {cfg.eval.layout!r}")
    return cfg
