"""The typed result schema: one JSON file per run, validated by pydantic (strict types, unknown fields refused).

A run file holds a :class:`RunResult`; each evaluated split and layout a :class:`SplitEvaluation`; each reported
number a :class:`MetricValue`, which records what produced it (the registered metric and its declared
implementation ``mode``), so that a leaderboard row describes what the run used, not today's source.

Every validation error becomes one :class:`SchemaError` naming the file and the field (dotted path).

Schema versions: ``2`` (written now) adds ``metric`` and ``mode`` to each metric value and the run's
``config_changes`` (its config fields that differ from the tier's defaults). Version ``1`` files are still
read: :func:`load_result` fills ``metric``/``mode`` from the metric registry of the checkout (the decorator's
declared ``mode``; parsed, not imported), and ``config_changes`` is computed against today's tier defaults
when the run is grouped: the documented fallbacks for results written before the facts were recorded.

Run flags: a top-level field listed in :data:`RUN_FLAGS` keeps a run off the ranking when set (true or non-empty; it is still
written, listed and shown with its flag). Add a flag by adding the field to :class:`RunResult` and its name
to :data:`RUN_FLAGS`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import NotRequired, TypedDict

from benchmark.env import environment as current_environment
from benchmark.io import atomic_write_json, new_run_id, parse_utc, read_json, utc_now
from benchmark.paths import results_dir as default_results_dir

SCHEMA_VERSION = "2"
READABLE_SCHEMAS = ("1", "2")
LAYOUTS = ("pred", "gt")
TIMINGS = ("train_s", "sample_s", "eval_s", "total_s")
MAX_HISTORY = 200  # training-history points kept in a result
RUN_FLAGS = ("random_init", "partial_data")  # boolean RunResult fields that keep a run off the ranking

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"  # safe in file names
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class SchemaError(ValueError):
    """A record that does not match the schema. Names the field (dotted path) and, when known, the file."""

    def __init__(self, field: str, reason: str, file: str | Path | None = None) -> None:
        self.field, self.reason, self.file = field, reason, file
        where = f"result file {file}: " if file is not None else ""
        super().__init__(f"{where}field {field!r}: {reason}")


def _fail(reason: str, field: str = "") -> PydanticCustomError:
    """An error raised inside a validator; ``field`` (dotted) is appended to the location pydantic knows."""
    return PydanticCustomError("schema", reason.replace("{", "(").replace("}", ")"), {"field": field})


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def schema_error(e: ValidationError, file: str | Path | None = None) -> SchemaError:
    """The first error of a pydantic ``ValidationError`` as one :class:`SchemaError` (field path and reason)."""
    err = e.errors(include_url=False)[0]
    loc = list(err["loc"])
    ctx = err.get("ctx") or {}
    inner = ctx.get("error")
    if isinstance(inner, SchemaError):  # raised by a nested record's constructor (see Record.__init__)
        field = ".".join(filter(None, [_dotted(loc), inner.field])).replace(".[", "[")
        return SchemaError(field, inner.reason, file)
    field = ".".join(filter(None, [_dotted(loc), ctx.get("field", "")])).replace(".[", "[") or "<record>"
    reason = err["msg"]
    if err["type"] == "missing":
        reason = "missing required field"
    elif err["type"] == "extra_forbidden":
        reason = f"unknown field (schema version {SCHEMA_VERSION})"
    elif "input" in err and err["type"] != "schema":
        text = repr(err["input"])
        reason += f", got {type(err['input']).__name__} {text[:40] + '...' if len(text) > 40 else text}"
    return SchemaError(field, reason, file)


class Record(BaseModel):
    """Frozen, strict, no unknown fields; construction errors are :class:`SchemaError` (the one helper)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")
    _positional: ClassVar[tuple[str, ...]] = ()  # fields that may be given positionally, in this order

    def __init__(self, *args: Any, **data: Any) -> None:
        # pydantic also calls this for nested records; schema_error unwraps the nested SchemaError.
        try:
            super().__init__(**dict(zip(self._positional, args)), **data)
        except ValidationError as e:
            raise schema_error(e) from None

    @classmethod
    def parse(cls, data: Any, file: str | Path | None = None) -> Any:
        """Validate a JSON object (errors name ``file`` when given)."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise schema_error(e, file) from None


def _finite(v: float, what: str = "") -> float:
    if not math.isfinite(v):
        raise _fail(f"expected a finite number, got {v}", what)
    return v


class MetricValue(Record):
    """One reported number. ``value`` is None only when unavailable, with the reason in ``unavailable``.

    ``metric``: the registered metric that produced it; ``mode``: that metric's declared implementation.
    """

    value: float | None
    higher_is_better: bool
    unavailable: str | None = None
    metric: str | None = None
    mode: str | None = None

    _positional = ("value", "higher_is_better", "unavailable", "metric", "mode")

    @field_validator("value")
    @classmethod
    def _value(cls, v: float | None) -> float | None:
        return None if v is None else _finite(float(v))

    @model_validator(mode="after")
    def _unavailable(self) -> MetricValue:
        if self.value is None and not (self.unavailable and self.unavailable.strip()):
            raise _fail("a null value needs the reason it is unavailable", "unavailable")
        if self.value is not None and self.unavailable is not None:
            raise _fail("must be null when a value is given", "unavailable")
        return self

    @classmethod
    def of(
        cls, value: float | None, higher_is_better: bool, unavailable: str | None = None, **facts: str | None
    ) -> MetricValue:
        """Like the constructor, but a non-finite value becomes unavailable instead of an error."""
        if value is not None and not isinstance(value, bool) and isinstance(value, (int, float)):
            if not math.isfinite(value):
                return cls(None, higher_is_better, unavailable or f"non-finite value ({value})", **facts)
        return cls(value, higher_is_better, unavailable if value is None else None, **facts)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_json(cls, d: Any) -> MetricValue:
        return cls.parse(d)


class SplitEvaluation(Record):
    """The metrics of one evaluation split under one layout source ("pred" or "gt")."""

    split: str = Field(pattern=NAME_PATTERN)
    layout: Literal["pred", "gt"]
    num_graphs: int = Field(ge=0)
    samples_per_graph: int = Field(ge=1)
    n_real: int = Field(ge=0)
    n_generated: int = Field(ge=0)
    metrics: dict[str, MetricValue]
    time_s: float = Field(ge=0)
    samples: str | None = None  # the generated images, relative to the run folder (optional)

    _positional = ("split", "layout", "num_graphs", "samples_per_graph", "n_real", "n_generated", "metrics", "time_s")

    @field_validator("samples")
    @classmethod
    def _samples(cls, v: str | None) -> str | None:
        if v is not None and (not v or v.startswith("/") or ".." in Path(v).parts):
            raise _fail(f"expected a path inside the run folder, got {v!r}")
        return v

    def to_json(self) -> dict[str, Any]:
        d = self.model_dump(exclude={"samples"} if self.samples is None else set())
        d["metrics"] = {k: m.to_json() for k, m in sorted(self.metrics.items())}
        return d

    @classmethod
    def from_json(cls, d: Any) -> SplitEvaluation:
        return cls.parse(d)


class Weight(Record):
    """Where a set of weights came from (the record of :class:`benchmark.interfaces.WeightProvenance`)."""

    name: str = Field(min_length=1)
    source: str = Field(min_length=1)
    sha256: str | None = None
    random_init: bool = False


class Versioned(TypedDict):
    """``{"version": ..., "sha256": ...}`` of a protocol or split file (a plain dict in the record)."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    version: Annotated[str, Field(min_length=1)]
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN)]


class Stage(TypedDict):
    """One training stage of a method's plan (``Method.stage_plan``): ``{"name": ..., "steps": ...}``."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    steps: Annotated[int, Field(ge=0)]


class CheckpointRef(TypedDict):
    """``{"path": ..., "sha256": ..., "tensors_sha256": ...}`` of the evaluated checkpoint (a plain dict in the record)."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    path: Annotated[str, Field(min_length=1)]
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN)]
    tensors_sha256: NotRequired[Annotated[str, Field(pattern=SHA256_PATTERN)]]  # the tensors' digest (format 2)


def _jsonable(v: Any) -> Any:
    try:
        json.dumps(v, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise _fail(f"not JSON-serialisable: {e}") from None
    return v


class RunResult(Record):
    """Everything one run produced and what it was produced with. ``run_id``/``created`` default to now.

    ``random_init`` is forced True when any weight is randomly initialised; flagged runs (:data:`RUN_FLAGS`)
    are never ranked.
    """

    schema_version: Literal["1", "2"] = SCHEMA_VERSION
    run_id: str = Field(pattern=NAME_PATTERN)
    created: str
    method: str = Field(pattern=NAME_PATTERN)
    dataset: str = Field(pattern=NAME_PATTERN)
    tier: str = Field(pattern=NAME_PATTERN)
    seed: int
    image_size: int = Field(ge=1)
    protocol: Versioned
    splits: dict[str, Versioned]
    config: dict[str, Any]
    # Flattened config fields that differ from the tier's defaults, recorded at run time
    # (benchmark.results.metadata.config_changes); None when not recorded (schema 1): computed when grouped.
    config_changes: dict[str, Any] | None = None
    evaluations: list[SplitEvaluation]
    weights: list[Weight] = Field(default_factory=list)
    random_init: bool = False
    checkpoint: CheckpointRef | None = None
    environment: dict[str, Any] = Field(default_factory=current_environment)
    timings: dict[str, float]
    train_history: list[dict[str, float]] | None = None  # training losses, <= MAX_HISTORY points
    # {split: [samples found, samples the protocol has]} when run with --allow-partial-data; never ranked
    partial_data: dict[str, list[int]] | None = None
    # {kind, source, source_sha256, ...} when the weights were converted from a release (benchmark/imports.py)
    imported: dict[str, Any] | None = None
    # the method's family (``registry.family``: a preset's family, else the method); "" in old files
    family: str = Field(default="", pattern=r"^$|" + NAME_PATTERN)
    # the trainer's stage plan ([name, steps] in order) and the stage of the checkpoint's last step
    # (benchmark.train); None in files written before stages were recorded
    stages: list[Stage] | None = None
    stage: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, d: Any) -> Any:
        """Code may leave ``created``/``run_id`` empty (now); weights may be ``WeightProvenance`` objects."""
        if not isinstance(d, dict):
            return d
        d = dict(d)
        if not d.get("created"):
            d["created"] = utc_now()
        if not d.get("run_id") and isinstance(d["created"], str):
            try:
                d["run_id"] = new_run_id(d["created"])
            except ValueError:
                pass  # the created check names the field
        if isinstance(d.get("weights"), (list, tuple)):
            d["weights"] = [asdict(w) if is_dataclass(w) and not isinstance(w, type) else w for w in d["weights"]]
            if any(w.random_init if isinstance(w, Weight) else (isinstance(w, dict) and w.get("random_init") is True)
                   for w in d["weights"]):  # fmt: skip
                d["random_init"] = True
        return d

    @field_validator("created")
    @classmethod
    def _created(cls, v: str) -> str:
        try:
            parse_utc(v)
        except ValueError:
            raise _fail(f"expected an ISO-8601 UTC timestamp, got {v!r}") from None
        return v

    @field_validator("splits")
    @classmethod
    def _splits(cls, v: dict[str, Versioned]) -> dict[str, Versioned]:
        for name in v:
            if not re.match(NAME_PATTERN, name):
                raise _fail(f"{name!r} does not match {NAME_PATTERN}")
        return v

    @field_validator("config", "environment", "config_changes")
    @classmethod
    def _json(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _jsonable(v)

    @field_validator("timings")
    @classmethod
    def _timings(cls, v: dict[str, float]) -> dict[str, float]:
        for k in TIMINGS:
            if k not in v:
                raise _fail("missing required field", k)
        for k, x in v.items():
            if not math.isfinite(x) or x < 0:
                raise _fail(f"expected a finite number >= 0, got {x}", k)
        return {k: float(x) for k, x in v.items()}

    @field_validator("train_history")
    @classmethod
    def _history(cls, v: list[dict[str, float]] | None) -> list[dict[str, float]] | None:
        """At most MAX_HISTORY points ``{"step": int, <loss>: number, ...}``, steps increasing."""
        if v is None:
            return v
        if len(v) > MAX_HISTORY:
            raise _fail(f"at most {MAX_HISTORY} points (downsample with downsample_history), got {len(v)}")
        last = -1
        for i, p in enumerate(v):
            step = p.get("step")
            if step is None or step != int(step) or step < 0:
                raise _fail(f"expected an integer >= 0, got {step!r}", f"[{i}].step")
            if step <= last:
                raise _fail(f"steps must increase, got {int(step)} after {last}", f"[{i}].step")
            last = int(step)
            for k, x in p.items():
                _finite(x, f"[{i}].{k}")
        return [{"step": int(p["step"]), **{k: x for k, x in p.items() if k != "step"}} for p in v]

    @model_validator(mode="after")
    def _check(self) -> RunResult:
        seen = set()
        for i, ev in enumerate(self.evaluations):
            if ev.split not in self.splits:
                raise _fail(f"split {ev.split!r} is not listed in 'splits'", f"evaluations[{i}].split")
            if (ev.split, ev.layout) in seen:
                raise _fail(f"duplicate evaluation of {ev.split!r}/{ev.layout!r}", f"evaluations[{i}]")
            seen.add((ev.split, ev.layout))
        return self

    @property
    def filename(self) -> str:
        return f"{self.method}__{self.dataset}__{self.tier}__s{self.seed}__{self.run_id}.json"

    @property
    def flags(self) -> tuple[str, ...]:
        """The :data:`RUN_FLAGS` set on this run (any keeps it off the ranking)."""
        return tuple(f for f in RUN_FLAGS if getattr(self, f, False))

    @property
    def unranked(self) -> bool:
        """Kept off the ranked leaderboard: random-init weights, a dataset smaller than the protocol's, ..."""
        return bool(self.flags)

    def to_json(self) -> dict[str, Any]:
        d = self.model_dump(exclude={"evaluations", "train_history"})
        d["evaluations"] = [ev.to_json() for ev in self.evaluations]
        if self.train_history is not None:
            d["train_history"] = self.train_history
        return d

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | str | Path) -> RunResult:
        """Validate and build from a JSON object, or from a file path (errors then name the file)."""
        if isinstance(obj, (str, Path)):
            return load_result(obj)
        return _from_json(obj)


def _from_json(d: Any, file: str | Path | None = None) -> RunResult:
    if not isinstance(d, Mapping):
        raise SchemaError("<result>", f"expected an object, got {type(d).__name__}", file)
    for k in ("run_id", "created"):  # only construction in code may leave these to default
        if k not in d:
            raise SchemaError(k, "missing required field", file)
    version = d.get("schema_version")
    if version not in READABLE_SCHEMAS:
        raise SchemaError("schema_version", f"unsupported {version!r}; readable: {READABLE_SCHEMAS}", file)
    if version == "1":
        d = _fill_v1(d)
    return RunResult.parse(d, file)


def _fill_v1(d: Mapping[str, Any]) -> dict[str, Any]:
    """Schema 1 -> the fields 2 adds: each metric value's ``metric`` and ``mode``, from the registry as parsed
    now (results written before the facts were recorded carry none)."""
    from benchmark.results.metadata import producer

    d = dict(d)
    evs = []
    for ev in d.get("evaluations") or []:
        if isinstance(ev, Mapping) and isinstance(ev.get("metrics"), Mapping):
            metrics = {}
            for key, m in ev["metrics"].items():
                if isinstance(m, Mapping) and "metric" not in m:
                    name, mode = producer(key)
                    m = {**m, "metric": name, "mode": mode}
                metrics[key] = m
            ev = {**ev, "metrics": metrics}
        evs.append(ev)
    d["evaluations"] = evs
    return d


def load_result(path: str | Path) -> RunResult:
    """Read and validate one run file; a ``ValueError`` names the file and the offending field."""
    return _from_json(read_json(Path(path), "result file"), Path(path))


def write_result(result: RunResult, results_dir: str | Path | None = None) -> Path:
    """Write ``runs/<result.filename>`` atomically; never replaces an existing run file."""
    path = Path(results_dir or default_results_dir()) / "runs" / result.filename
    if path.exists():
        raise FileExistsError(f"result file {path} already exists (run ids must be unique)")
    atomic_write_json(path, result.to_json())
    return path


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


def weights_summary(weights: Sequence[Weight]) -> str:
    """``name=source@sha256[:12]`` for each weight, joined by ``; ``."""
    return "; ".join(f"{w.name}={w.source}" + (f"@{w.sha256[:12]}" if w.sha256 else "") for w in weights)
