"""Typed result records, one JSON file per run, and the leaderboard CSVs rebuilt from all of them.

Layout under :func:`benchmark.paths.results_dir`::

    runs/{method}__{dataset}__{tier}__s{seed}__{run_id}.json   # one per run, never overwritten
    leaderboard.csv                                            # derived: one row per run and evaluation
    leaderboard_mean_std.csv                                   # derived: runs grouped over seeds, mean and std
    reported.csv                                               # committed: published numbers, never ranked

Runs that use randomly initialised weights (``random_init``) are kept in ``runs/`` but never ranked.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from benchmark.env import environment as current_environment
from benchmark.io import atomic_write_json, atomic_write_text, file_lock, read_json
from benchmark.paths import REPO_ROOT
from benchmark.paths import results_dir as default_results_dir

if TYPE_CHECKING:
    from benchmark.interfaces import WeightProvenance

SCHEMA_VERSION = "1"
LAYOUTS = ("pred", "gt")
TIMINGS = ("train_s", "sample_s", "eval_s", "total_s")
TIER_ORDER = ("smoke", "quick", "full")
LEADERBOARD = "leaderboard.csv"
MAX_HISTORY = 200  # training-history points kept in a result
BASE_COLUMNS = (
    "method", "dataset", "tier", "split", "layout", "image_size", "protocol_version", "split_version", "seed",
    "num_graphs", "samples_per_graph", "n_real", "n_generated",
)  # fmt: skip
TAIL_COLUMNS = ("weights", "git_commit", "created", "run_id")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")  # safe in file names
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_log = logging.getLogger(__name__)


class SchemaError(ValueError):
    """A record that does not match the schema. Names the field (dotted path) and, when known, the file."""

    def __init__(self, field: str, reason: str, file: str | Path | None = None) -> None:
        self.field, self.reason, self.file = field, reason, file
        where = f"result file {file}: " if file is not None else ""
        super().__init__(f"{where}field {field!r}: {reason}")

    def under(self, prefix: str) -> SchemaError:
        """The same error, for a field nested under ``prefix``."""
        sep = "" if self.field.startswith("[") else "."
        return SchemaError(f"{prefix}{sep}{self.field}", self.reason, self.file)


# --- field checks -------------------------------------------------------------------------------------------


def _got(v: Any) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def _str(v: Any, name: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(v, str) or not v:
        raise SchemaError(name, f"expected a non-empty string, got {_got(v)}")
    if pattern is not None and not pattern.match(v):
        raise SchemaError(name, f"{v!r} does not match {pattern.pattern}")
    return v


def _int(v: Any, name: str, minimum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SchemaError(name, f"expected an integer, got {_got(v)}")
    if minimum is not None and v < minimum:
        raise SchemaError(name, f"expected an integer >= {minimum}, got {v}")
    return v


def _num(v: Any, name: str, minimum: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SchemaError(name, f"expected a number, got {_got(v)}")
    if not math.isfinite(v):
        raise SchemaError(name, f"expected a finite number, got {v}")
    if minimum is not None and v < minimum:
        raise SchemaError(name, f"expected a number >= {minimum}, got {v}")
    return float(v)


def _bool(v: Any, name: str) -> bool:
    if not isinstance(v, bool):
        raise SchemaError(name, f"expected true/false, got {_got(v)}")
    return v


def _mapping(v: Any, name: str) -> dict[str, Any]:
    if not isinstance(v, Mapping):
        raise SchemaError(name, f"expected an object, got {_got(v)}")
    for k in v:
        if not isinstance(k, str):
            raise SchemaError(name, f"expected string keys, got {_got(k)}")
    return dict(v)


def _list(v: Any, name: str) -> list[Any]:
    if not isinstance(v, (list, tuple)):
        raise SchemaError(name, f"expected a list, got {_got(v)}")
    return list(v)


def _jsonable(v: Any, name: str) -> None:
    try:
        json.dumps(v, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise SchemaError(name, f"not JSON-serialisable: {e}") from None


def _versioned(v: Any, name: str) -> dict[str, str]:
    d = _mapping(v, name)
    _fields(d, ("version", "sha256"), (), name)
    return {
        "version": _str(d["version"], f"{name}.version"),
        "sha256": _str(d["sha256"], f"{name}.sha256", _SHA256),
    }


def _fields(d: Mapping[str, Any], required: Sequence[str], optional: Sequence[str], prefix: str = "") -> None:
    """Fail on the first missing required field or on unknown fields."""
    join = (lambda k: f"{prefix}.{k}") if prefix else (lambda k: k)
    for k in required:
        if k not in d:
            raise SchemaError(join(k), "missing required field")
    unknown = sorted(set(d) - set(required) - set(optional))
    if unknown:
        raise SchemaError(join(unknown[0]), f"unknown field (schema version {SCHEMA_VERSION})")


def _history(v: Any, name: str) -> list[dict[str, float]]:
    """Training-loss history: at most MAX_HISTORY points ``{"step": int, <loss>: number, ...}``, steps increasing."""
    points = _list(v, name)
    if len(points) > MAX_HISTORY:
        raise SchemaError(
            name, f"at most {MAX_HISTORY} points (downsample with downsample_history), got {len(points)}"
        )
    out, last = [], -1
    for i, p in enumerate(points):
        p = _mapping(p, f"{name}[{i}]")
        step = _int(p.get("step"), f"{name}[{i}].step", 0)
        if step <= last:
            raise SchemaError(f"{name}[{i}].step", f"steps must increase, got {step} after {last}")
        last = step
        out.append({"step": step, **{k: _num(x, f"{name}[{i}].{k}") for k, x in p.items() if k != "step"}})
    return out


def downsample_history(history: Sequence[Mapping[str, float]], max_points: int = 0) -> list[dict[str, float]]:
    """At most ``max_points`` (default MAX_HISTORY) points, evenly spaced by index, first and last kept."""
    max_points = max_points or MAX_HISTORY
    n = len(history)
    keep = (
        range(n)
        if n <= max_points
        else sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})
    )
    return [dict(history[i]) for i in keep]


def _parse_created(v: Any, name: str = "created") -> datetime:
    s = _str(v, name)
    try:
        t = datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith("Z") else s)
    except ValueError:
        raise SchemaError(name, f"expected an ISO-8601 UTC timestamp, got {s!r}") from None
    if t.utcoffset() is None or t.utcoffset().total_seconds() != 0:
        raise SchemaError(name, f"expected a UTC timestamp (ending in Z or +00:00), got {s!r}")
    return t


def utc_now() -> str:
    """The current time as ISO-8601 UTC with milliseconds, e.g. ``2025-01-31T12:00:00.123Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_run_id(created: str | None = None) -> str:
    """A unique run id: the UTC timestamp plus 8 random hex digits, e.g. ``20250131T120000Z-1a2b3c4d``."""
    t = _parse_created(created or utc_now())
    return f"{t.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"


# --- records ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricValue:
    """One reported number. ``value`` is None only when unavailable, with the reason in ``unavailable``."""

    value: float | None
    higher_is_better: bool
    unavailable: str | None = None

    def __post_init__(self) -> None:
        _bool(self.higher_is_better, "higher_is_better")
        if self.value is None:
            if not isinstance(self.unavailable, str) or not self.unavailable.strip():
                raise SchemaError("unavailable", "a null value needs the reason it is unavailable")
        else:
            object.__setattr__(self, "value", _num(self.value, "value"))
            if self.unavailable is not None:
                raise SchemaError("unavailable", "must be null when a value is given")

    @classmethod
    def of(cls, value: float | None, higher_is_better: bool, unavailable: str | None = None) -> MetricValue:
        """Like the constructor, but a non-finite value becomes unavailable instead of an error."""
        if value is not None and not isinstance(value, bool) and isinstance(value, (int, float)):
            if not math.isfinite(value):
                return cls(None, higher_is_better, unavailable or f"non-finite value ({value})")
        return cls(value, higher_is_better, unavailable if value is None else None)

    def to_json(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "higher_is_better": self.higher_is_better,
            "unavailable": self.unavailable,
        }

    @classmethod
    def from_json(cls, d: Any) -> MetricValue:
        d = _mapping(d, "<metric>")
        _fields(d, ("value", "higher_is_better"), ("unavailable",))
        return cls(d["value"], d["higher_is_better"], d.get("unavailable"))


@dataclass(frozen=True)
class SplitEvaluation:
    """The metrics of one evaluation split under one layout source ("pred" or "gt")."""

    split: str
    layout: str
    num_graphs: int
    samples_per_graph: int
    n_real: int
    n_generated: int
    metrics: dict[str, MetricValue]
    time_s: float
    samples: str | None = None  # the generated images, relative to the run folder (optional)

    _REQUIRED: ClassVar[tuple[str, ...]] = (
        "split", "layout", "num_graphs", "samples_per_graph", "n_real", "n_generated", "metrics", "time_s",
    )  # fmt: skip

    def __post_init__(self) -> None:
        _str(self.split, "split", _NAME)
        if self.layout not in LAYOUTS:
            raise SchemaError("layout", f"expected one of {LAYOUTS}, got {_got(self.layout)}")
        _int(self.num_graphs, "num_graphs", 0)
        _int(self.samples_per_graph, "samples_per_graph", 1)
        _int(self.n_real, "n_real", 0)
        _int(self.n_generated, "n_generated", 0)
        metrics = _mapping(self.metrics, "metrics")
        for name, m in metrics.items():
            _str(name, "metrics")
            if not isinstance(m, MetricValue):
                raise SchemaError(f"metrics.{name}", f"expected a MetricValue, got {_got(m)}")
        object.__setattr__(self, "metrics", metrics)
        object.__setattr__(self, "time_s", _num(self.time_s, "time_s", 0.0))
        if self.samples is not None:
            _str(self.samples, "samples")
            if self.samples.startswith("/") or ".." in Path(self.samples).parts:
                raise SchemaError("samples", f"expected a path inside the run folder, got {_got(self.samples)}")

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self._REQUIRED}
        d["metrics"] = {k: m.to_json() for k, m in sorted(self.metrics.items())}
        if self.samples is not None:
            d["samples"] = self.samples
        return d

    @classmethod
    def from_json(cls, d: Any) -> SplitEvaluation:
        d = _mapping(d, "<evaluation>")
        _fields(d, cls._REQUIRED, ("samples",))
        metrics = {}
        for name, m in _mapping(d["metrics"], "metrics").items():
            try:
                metrics[name] = MetricValue.from_json(_mapping(m, name))
            except SchemaError as e:
                raise (e if e.field == name else e.under(name)).under("metrics") from None
        return cls(**{**d, "metrics": metrics})


def _weight_type() -> type[WeightProvenance]:
    """Imported on first use: ``benchmark.interfaces`` imports torch; reading and ranking results does not need it."""
    from benchmark.interfaces import WeightProvenance

    return WeightProvenance


def _weight_from_json(d: Any) -> WeightProvenance:
    d = _mapping(d, "<weight>")
    _fields(d, ("name", "source"), ("sha256", "random_init"))
    return _weight_type()(d["name"], d["source"], d.get("sha256"), d.get("random_init", False))


def _check_weight(w: Any, name: str) -> None:
    if not isinstance(w, _weight_type()):
        raise SchemaError(name, f"expected a WeightProvenance, got {_got(w)}")
    _str(w.name, f"{name}.name")
    _str(w.source, f"{name}.source")
    if w.sha256 is not None:
        _str(w.sha256, f"{name}.sha256")
    _bool(w.random_init, f"{name}.random_init")


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """Everything one run produced and what it was produced with. ``run_id``/``created`` default to now.

    ``random_init`` is forced True when any weight is randomly initialised; such runs are never ranked.
    """

    schema_version: str = SCHEMA_VERSION
    run_id: str = ""
    created: str = ""
    method: str
    dataset: str
    tier: str
    seed: int
    image_size: int
    protocol: dict[str, str]
    splits: dict[str, dict[str, str]]
    config: dict[str, Any]
    evaluations: list[SplitEvaluation]
    weights: list[WeightProvenance] = field(default_factory=list)
    random_init: bool = False
    checkpoint: dict[str, str] | None = None
    environment: dict[str, Any] = field(default_factory=current_environment)
    timings: dict[str, float]
    train_history: list[dict[str, float]] | None = None  # training losses, <= MAX_HISTORY points
    imported: dict[str, Any] | None = None  # weights converted from a release: {kind, source, source_sha256, ...}

    _REQUIRED: ClassVar[tuple[str, ...]] = (
        "schema_version", "run_id", "created", "method", "dataset", "tier", "seed", "image_size", "protocol",
        "splits", "config", "evaluations", "weights", "random_init", "checkpoint", "environment", "timings",
    )  # fmt: skip

    def __post_init__(self) -> None:
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        if self.schema_version != SCHEMA_VERSION:
            raise SchemaError(
                "schema_version", f"unsupported {self.schema_version!r}; expected {SCHEMA_VERSION!r}"
            )
        if not self.created:
            put("created", utc_now())
        _parse_created(self.created)
        if not self.run_id:
            put("run_id", new_run_id(self.created))
        _str(self.run_id, "run_id", _NAME)
        for k in ("method", "dataset", "tier"):
            _str(getattr(self, k), k, _NAME)
        _int(self.seed, "seed")
        _int(self.image_size, "image_size", 1)
        put("protocol", _versioned(self.protocol, "protocol"))
        splits = _mapping(self.splits, "splits")
        put("splits", {_str(s, "splits", _NAME): _versioned(v, f"splits.{s}") for s, v in splits.items()})
        put("config", _mapping(self.config, "config"))
        _jsonable(self.config, "config")
        evals = _list(self.evaluations, "evaluations")
        seen = set()
        for i, ev in enumerate(evals):
            if not isinstance(ev, SplitEvaluation):
                raise SchemaError(f"evaluations[{i}]", f"expected a SplitEvaluation, got {_got(ev)}")
            if ev.split not in self.splits:
                raise SchemaError(f"evaluations[{i}].split", f"split {ev.split!r} is not listed in 'splits'")
            if (ev.split, ev.layout) in seen:
                raise SchemaError(f"evaluations[{i}]", f"duplicate evaluation of {ev.split!r}/{ev.layout!r}")
            seen.add((ev.split, ev.layout))
        put("evaluations", evals)
        weights = _list(self.weights, "weights")
        for i, w in enumerate(weights):
            _check_weight(w, f"weights[{i}]")
        put("weights", weights)
        _bool(self.random_init, "random_init")
        if any(w.random_init for w in weights):
            put("random_init", True)
        if self.checkpoint is not None:
            ck = _mapping(self.checkpoint, "checkpoint")
            _fields(ck, ("path", "sha256"), ("tensors_sha256",), "checkpoint")
            _str(ck["path"], "checkpoint.path")
            _str(ck["sha256"], "checkpoint.sha256", _SHA256)
            if "tensors_sha256" in ck:
                _str(ck["tensors_sha256"], "checkpoint.tensors_sha256", _SHA256)
            put("checkpoint", ck)
        put("environment", _mapping(self.environment, "environment"))
        _jsonable(self.environment, "environment")
        timings = _mapping(self.timings, "timings")
        _fields(timings, TIMINGS, [k for k in timings if k not in TIMINGS], "timings")
        put("timings", {k: _num(v, f"timings.{k}", 0.0) for k, v in timings.items()})
        if self.train_history is not None:
            put("train_history", _history(self.train_history, "train_history"))
        if self.imported is not None:
            imp = _mapping(self.imported, "imported")
            _jsonable(imp, "imported")
            _str(imp.get("kind"), "imported.kind")
            _str(imp.get("source_sha256"), "imported.source_sha256", _SHA256)
            put("imported", imp)

    @property
    def filename(self) -> str:
        return f"{self.method}__{self.dataset}__{self.tier}__s{self.seed}__{self.run_id}.json"

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in self._REQUIRED}
        d["evaluations"] = [ev.to_json() for ev in self.evaluations]
        d["weights"] = [asdict(w) for w in self.weights]
        if self.train_history is not None:
            d["train_history"] = self.train_history
        if self.imported is not None:
            d["imported"] = self.imported
        return d

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | str | Path) -> RunResult:
        """Validate and build from a JSON object, or from a file path (errors then name the file)."""
        if isinstance(obj, (str, Path)):
            return load_result(obj)
        d = _mapping(obj, "<result>")
        _fields(d, cls._REQUIRED, ("train_history", "imported"))
        _str(d["run_id"], "run_id")  # only construction in code may leave these to default
        _str(d["created"], "created")
        evals = []
        for i, ev in enumerate(_list(d["evaluations"], "evaluations")):
            try:
                evals.append(SplitEvaluation.from_json(_mapping(ev, f"evaluations[{i}]")))
            except SchemaError as e:
                raise (e if e.field.startswith("evaluations[") else e.under(f"evaluations[{i}]")) from None
        weights = []
        for i, w in enumerate(_list(d["weights"], "weights")):
            try:
                weights.append(_weight_from_json(_mapping(w, f"weights[{i}]")))
            except SchemaError as e:
                raise (e if e.field.startswith("weights[") else e.under(f"weights[{i}]")) from None
        return cls(**{**d, "evaluations": evals, "weights": weights})


def load_result(path: str | Path) -> RunResult:
    """Read and validate one run file; a ``ValueError`` names the file and the offending field."""
    path = Path(path)
    try:
        data = read_json(path, "result file")
        return RunResult.from_json(data)
    except SchemaError as e:
        raise SchemaError(e.field, e.reason, path) from None


def write_result(result: RunResult, results_dir: str | Path | None = None) -> Path:
    """Write ``runs/<result.filename>`` atomically; never replaces an existing run file."""
    path = Path(results_dir or default_results_dir()) / "runs" / result.filename
    if path.exists():
        raise FileExistsError(f"result file {path} already exists (run ids must be unique)")
    atomic_write_json(path, result.to_json())
    return path


# --- leaderboard --------------------------------------------------------------------------------------------


def _fmt(v: float | None) -> str:
    return "" if v is None else repr(v)


def weights_summary(weights: Sequence[WeightProvenance]) -> str:
    """``name=source@sha256[:12]`` for each weight, joined by ``; ``."""
    return "; ".join(f"{w.name}={w.source}" + (f"@{w.sha256[:12]}" if w.sha256 else "") for w in weights)


def _sort_key(r: RunResult, ev: SplitEvaluation) -> tuple[Any, ...]:
    tier = TIER_ORDER.index(r.tier) if r.tier in TIER_ORDER else len(TIER_ORDER)
    return (
        r.dataset,
        ev.split,
        tier,
        r.tier,
        r.method,
        r.seed,
        _parse_created(r.created),
        r.run_id,
        ev.layout,
    )


def scan_runs(results_dir: str | Path | None = None) -> tuple[list[RunResult], list[tuple[Path, str]]]:
    """All valid run records under ``runs/``, and (file, error) for each malformed one (warned, skipped)."""
    runs_dir = Path(results_dir or default_results_dir()) / "runs"
    good, bad = [], []
    for path in sorted(runs_dir.glob("*.json")) if runs_dir.is_dir() else []:
        if path.name.startswith("."):
            continue
        try:
            good.append(load_result(path))
        except Exception as e:  # never let one bad file abort the rebuild
            warnings.warn(f"skipping malformed result file {path.name}: {e}", stacklevel=2)
            bad.append((path, str(e)))
    return good, bad


def rebuild_leaderboard(
    results_dir: str | Path | None = None, *, echo: Callable[[str], None] | None = None
) -> Path:
    """Rewrite ``leaderboard.csv`` from every run file, under the leaderboard lock; returns its path.

    ``echo`` (default: the module logger) receives a one-line summary, including the random-init exclusions.
    """
    root = Path(results_dir or default_results_dir())
    out = root / LEADERBOARD
    echo = echo or _log.info
    with file_lock(root / ".leaderboard.lock"):
        runs, bad = scan_runs(root)
        ranked = [r for r in runs if not r.random_init]
        excluded = [r for r in runs if r.random_init]
        metric_cols = sorted(
            {
                (name, m.higher_is_better)
                for r in ranked
                for ev in r.evaluations
                for name, m in ev.metrics.items()
            }
        )
        header = [
            *BASE_COLUMNS,
            *(f"{n} ({'higher' if hib else 'lower'})" for n, hib in metric_cols),
            *TAIL_COLUMNS,
        ]
        rows = []
        for r, ev in sorted(
            ((run, ev) for run in ranked for ev in run.evaluations), key=lambda x: _sort_key(*x)
        ):
            metrics = [
                _fmt(m.value) if (m := ev.metrics.get(n)) is not None and m.higher_is_better == hib else ""
                for n, hib in metric_cols
            ]
            rows.append([
                r.method, r.dataset, r.tier, ev.split, ev.layout, r.image_size, r.protocol["version"],
                r.splits[ev.split]["version"], r.seed, ev.num_graphs, ev.samples_per_graph, ev.n_real,
                ev.n_generated, *metrics, weights_summary(r.weights),
                str(r.environment.get("git_commit", "unknown"))[:12], r.created, r.run_id,
            ])  # fmt: skip
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        atomic_write_text(out, buf.getvalue())
        groups = group_runs(ranked)
        atomic_write_text(root / LEADERBOARD_MEAN_STD, mean_std_csv(groups))
    msg = f"leaderboard {out}: {len(rows)} row(s) from {len(ranked)} run(s)"
    msg += f"; {root / LEADERBOARD_MEAN_STD}: {len(groups)} row(s), mean and std over seeds"
    if excluded:
        ids = ", ".join(f"{r.run_id} ({weights_summary([w for w in r.weights if w.random_init]) or 'flagged'})"
                        for r in excluded)  # fmt: skip
        msg += f"; excluded {len(excluded)} run(s) with randomly initialised weights (never ranked): {ids}"
    if bad:
        msg += f"; skipped {len(bad)} malformed file(s): {', '.join(p.name for p, _ in bad)}"
    echo(msg)
    return out


def _sig4(cell: str) -> str:
    """A metric cell to 4 significant digits (unchanged if not a finite number)."""
    try:
        v = float(cell)
    except ValueError:
        return cell
    return f"{v:.4g}" if math.isfinite(v) else cell


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def format_leaderboard(path: str | Path | None = None, columns: Sequence[str] | None = None) -> str:
    """The leaderboard CSV as an aligned text table: metrics to 4 significant digits, numbers right-aligned."""
    path = Path(path) if path is not None else default_results_dir() / LEADERBOARD
    with open(path, newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    if not table:
        return "(empty leaderboard)"
    header, body = table[0], table[1:]
    keep = list(range(len(header))) if columns is None else [header.index(c) for c in columns if c in header]
    header = [header[i] for i in keep]
    is_metric = [h.endswith((" (higher)", " (lower)")) for h in header]
    cells = [[row[i] if i < len(row) else "" for i in keep] for row in body]
    cells = [[_sig4(c) if m else c for c, m in zip(row, is_metric)] for row in cells]
    numeric = [
        m or h in BASE_COLUMNS and all(r[j] == "" or _is_number(r[j]) for r in cells)
        for j, (h, m) in enumerate(zip(header, is_metric))
    ]
    widths = [max([len(h)] + [len(r[j]) for r in cells]) for j, h in enumerate(header)]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric)).rstrip()

    lines = [line(header), "  ".join("-" * w for w in widths)]
    lines += [line(r) for r in cells] if cells else ["(no ranked results)"]
    return "\n".join(lines)


# --- mean and std over seeds --------------------------------------------------------------------------------

LEADERBOARD_MEAN_STD = "leaderboard_mean_std.csv"
REPORTED = "reported.csv"
# Config fields that cannot change the numbers of one split and metric; they are left out of the group key.
GROUP_IGNORED = frozenset(
    (
        "seed",
        "device",
        "train.num_workers",
        "train.log_every",
        "train.checkpoint_every",
        "eval.splits",
        "eval.metrics",
    )
)
GROUP_COLUMNS = (
    "method", "variant", "dataset", "tier", "split", "layout", "image_size", "protocol_version", "split_version",
    "n_seeds", "seeds", "num_graphs", "samples_per_graph", "n_real", "n_generated", "metric_mode",
)  # fmt: skip
GROUP_TAIL = ("sample_s_per_image", "weights", "git_commit", "config_id", "run_ids", "notes")


def flatten_config(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"eval": {"layout": "gt"}}`` -> ``{"eval.layout": "gt"}`` (lists become tuples, so values hash)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


@dataclass(frozen=True)
class Stats:
    """Mean and sample standard deviation (``n - 1`` denominator) of the ``n`` available values.

    ``std`` is None for fewer than two values: one seed has no spread, and 0 would claim one.
    """

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        n = len(values)
        if n == 0:
            return cls(None, None, 0)
        mean = math.fsum(values) / n
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
        return cls(mean, std, n)


@dataclass(frozen=True)
class SeedGroup:
    """The runs of one configuration that differ only in the seed, for one split and layout.

    Key: (method, dataset, tier, split, layout, image size, protocol version and sha256, split version, the
    flattened config without :data:`GROUP_IGNORED`). A seed evaluated more than once counts once (its latest
    result). ``metrics[name]`` are the :class:`Stats` over seeds; ``higher[name]`` the metric's direction.
    """

    method: str
    dataset: str
    tier: str
    split: str
    layout: str
    image_size: int
    protocol_version: str
    split_version: str
    config: dict[str, Any]
    runs: tuple[RunResult, ...]
    evaluations: tuple[SplitEvaluation, ...]
    metrics: dict[str, Stats]
    higher: dict[str, bool]
    unavailable: dict[str, str]
    variant: str = ""
    notes: str = ""

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(r.seed for r in self.runs)

    @property
    def config_id(self) -> str:
        """The first 10 hex digits of the SHA-256 of the group's config (seed and device left out)."""
        import hashlib

        return hashlib.sha256(json.dumps(sorted(self.config.items()), default=str).encode()).hexdigest()[:10]

    def _same(self, attr: str) -> int | str:
        vals = sorted({getattr(ev, attr) for ev in self.evaluations})
        return vals[0] if len(vals) == 1 else "/".join(map(str, vals))

    @property
    def num_graphs(self) -> int | str:
        return self._same("num_graphs")

    @property
    def samples_per_graph(self) -> int | str:
        return self._same("samples_per_graph")

    @property
    def n_real(self) -> int | str:
        return self._same("n_real")

    @property
    def n_generated(self) -> int | str:
        return self._same("n_generated")

    @property
    def sample_s_per_image(self) -> Stats:
        """Sampling seconds per generated image of each run: ``timings.sample_s`` / images over all its splits."""
        per = []
        for r in self.runs:
            n = sum(ev.n_generated for ev in r.evaluations)
            if n:
                per.append(r.timings["sample_s"] / n)
        return Stats.of(per)

    @property
    def git_commits(self) -> tuple[str, ...]:
        return tuple(sorted({str(r.environment.get("git_commit", "unknown"))[:12] for r in self.runs}))

    @property
    def metric_impl(self) -> str:
        """Each metric's implementation note from the registry, e.g. ``fid: clean-fid, clean mode, ...``."""
        modes = metric_modes()
        return "; ".join(
            f"{m}: {modes[k]}" for m in sorted(self.metrics) if (k := metric_entry(m, modes)) and modes[k]
        )

    @property
    def metric_mode(self) -> str:
        """How the numbers were measured: N real vs N generated, resolution, and each metric's implementation."""
        n, spg, px = self.n_generated, self.samples_per_graph, self.image_size
        return "; ".join(
            filter(None, [f"{self.n_real} real vs {n} generated ({spg}/graph), {px} px", self.metric_impl])
        )


def metric_modes() -> dict[str, str]:
    """Registered metric -> its implementation note: the first top-level parenthesis of its registry summary
    (e.g. ``clean-fid, clean mode, TF Inception pool3``), else the summary's first clause."""
    from benchmark import registry

    out = {}
    for name, entry in registry.entries()["metric"].items():
        text, depth, start, note = entry.summary, 0, -1, ""
        for i, ch in enumerate(text):
            if ch == "(":
                depth += 1
                start = i if depth == 1 else start
            elif ch == ")" and depth:
                depth -= 1
                if depth == 0:
                    note = text[start + 1 : i]
                    break
        out[name] = note or text.split(";")[0].rstrip(".")
    return out


def metric_entry(key: str, modes: Mapping[str, str]) -> str | None:
    """The registered metric that produced output ``key``: the same name, else the longest name that prefixes it
    up to a separator (``box_recall`` for ``box_recall_0.5`` or ``box_recall@0.5``)."""
    if key in modes:
        return key
    hits = [n for n in modes if key.startswith(n) and not key[len(n)].isalnum()]
    if hits:
        return max(hits, key=len)
    from benchmark import registry  # outputs named apart from their metric (``is``): the parsed ``outputs``

    return next((n for n, e in registry.entries()["metric"].items() if n in modes and key in e.outputs), None)


def _fmt_value(v: Any) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, str) else v
    return text if len(text) <= 40 else text[:37] + "..."


def group_runs(runs: Sequence[RunResult]) -> list[SeedGroup]:
    """Group evaluations over seeds (see :class:`SeedGroup`); random-init runs are never grouped (never ranked)."""
    buckets: dict[tuple[Any, ...], dict[int, list[tuple[RunResult, SplitEvaluation]]]] = {}
    for r in runs:
        if r.random_init:
            continue
        cfg = {k: v for k, v in flatten_config(r.config).items() if k not in GROUP_IGNORED}
        for ev in r.evaluations:
            key = (
                r.method, r.dataset, r.tier, ev.split, ev.layout, r.image_size, r.protocol["version"],
                r.protocol["sha256"], r.splits[ev.split]["version"], tuple(sorted(cfg.items(), key=lambda kv: kv[0])),
            )  # fmt: skip
            buckets.setdefault(key, {}).setdefault(r.seed, []).append((r, ev))
    groups = []
    for key, by_seed in buckets.items():
        chosen, notes = [], []
        for seed in sorted(by_seed):
            tries = sorted(by_seed[seed], key=lambda x: (_parse_created(x[0].created), x[0].run_id))
            chosen.append(tries[-1])
            if len(tries) > 1:
                notes.append(f"seed {seed}: {len(tries)} results, latest {tries[-1][0].run_id} used")
        names = sorted({n for _, ev in chosen for n in ev.metrics})
        metrics, higher, unavailable = {}, {}, {}
        for n in names:
            vals = [ev.metrics[n] for _, ev in chosen if n in ev.metrics]
            higher[n] = vals[0].higher_is_better
            metrics[n] = Stats.of([m.value for m in vals if m.value is not None])
            reasons = sorted({m.unavailable for m in vals if m.value is None and m.unavailable})
            if reasons:
                unavailable[n] = "; ".join(reasons)
            if 0 < metrics[n].n < len(chosen):
                notes.append(f"{n}: {metrics[n].n} of {len(chosen)} seeds")
        method, dataset, tier, split, layout, size, pv, _, sv, cfg = key
        groups.append(SeedGroup(
            method, dataset, tier, split, layout, size, pv, sv, dict(cfg), tuple(r for r, _ in chosen),
            tuple(ev for _, ev in chosen), metrics, higher, unavailable, notes="; ".join(notes),
        ))  # fmt: skip
    groups = _with_variants(groups)
    return sorted(groups, key=_group_sort_key)


def _with_variants(groups: list[SeedGroup]) -> list[SeedGroup]:
    """Label groups that share method, dataset, tier, split, layout and size by the config fields that differ."""
    from dataclasses import replace

    same: dict[tuple[Any, ...], list[int]] = {}
    for i, g in enumerate(groups):
        same.setdefault(
            (g.method, g.dataset, g.tier, g.split, g.layout, g.image_size, g.protocol_version), []
        ).append(i)
    out = list(groups)
    for idx in same.values():
        if len(idx) < 2:
            continue
        keys = sorted({k for i in idx for k in groups[i].config})
        differ = [k for k in keys if len({json.dumps(groups[i].config.get(k), default=str) for i in idx}) > 1]
        for i in idx:
            label = ", ".join(
                f"{k.replace('method_cfg.', 'method.', 1)}={_fmt_value(groups[i].config.get(k))}"
                for k in differ
            )
            out[i] = replace(groups[i], variant=label)
    return out


def _group_sort_key(g: SeedGroup) -> tuple[Any, ...]:
    tier = TIER_ORDER.index(g.tier) if g.tier in TIER_ORDER else len(TIER_ORDER)
    return (g.dataset, g.split, tier, g.tier, g.method, g.layout, g.image_size, g.variant)


def metric_columns(groups: Sequence[SeedGroup]) -> list[tuple[str, bool]]:
    """(metric, higher_is_better) over all groups, sorted by name: the metric list comes from the results."""
    return sorted({(n, g.higher[n]) for g in groups for n in g.metrics})


def _cell(v: float | None) -> str:
    return "" if v is None else repr(v)


def mean_std_csv(groups: Sequence[SeedGroup]) -> str:
    """The seed-grouped leaderboard as CSV text: per metric ``<name> mean (higher|lower)`` and ``<name> std``."""
    cols = metric_columns(groups)
    header = [*GROUP_COLUMNS]
    for n, hib in cols:
        header += [f"{n} mean ({'higher' if hib else 'lower'})", f"{n} std"]
    header += GROUP_TAIL
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for g in groups:
        vals = []
        for n, hib in cols:
            s = g.metrics.get(n) if g.higher.get(n) == hib else None
            vals += [_cell(s.mean), _cell(s.std)] if s is not None else ["", ""]
        t = g.sample_s_per_image
        w.writerow([
            g.method, g.variant, g.dataset, g.tier, g.split, g.layout, g.image_size, g.protocol_version,
            g.split_version, len(g.runs), " ".join(map(str, g.seeds)), g.num_graphs, g.samples_per_graph, g.n_real,
            g.n_generated, g.metric_mode, *vals, _cell(t.mean), weights_summary(_unique_weights(g.runs)),
            " ".join(g.git_commits), g.config_id, " ".join(r.run_id for r in g.runs), g.notes,
        ])  # fmt: skip
    return buf.getvalue()


def _unique_weights(runs: Sequence[RunResult]) -> list[WeightProvenance]:
    out: list[WeightProvenance] = []
    for r in runs:
        out += [w for w in r.weights if w not in out]
    return out


def fmt_mean_std(mean: float | None, std: float | None, digits: int = 4) -> str:
    """``12.35 ± 0.2146`` (4 significant digits); ``12.35 ± -`` for one seed; ``-`` when unavailable."""
    if mean is None:
        return "-"
    return f"{mean:.{digits}g} ± {'-' if std is None else f'{std:.{digits}g}'}"


def _aligned(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    widths = [max([len(h)] + [len(r[j]) for r in rows]) for j, h in enumerate(header)]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if rt else c.ljust(w) for c, w, rt in zip(row, widths, right)).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def format_mean_std(path: str | Path | None = None) -> str:
    """``leaderboard_mean_std.csv`` as an aligned text table: one ``mean ± std`` cell per metric."""
    path = Path(path) if path is not None else default_results_dir() / LEADERBOARD_MEAN_STD
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
        fields = list(rows[0].keys()) if rows else []
    mean_cols = [re.fullmatch(r"(.+) mean \((higher|lower)\)", c) for c in fields]
    metrics = [(m.group(1), m.group(2)) for m in mean_cols if m]
    base = ["method", "variant", "dataset", "tier", "split", "layout", "image_size", "protocol_version", "seeds",
            "n_real", "n_generated"]  # fmt: skip
    if rows and not any(r["variant"] for r in rows):
        base.remove("variant")
    body = []
    for r in rows:
        cells = [r[c] for c in base]
        for name, direction in metrics:
            mean, std = r[f"{name} mean ({direction})"], r[f"{name} std"]
            cells.append(fmt_mean_std(float(mean) if mean else None, float(std) if std else None))
        body.append(cells)
    if not body:
        return "(no ranked results)"
    header = [*base, *(f"{n} ({d})" for n, d in metrics)]
    right = [c in ("image_size", "n_real", "n_generated") for c in base] + [True] * len(metrics)
    return _aligned(header, body, right)


# --- published numbers (reported, never ranked with the reproduced rows) ------------------------------------

REPORTED_COLUMNS = (
    "method", "dataset", "resolution", "layout", "protocol", "n_real", "n_generated", "metric", "value", "std",
    "direction", "metric_mode", "source", "provenance", "unverified", "notes",
)  # fmt: skip


def reported_path(results_dir: str | Path | None = None) -> Path:
    """``reported.csv`` of the results folder, else the one committed in the checkout's ``results/``."""
    p = Path(results_dir or default_results_dir()) / REPORTED
    return p if p.is_file() else REPO_ROOT / "results" / REPORTED


def load_reported(path: str | Path | None = None) -> list[dict[str, str]]:
    """Rows of ``reported.csv``, checked: every column present, ``value`` (and ``std``) numbers, ``direction``
    higher/lower, ``unverified`` yes/no. A bad cell stops with the file, the row number and the field."""
    path = Path(path) if path is not None else reported_path()
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REPORTED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"published-numbers file {path}: field {missing[0]!r}: missing column")
        rows = list(reader)

    def bad(i: int, col: str, reason: str) -> ValueError:
        return ValueError(f"published-numbers file {path}: row {i}, field {col!r}: {reason}")

    for i, row in enumerate(rows, start=2):
        for col in ("value", "std", "n_real", "n_generated"):
            cell = row[col].strip()
            if (col == "value" or cell) and not (_is_number(cell) and math.isfinite(float(cell))):
                raise bad(i, col, f"expected a number, got {cell!r}")
        if row["direction"] not in ("higher", "lower"):
            raise bad(i, "direction", f"expected higher or lower, got {row['direction']!r}")
        if row["unverified"] not in ("yes", "no"):
            raise bad(i, "unverified", f"expected yes or no, got {row['unverified']!r}")
        for col in ("method", "dataset", "metric", "source", "provenance"):
            if not row[col].strip():
                raise bad(i, col, "must not be empty")
    return rows


def format_reported(rows: Sequence[Mapping[str, str]]) -> str:
    """Published numbers as an aligned text table (unverified ones flagged with ``?``)."""
    if not rows:
        return "(no reported numbers)"
    header = ["dataset", "resolution", "layout", "method", "metric", "value", "protocol", "source"]
    body = []
    for r in rows:
        value = (
            r["value"] + (f" ± {r['std']}" if r["std"] else "") + (" ?" if r["unverified"] == "yes" else "")
        )
        body.append([r["dataset"], r["resolution"], r["layout"], r["method"], r["metric"], value,
                     r["protocol"][:40], f"{r['source']} {r['provenance']}"[:60]])  # fmt: skip
    return _aligned(header, body, [False, True, False, False, False, True, False, False])
