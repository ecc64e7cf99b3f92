"""``python -m benchmark reproduce RESULT.json``: re-run the run a result file describes and compare.

The result records everything a run depends on: method, full config (method, train, eval, image size, seed,
protocol variant), protocol and split versions, git commit. A reproduction rebuilds that exact config, trains
from scratch into a fresh folder (an imported checkpoint is re-scored instead: there is nothing to train),
evaluates, and compares every metric value and the checkpoint's tensor digest (``tensors_sha256``: all weights,
optimizer states and RNG states) with the record. On CPU, with the same code and packages, every value must
be identical; the verdict is ``exact`` or ``differs``, and a differing commit, a dirty tree, another protocol
or split version, or config fields the code no longer knows are warned about before anything runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from benchmark import registry
from benchmark.checkpoint import CheckpointError, config_from_dict, read_metadata
from benchmark.config import EvalConfig, RunConfig, TrainConfig
from benchmark.env import environment, git_state
from benchmark.protocol import load_protocol
from benchmark.results import RunResult, align, load_result


@dataclass(frozen=True)
class Row:
    what: str
    recorded: str
    reproduced: str
    verdict: str  # exact | differs | not recorded
    rel_diff: str = ""  # |a - b| / max(|a|, |b|) of two differing numbers


def _warn(msg: str) -> None:
    print(f"WARNING: {msg}", file=sys.stderr)


def run_config_of(rec: RunResult, device: str) -> tuple[RunConfig, list[str]]:
    """The ``RunConfig`` a result was produced with, and the recorded fields the current code does not know."""
    c = rec.config
    method_cls = registry.get("method", rec.method)
    unknown = [f"method.{k}" for k in c.get("method_cfg", {}) if k not in {f.name for f in fields(method_cls.Config)}]
    for key, cls in (("train", TrainConfig), ("eval", EvalConfig)):
        unknown += [f"{key}.{k}" for k in c.get(key, {}) if k not in {f.name for f in fields(cls)}]
    cfg = RunConfig(
        method=rec.method, dataset=rec.dataset, method_cfg=config_from_dict(method_cls.Config, c["method_cfg"]),
        tier=rec.tier, seed=rec.seed, device=device, image_size=rec.image_size, protocol=c.get("protocol", ""),
        train=config_from_dict(TrainConfig, c["train"]), eval=config_from_dict(EvalConfig, c["eval"]),
    )  # fmt: skip
    return cfg, unknown


def preflight(rec: RunResult, cfg: RunConfig, unknown: list[str], warn: Callable[[str], None] = _warn) -> int:
    """Warn about everything that may keep the reproduction from being exact; returns the number of warnings."""
    n = 0
    commit, dirty = git_state()
    rec_commit = str(rec.environment.get("git_commit", "unknown"))
    if commit == "unknown" or rec_commit == "unknown":
        warn(f"the commit cannot be compared (recorded {rec_commit}, here {commit})")
        n += 1
    elif commit != rec_commit:
        warn(f"recorded at commit {rec_commit[:12]}, this tree is at {commit[:12]}: code changes may change numbers")
        n += 1
    if dirty:
        warn("this working tree has uncommitted changes: numbers may differ from the recorded commit's")
        n += 1
    if rec.environment.get("git_dirty"):
        warn("the recorded run came from a tree with uncommitted changes: its exact code is not known")
        n += 1
    proto = load_protocol(rec.dataset, cfg.protocol)
    if (proto["version"], proto["sha256"]) != (rec.protocol.get("version"), rec.protocol.get("sha256")):
        warn(f"protocol {rec.dataset}{'/' + cfg.protocol if cfg.protocol else ''} is now version {proto['version']} "
             f"(sha256 {proto['sha256'][:12]}); the result used {rec.protocol.get('version')} "
             f"({str(rec.protocol.get('sha256'))[:12]})")  # fmt: skip
        n += 1
    env = {**rec.environment}
    here = environment()
    pk_a, pk_b = env.get("packages", {}), here.get("packages", {})
    changed = [f"{k} {pk_a.get(k, '-')} -> {pk_b.get(k, '-')}" for k in sorted(set(pk_a) | set(pk_b)) if pk_a.get(k) != pk_b.get(k)]
    if changed:
        warn(f"package versions differ from the record: {', '.join(changed)}")
        n += 1
    for key in ("platform", "device", "num_threads", "python"):
        if key in env and env[key] != here.get(key):
            warn(f"environment '{key}' differs: recorded {env[key]!r}, here {here.get(key)!r} (CPU kernels, thread "
                 "counts and library builds change float rounding)")  # fmt: skip
            n += 1
    if unknown:
        warn(f"recorded config fields this code no longer has (ignored): {', '.join(unknown)}")
        n += 1
    rec_dev = str(rec.config.get("device", ""))
    on_gpu = rec_dev.startswith("cuda") or (rec_dev == "auto" and bool(rec.environment.get("cuda_available")))
    if on_gpu and not cfg.device.startswith("cuda"):
        warn(f"the result was produced on a GPU ({rec.environment.get('device')}): CPU numbers are not expected "
             "to be bit-identical")
        n += 1
    return n


def _fmt(v: Any) -> str:
    return "-" if v is None else repr(v) if isinstance(v, float) else str(v)


def compare(rec: RunResult, new: RunResult) -> list[Row]:
    """Recorded vs reproduced: every metric of every (split, layout), split versions, checkpoint tensors."""
    rows: list[Row] = []
    got = {(ev.split, ev.layout): ev for ev in new.evaluations}
    for ev in rec.evaluations:
        other = got.get((ev.split, ev.layout))
        for name in sorted(set(ev.metrics) | set(other.metrics if other else {})):
            a = ev.metrics[name].value if name in ev.metrics else None
            b = other.metrics[name].value if other and name in other.metrics else None
            present = name in ev.metrics and other is not None and name in other.metrics
            rel = f"{abs(a - b) / max(abs(a), abs(b)):.1e}" if a is not None and b is not None and a != b else ""
            verdict = "exact" if present and a == b else "differs"
            rows.append(Row(f"{ev.split}/{ev.layout} {name}", _fmt(a), _fmt(b), verdict, rel))
        if other is None:
            rows.append(Row(f"{ev.split}/{ev.layout}", "evaluated", "missing", "differs"))
    for split in sorted(set(rec.splits) | set(new.splits)):
        a, b = rec.splits.get(split, {}), new.splits.get(split, {})
        fa, fb = f"{a.get('version')} {str(a.get('sha256'))[:12]}", f"{b.get('version')} {str(b.get('sha256'))[:12]}"
        rows.append(Row(f"split {split}", fa, fb, "exact" if a == b else "differs"))
    ra = (rec.checkpoint or {}).get("tensors_sha256")
    if ra is None and rec.checkpoint and Path(rec.checkpoint["path"]).is_file():
        try:
            ra = read_metadata(rec.checkpoint["path"]).get("tensors_sha256")
        except CheckpointError:
            ra = None
    rb = (new.checkpoint or {}).get("tensors_sha256")
    verdict = "not recorded" if ra is None else "exact" if ra == rb else "differs"
    rows.append(Row("checkpoint tensors_sha256", (ra or "-")[:16], (rb or "-")[:16], verdict))
    return rows


def format_rows(rows: list[Row]) -> str:
    header = ("", "recorded", "reproduced", "verdict", "rel. diff")
    body = [(r.what, r.recorded, r.reproduced, r.verdict, r.rel_diff) for r in rows]
    return align(header, body, (False,) * len(header))


def reproduce(
    result_path: str | Path,
    out: str | Path = "reproduce",
    results_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[str, list[Row], RunResult, Path]:
    """Re-run ``result_path``'s run under ``out`` (results under ``out/results`` unless ``results_dir``).

    Returns ``(verdict, rows, reproduced result, its path)``; the verdict is ``exact`` when every compared value
    is identical (a checkpoint digest that was not recorded is reported, not counted), else ``differs``.
    """
    from benchmark.run import eval_checkpoint, run, run_dir_for
    from benchmark.train import CHECKPOINT_NAME

    rec = load_result(result_path)
    cfg, unknown = run_config_of(rec, device)
    preflight(rec, cfg, unknown)
    results_dir = Path(results_dir) if results_dir is not None else Path(out) / "results"
    if rec.imported:  # converted weights: nothing to train; re-score the recorded checkpoint
        if rec.checkpoint is None or not Path(rec.checkpoint["path"]).is_file():
            raise FileNotFoundError(f"{result_path}: field 'checkpoint.path': the imported checkpoint is not on disk; "
                                    "convert the release again with import-checkpoint")  # fmt: skip
        sets = {f"eval.{f.name}": getattr(cfg.eval, f.name) for f in fields(EvalConfig)}
        new, path = eval_checkpoint(rec.checkpoint["path"], device, sets, results_dir, progress)
    else:
        run_dir = run_dir_for(cfg, out)
        if (run_dir / CHECKPOINT_NAME).exists():
            raise ValueError(f"{run_dir / CHECKPOINT_NAME} exists: a reproduction trains from scratch; "
                                  "pass another --out folder")  # fmt: skip
        new, path = run(cfg, out, results_dir, progress)
    rows = compare(rec, new)
    verdict = "exact" if all(r.verdict != "differs" for r in rows) else "differs"
    return verdict, rows, new, path
