"""Command line: ``python -m benchmark {ls,run,eval,sweep,leaderboard,report,prepare,generate,import-checkpoint,reproduce}``.

Imports stay inside the commands so that ``ls`` answers without loading torch.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

from benchmark import registry

EXAMPLES = """examples:
  python -m benchmark ls
  python -m benchmark run --method retrieval --dataset shapes --tier quick
  python -m benchmark run --method retrieval --dataset shapes --tier smoke --set eval.num_graphs=16
  python -m benchmark run --method sg2im --dataset shapes --tier quick --set method.learning_rate=2e-4
  python -m benchmark run --method clip_ddpm --dataset shapes --tier smoke --set method.text_encoder_weights=random
  python -m benchmark eval runs/retrieval__shapes__quick__s0/checkpoint.safetensors
  python -m benchmark generate runs/retrieval__shapes__quick__s0/checkpoint.safetensors graphs.json --out images/
  python -m benchmark report --runs runs/
  python -m benchmark import-checkpoint sg2im sg2im-models/coco64.pt --out imported/coco64.safetensors
  python -m benchmark reproduce results/runs/retrieval__shapes__quick__s0__<run id>.json --out reproduce/
  python -m benchmark sweep --method retrieval --method sg2im --seeds 0,1,2 --tier quick --executor submitit-local
  torchrun --nproc_per_node 4 -m benchmark run --method sg2im --dataset coco_stuff --tier full
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written, and every option's default shown (unless its help already says it, or it is
    empty: a flag, no value, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        empty = action.default is None or action.default is False or action.default in ([], "", argparse.SUPPRESS)
        if "default" in text or empty:
            return text
        return super()._get_help_string(action) or text


def _int_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be >= {minimum}, got {value}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


SEED = _int_at_least(0, "seed")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE", default=[],
                   help="override a config field, e.g. train.steps=100, eval.num_graphs=64, "
                        "method.learning_rate=2e-4 (methods that train; `ls` lists them)")
    p.add_argument("--results", type=Path, default=None, help="results folder (default: results/ of the repo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_partial(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-partial-data", action="store_true",
                   help="run even when the dataset's split sizes differ from the protocol's; the result is marked "
                        "partial_data and never ranked")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmark", description="Scene-graph-to-image benchmark suite.",
                                     epilog=EXAMPLES, formatter_class=_Formatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def sub_parser(name: str, help: str, **kw: Any) -> argparse.ArgumentParser:  # noqa: A002
        return commands.add_parser(name, help=help, description=help, formatter_class=_Formatter, **kw)

    sub_parser("ls", help="list methods, datasets, metrics and text encoders")

    p = sub_parser("run", help="train, sample, evaluate, write the result, rebuild the leaderboard",
                       epilog=EXAMPLES)
    p.add_argument("--method", required=True, help="a registered method (python -m benchmark ls)")
    p.add_argument("--dataset", default="shapes", help="a registered dataset")
    p.add_argument("--tier", default="quick", help="smoke (seconds), quick (CPU minutes), full (published settings)")
    p.add_argument("--seed", type=SEED, default=0, help="training and sampling seed (>= 0)")
    p.add_argument("--protocol", default="", help="protocol variant, e.g. lostgan for coco_stuff (default: protocol.json)")
    p.add_argument("--out", default="runs", help="folder for checkpoints and samples (resumes if present)")
    _add_common(p)
    _add_partial(p)

    p = sub_parser("eval", help="score a checkpoint under the current protocol of its dataset and tier")
    p.add_argument("checkpoint", type=Path, help="a run's checkpoint.safetensors")
    _add_common(p)
    _add_partial(p)

    p = sub_parser("leaderboard", help="rebuild results/leaderboard*.csv from results/runs/*.json and print them")
    p.add_argument("--results", type=Path, default=None, help="results folder (default: results/ of the repo)")

    p = sub_parser("report", help="write reports/report.md and report.html (leaderboard, charts, ablations, samples)")
    p.add_argument("--results", type=Path, default=None, help="results folder (default: results/ of the repo)")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: reports/ of the repo)")
    p.add_argument("--runs", type=Path, action="append", default=[], metavar="DIR",
                   help="where to look for run folders (samples) besides the recorded checkpoint paths; repeatable")
    p.add_argument("--graphs", type=int, default=4, help="scene graphs per sample grid")

    p = sub_parser("sweep", help="a grid of runs (methods x datasets x seeds x overrides), local or on SLURM")
    p.add_argument("grid", type=Path, nargs="?", default=None, help="grid file (.json or .toml); flags override it")
    p.add_argument("--method", dest="methods", action="append", default=None, help="repeatable")
    p.add_argument("--dataset", dest="datasets", action="append", default=None, help="repeatable")
    p.add_argument("--seeds", default=None, help="comma-separated, e.g. 0,1,2")
    p.add_argument("--tier", default=None, help="smoke, quick or full (default: the grid's, else quick)")
    p.add_argument("--protocol", default=None, help="protocol variant (default: the grid's, else protocol.json)")
    p.add_argument("--override", dest="overrides", action="append", default=None, metavar="K=V[,K=V]",
                   help="one more override set of the grid (repeatable), e.g. method.learning_rate=2e-4")
    p.add_argument("--executor", choices=("local", "submitit-local", "slurm"), default="local")
    p.add_argument("--out", default="runs", help="folder for the runs' checkpoints and samples")
    p.add_argument("--jobs", type=Path, default=Path("sweeps"), help="submitit folder for job files and logs")
    p.add_argument("--partition", default=None, help="SLURM partition")
    p.add_argument("--account", default=None, help="SLURM account")
    p.add_argument("--qos", default=None, help="SLURM QOS")
    p.add_argument("--time-min", type=int, default=240, help="wall-time limit per job, minutes")
    p.add_argument("--nodes", type=int, default=1, help="nodes per run (multi-node data parallel)")
    p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs (= processes) per node and run")
    p.add_argument("--cpus-per-task", type=int, default=None)
    p.add_argument("--mem-gb", type=float, default=None)
    p.add_argument("--max-parallel", type=int, default=1, help="jobs at once (submitit-local) / array parallelism")
    p.add_argument("--no-wait", action="store_true", help="return after submitting")
    p.add_argument("--dry-run", action="store_true", help="list the runs and which are skipped; run nothing")
    _add_common(p)

    p = sub_parser("prepare", help="check / prepare a dataset on disk")
    p.add_argument("dataset", help="coco_stuff, vg or 4dor (shapes needs no preparation)")
    p.add_argument("--raw", type=Path, default=None, help="folder with the raw downloaded files")
    p.add_argument("--root", type=Path, default=None, help="where the prepared data goes")

    p = sub_parser("generate", help="images from a scene-graph JSON file (sg2im format) and a checkpoint")
    p.add_argument("checkpoint", type=Path, help="a run's checkpoint.safetensors")
    p.add_argument("graphs", type=Path, help="scene graphs, sg2im's JSON format")
    p.add_argument("--out", type=Path, default=Path("generated"), help="folder for the PNG images")
    p.add_argument("--seed", type=SEED, default=0, help="sampling seed (>= 0)")
    p.add_argument("--samples", type=_int_at_least(1, "samples"), default=1, help="images per graph (>= 1)")
    p.add_argument("--layout", choices=("pred", "gt"), default="pred",
                   help="pred: the method predicts boxes; gt: the graphs' 'boxes'")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")

    p = sub_parser("import-checkpoint", help="convert a released checkpoint (google/sg2im) into a suite checkpoint")
    p.add_argument("kind", help="sg2im (improved_diffusion / guided_diffusion: use --set method.init_from=FILE)")
    p.add_argument("file", type=Path, help="the released file, e.g. sg2im-models/coco64.pt")
    p.add_argument("--out", type=Path, required=True, help="the suite checkpoint to write (.safetensors)")
    p.add_argument("--dataset", default=None, help="whose vocabulary to map to (default: from the file name)")
    p.add_argument("--tier", default="full", help="tier whose evaluation settings eval uses (default full)")
    p.add_argument("--seed", type=SEED, default=0, help="seed recorded in the checkpoint (>= 0)")
    p.add_argument("--protocol", default="", help="protocol variant, e.g. lostgan")

    p = sub_parser("reproduce", help="re-run the run a result file describes; table of recorded vs reproduced")
    p.add_argument("result", type=Path, help="results/runs/<run>.json")
    p.add_argument("--out", type=Path, default=Path("reproduce"), help="fresh folder for the re-run (and its result)")
    p.add_argument("--results", type=Path, default=None, help="where the reproduced result goes (default OUT/results)")
    p.add_argument("--device", default="cpu", help="cpu (default: exact on CPU), cuda, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def cmd_ls() -> int:
    table = registry.entries()
    for kind in registry.KINDS:
        print(f"{kind}s:")
        for name in sorted(table[kind]):
            entry = table[kind][name]
            origin = f" [plug-in {entry.plugin.split(' (')[0]}]" if entry.plugin else ""
            print(f"  {name:<22} {entry.summary}{origin}")
        if not table[kind]:
            print("  (none yet)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from benchmark import sweep as sw
    from benchmark.config import parse_sets

    grid = sw.load_grid(args.grid) if args.grid else {}
    overrides = grid.get("overrides", [{}])
    if args.overrides:
        overrides = [parse_sets([kv for kv in o.split(",") if kv]) for o in args.overrides]
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()] if args.seeds else grid.get("seeds", [0])
    specs = sw.expand(
        args.methods or grid.get("methods", []), args.datasets or grid.get("datasets", ["shapes"]), seeds,
        args.tier or grid.get("tier", "quick"), grid.get("protocol", "") if args.protocol is None else args.protocol,
        {**grid.get("sets", {}), **parse_sets(args.sets)}, overrides, args.out, args.results, args.device,
    )  # fmt: skip
    if args.dry_run:
        todo, done = sw.pending(specs)
        for s in specs:
            print(f"{'skip' if s in done else 'run '}  {s.label()}  -> {s.out_dir()}")
        print(f"{len(todo)} to run, {len(done)} skipped (result exists)")
        return 0
    opts = sw.ClusterOptions(args.partition, args.account, args.qos, args.time_min, args.nodes, args.gpus_per_node,
                             args.cpus_per_task, args.mem_gb, args.max_parallel)  # fmt: skip
    summaries = sw.sweep(specs, args.executor, args.jobs, opts, wait=not args.no_wait)
    return 1 if any(s["status"] == "failed" for s in summaries) else 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """The dataset's report on stdout; on failure its information lines first, then the error, and no 'done'."""
    ds = registry.get("dataset", args.dataset)
    try:
        report = ds.prepare(root=args.root, raw=args.raw)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        lines = str(e).splitlines() or [type(e).__name__]
        # Information lines (root, counts) come before the first line that says what is wrong.
        cut = next((i for i, line in enumerate(lines) if _is_problem(line)), 0)
        for line in lines[:cut]:
            print(line)
        print(f"error: {args.dataset} is not ready:", file=sys.stderr)
        print("\n".join(lines[cut:]), file=sys.stderr)
        return 2
    print(report)
    return 0


def _is_problem(line: str) -> bool:
    low = line.lower()
    return any(w in low for w in ("missing", "not found", "error", "cannot", "invalid", "mismatch"))


def _print_result(result, path: Path) -> None:
    print(f"\nresult: {path}")
    for ev in result.evaluations:
        vals = ", ".join(f"{k}={v.value:.4g}" for k, v in ev.metrics.items() if v.value is not None)
        off = ", ".join(k for k, v in ev.metrics.items() if v.value is None)
        line = f"{result.method} / {result.dataset} / {ev.split} ({ev.n_generated} generated): {vals}"
        print(textwrap.fill(line + (f"; unavailable: {off}" if off else ""), 120, initial_indent="  ",
                            subsequent_indent="    ", break_on_hyphens=False))  # fmt: skip
    if result.random_init:
        print("  random-init weights were used: this result is kept out of the leaderboard")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from benchmark.progress import set_quiet

    set_quiet(getattr(args, "quiet", False))
    try:
        if args.command == "ls":
            return cmd_ls()
        if args.command == "leaderboard":
            from benchmark import results as res

            say = lambda text: print(textwrap.fill(text, 120, break_on_hyphens=False))  # noqa: E731
            board = res.build_leaderboard(args.results, echo=say)
            mean_std, reported = board.root / res.LEADERBOARD_MEAN_STD, res.reported_path(args.results)
            print()
            say(f"Reproduced by this suite (every column in {mean_std}; one row per run in {board.path.name})")
            print()
            print(res.format_tables(board.groups))
            print()
            say(f"Published numbers ({reported}): not reproduced, never ranked with the rows above; ? = unverified")
            print(res.format_reported(res.load_reported(reported)))
            return 0
        if args.command == "report":
            from benchmark.report import build_report

            build_report(args.results, args.out, runs_roots=args.runs, max_graphs=args.graphs)
            return 0
        if args.command == "sweep":
            return cmd_sweep(args)
        if args.command == "prepare":
            return cmd_prepare(args)
        if args.command == "import-checkpoint":
            from benchmark.imports import main_import

            return main_import(args.kind, args.file, args.out, args.dataset, args.tier, args.seed, args.protocol)
        if args.command == "reproduce":
            from benchmark.reproduce import format_rows, reproduce

            verdict, rows, _, path = reproduce(args.result, args.out, args.results, args.device, not args.quiet)
            print(f"\nreproduced: {path}\n{format_rows(rows)}\nverdict: {verdict}")
            return 0 if verdict == "exact" else 1
        if args.command == "generate":
            from benchmark.run import generate

            paths = generate(args.checkpoint, args.graphs, args.out, args.seed, args.samples, args.layout, args.device)
            print("\n".join(map(str, paths)))
            return 0

        from benchmark import distributed
        from benchmark.config import build_run_config, parse_sets
        from benchmark.results import format_tables, latest_leaderboard

        sets = parse_sets(args.sets)
        progress = not args.quiet
        with distributed.session(args.device):  # torchrun: one process per GPU / CPU slot, rank 0 writes
            if args.command == "run":
                from benchmark.run import run

                cfg = build_run_config(args.method, args.dataset, args.tier, args.seed, args.device, sets, args.protocol)
                result, path = run(cfg, args.out, args.results, progress, args.allow_partial_data)
            else:
                from benchmark.run import eval_checkpoint

                result, path = eval_checkpoint(
                    args.checkpoint, args.device, sets, args.results, progress, args.allow_partial_data
                )
        if result is None:
            return 0
        _print_result(result, path)
        board = latest_leaderboard(args.results)  # rebuilt once, by the run
        print()
        print(format_tables([g for g in board.groups if (g.dataset, g.tier) == (result.dataset, result.tier)]))
        return 0
    except (registry.UnknownNameError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
