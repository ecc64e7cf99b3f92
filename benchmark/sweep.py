"""Sweeps: a grid of (method, dataset, seed, override set) runs, locally or on a SLURM cluster via submitit.

A grid is a JSON (or TOML) file, with command-line flags taking precedence::

    {"methods": ["retrieval", "sg2im"], "datasets": ["shapes"], "seeds": [0, 1, 2], "tier": "quick",
     "protocol": "", "sets": {"eval.num_graphs": 64}, "overrides": [{}, {"method.learning_rate": 2e-4}]}

``sets`` apply to every run; each entry of ``overrides`` is one more point of the grid. Runs are independent
jobs: ``local`` runs them one after the other in this process, ``submitit-local`` as subprocesses through
submitit's LocalExecutor, ``slurm`` as one SLURM job array (one array task per run) through
``submitit.AutoExecutor``; with ``--gpus-per-node G`` each task starts G processes that train data-parallel
(:mod:`benchmark.distributed`).

A run is skipped when its result exists. The run key is the SHA-256 of the run's fully resolved
configuration (method, dataset, tier, seed, protocol variant, method config, train and eval settings, i.e.
every override), without ``device``; it is computed the same way from each ``results/runs/*.json`` file's
``config``. Runs with overrides get their own ``--out`` subfolder (``sets-<hash>``), so two override sets
never share (or resume) a checkpoint, and a killed job resumes from its checkpoint when the sweep is
submitted again.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.io import file_lock, read_json, sha256_json
from benchmark.paths import results_dir as default_results_dir

EXECUTORS = ("local", "submitit-local", "slurm")
GRID_FIELDS = {"methods": list, "datasets": list, "seeds": list, "tier": str, "protocol": str, "sets": dict,
               "overrides": list}  # fmt: skip


@dataclass(frozen=True)
class RunSpec:
    """One point of a sweep, enough to rebuild its configuration anywhere (it is what a job receives)."""

    method: str
    dataset: str
    tier: str
    seed: int
    protocol: str = ""
    sets: dict[str, Any] = field(default_factory=dict)
    out: str = "runs"
    results: str | None = None
    device: str = "auto"

    def config(self) -> Any:
        from benchmark.config import build_run_config

        return build_run_config(self.method, self.dataset, self.tier, self.seed, self.device, self.sets, self.protocol)

    def out_dir(self) -> Path:
        return Path(self.out) / f"sets-{sha256_json(self.sets)[:8]}" if self.sets else Path(self.out)

    def label(self) -> str:
        extra = " " + " ".join(f"{k}={v}" for k, v in self.sets.items()) if self.sets else ""
        variant = f"-{self.protocol}" if self.protocol else ""
        return f"{self.method}/{self.dataset}{variant}/{self.tier}/s{self.seed}{extra}"


def run_key(config: dict[str, Any]) -> str:
    """The identity of a run: its resolved configuration without ``device`` (JSON-normalised)."""
    canon = json.loads(json.dumps({k: v for k, v in config.items() if k != "device"}))
    return sha256_json(canon)[:16]


def existing_keys(results: str | Path | None) -> set[str]:
    """Run keys of every readable result file (malformed files are ignored here; the leaderboard reports them)."""
    runs = Path(results or default_results_dir()) / "runs"
    keys = set()
    for path in sorted(runs.glob("*.json")) if runs.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("config"), dict):
                keys.add(run_key(data["config"]))
    return keys


# --- the grid -----------------------------------------------------------------------------------------------


def load_grid(path: str | Path) -> dict[str, Any]:
    """Read a grid file (``.json``, or ``.toml``); errors name the file and the field."""
    path = Path(path)
    if path.suffix == ".toml":
        import tomllib

        try:
            grid = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"sweep grid file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"malformed sweep grid file {path}: {e}") from None
    else:
        grid = read_json(path, "sweep grid file")
    if not isinstance(grid, dict):
        raise ValueError(f"sweep grid file {path}: expected an object with fields {', '.join(GRID_FIELDS)}")
    for k, v in grid.items():
        if k not in GRID_FIELDS:
            raise ValueError(f"sweep grid file {path}: unknown field {k!r}; valid: {', '.join(GRID_FIELDS)}")
        if not isinstance(v, GRID_FIELDS[k]):
            raise ValueError(f"sweep grid file {path}: field {k!r} must be a {GRID_FIELDS[k].__name__}, got {v!r}")
    for k in ("methods", "datasets"):
        if not all(isinstance(x, str) for x in grid.get(k, [])):
            raise ValueError(f"sweep grid file {path}: field {k!r} must be a list of names")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in grid.get("seeds", [])):
        raise ValueError(f"sweep grid file {path}: field 'seeds' must be a list of integers")
    if not all(isinstance(o, dict) for o in grid.get("overrides", [])):
        raise ValueError(f"sweep grid file {path}: field 'overrides' must be a list of objects (key: value)")
    return grid


def expand(
    methods: Sequence[str],
    datasets: Sequence[str],
    seeds: Sequence[int],
    tier: str = "quick",
    protocol: str = "",
    sets: dict[str, Any] | None = None,
    overrides: Sequence[dict[str, Any]] = ({},),
    out: str | Path = "runs",
    results: str | Path | None = None,
    device: str = "auto",
) -> list[RunSpec]:
    """The grid methods x datasets x seeds x override sets, each resolved now so that bad names fail early."""
    if not methods or not datasets or not seeds:
        raise ValueError("a sweep needs at least one method, one dataset and one seed")
    specs = []
    for m, d, o, s in itertools.product(methods, datasets, overrides or [{}], seeds):
        spec = RunSpec(m, d, tier, int(s), protocol, {**(sets or {}), **o}, str(out),
                       None if results is None else str(results), device)  # fmt: skip
        try:
            spec.config()  # unknown names and bad overrides stop here, before anything is submitted
        except (ValueError, KeyError) as e:
            raise ValueError(f"sweep point {spec.label()}: {e}") from None
        specs.append(spec)
    return specs


def pending(specs: Sequence[RunSpec]) -> tuple[list[RunSpec], list[RunSpec]]:
    """Split into (to run, already done) by looking for results with the same run key."""
    todo, done = [], []
    cache: dict[str | None, set[str]] = {}
    for spec in specs:
        keys = cache.setdefault(spec.results, existing_keys(spec.results))
        (done if run_key(spec.config().to_dict()) in keys else todo).append(spec)
    return todo, done


# --- one run (what a job executes) --------------------------------------------------------------------------


@contextlib.contextmanager
def _run_lock(spec: RunSpec, key: str) -> Iterator[bool]:
    """A non-blocking lock per run key, so that two jobs never train the same run at once."""
    folder = Path(spec.out) / ".sweep-locks"  # beside the checkpoints, not in the results folder
    with file_lock(folder / f"{key}.lock", blocking=False) as held:
        yield held


def _export_torch_env() -> None:
    """In a submitit job with several tasks (one per GPU): set MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK
    for ``torch.distributed`` (all GPUs stay visible; each rank takes ``cuda:LOCAL_RANK``)."""
    if "RANK" in os.environ:
        return
    try:
        import submitit

        tasks = submitit.JobEnvironment().num_tasks
    except (ImportError, RuntimeError):
        return  # not inside a submitit job
    if tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def run_one(spec: RunSpec, progress: bool = False) -> dict[str, Any]:
    """Run one grid point unless its result exists; returns a summary (status, key, result path)."""
    from benchmark import distributed
    from benchmark.run import run

    _export_torch_env()
    cfg = spec.config()
    key = run_key(cfg.to_dict())
    summary = {"run": spec.label(), "key": key, "status": "skipped", "result": None}
    if key in existing_keys(spec.results):
        return summary
    lock = _run_lock(spec, key) if not distributed.launched() else contextlib.nullcontext(True)
    with lock as acquired:
        if not acquired:
            return {**summary, "status": "running elsewhere"}
        with distributed.session(spec.device):
            result, path = run(cfg, spec.out_dir(), Path(spec.results) if spec.results else None, progress)
    return {**summary, "status": "done", "result": None if path is None else str(path)}


# --- executors ----------------------------------------------------------------------------------------------


@dataclass
class ClusterOptions:
    """Job resources (submitit names): SLURM partition/account, wall time, GPUs and CPUs per node."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    timeout_min: int = 240
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    max_parallel: int = 1  # submitit-local: jobs at once; slurm: array parallelism
    extra: dict[str, Any] = field(default_factory=dict)  # more slurm_* parameters, e.g. {"constraint": "a100"}


def executor_parameters(kind: str, opts: ClusterOptions) -> dict[str, Any]:
    """``AutoExecutor.update_parameters`` arguments: generic names plus ``slurm_*`` ones for SLURM.

    One task per GPU (``tasks_per_node = gpus_per_node``): each task is one data-parallel process.
    """
    if kind not in ("submitit-local", "slurm"):
        raise ValueError(f"unknown submitit executor {kind!r}; valid: submitit-local, slurm")
    if kind == "submitit-local" and opts.nodes > 1:
        raise ValueError("submitit-local runs on this machine: --nodes must be 1")
    params: dict[str, Any] = {"name": "sg2i-sweep", "timeout_min": opts.timeout_min, "nodes": opts.nodes,
                              "tasks_per_node": max(1, opts.gpus_per_node), "gpus_per_node": opts.gpus_per_node}  # fmt: skip
    if opts.cpus_per_task is not None:
        params["cpus_per_task"] = opts.cpus_per_task
    if opts.mem_gb is not None:
        params["mem_gb"] = opts.mem_gb
    if kind == "slurm":
        params["slurm_array_parallelism"] = opts.max_parallel
        for k in ("partition", "account", "qos"):
            if getattr(opts, k):
                params[f"slurm_{k}"] = getattr(opts, k)
        params.update({f"slurm_{k}": v for k, v in opts.extra.items()})
    return params


def make_executor(kind: str, folder: str | Path, opts: ClusterOptions) -> Any:
    """A submitit executor for ``submitit-local`` or ``slurm`` with ``opts`` applied."""
    import submitit

    params = executor_parameters(kind, opts)
    ex = submitit.AutoExecutor(folder=folder, cluster="local" if kind == "submitit-local" else "slurm")
    ex.update_parameters(**params)
    return ex


def _summaries_line(summaries: Sequence[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for s in summaries:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def sweep(
    specs: Sequence[RunSpec],
    executor: str = "local",
    folder: str | Path = "sweeps",
    opts: ClusterOptions | None = None,
    wait: bool = True,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run or submit every spec whose result does not exist yet; returns one summary per spec.

    ``local``: in this process, one after the other (a failing run is reported and the others go on).
    ``submitit-local`` / ``slurm``: one job per run (a job array on SLURM); with ``wait`` the call returns when
    all jobs have ended, otherwise right after submission with the job ids.
    """
    opts = opts or ClusterOptions()
    todo, done = pending(specs)
    summaries = [{"run": s.label(), "status": "skipped", "result": None} for s in done]
    for s in done:
        echo(f"skip  {s.label()} (result exists)")
    if not todo:
        echo(f"sweep: nothing to run ({len(done)} of {len(specs)} results exist)")
        return summaries
    echo(f"sweep: {len(todo)} run(s) to do, {len(done)} skipped, executor {executor}")
    if executor == "local":
        for i, spec in enumerate(todo, 1):
            echo(f"[{i}/{len(todo)}] {spec.label()}")
            try:
                summaries.append(run_one(spec, progress=True))
            except Exception as e:  # one failing run does not stop the sweep
                traceback.print_exc(file=sys.stderr)
                summaries.append({"run": spec.label(), "status": "failed", "error": f"{type(e).__name__}: {e}"})
        echo(f"sweep: {_summaries_line(summaries)}")
        return summaries
    ex = make_executor(executor, folder, opts)
    if executor == "slurm":
        with ex.batch():
            jobs = [ex.submit(run_one, spec) for spec in todo]
        echo(f"sweep: submitted job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} tasks); logs in {folder}")
    else:
        jobs = []
        for spec in todo:  # at most max_parallel local jobs at once
            while sum(not j.done() for j in jobs) >= max(1, opts.max_parallel):
                time.sleep(0.5)
            jobs.append(ex.submit(run_one, spec))
            echo(f"submitted {jobs[-1].job_id}: {spec.label()}")
    if not wait:
        return summaries + [{"run": s.label(), "status": "submitted", "job_id": j.job_id} for s, j in zip(todo, jobs)]
    for spec, job in zip(todo, jobs):
        try:
            summaries.append(job.results()[0])  # task 0 (rank 0) of a multi-GPU job reports the run
        except Exception as e:
            summaries.append({"run": spec.label(), "status": "failed", "job_id": job.job_id, "error": str(e)[-2000:]})
            echo(f"failed {spec.label()} (job {job.job_id}); see {job.paths.stderr}")
    echo(f"sweep: {_summaries_line(summaries)}")
    return summaries
