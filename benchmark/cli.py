"""Command line: ``python -m benchmark {ls,run,eval,leaderboard,prepare,generate}``.

Imports stay inside the commands so that ``ls`` answers without loading torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark import registry

EXAMPLES = """examples:
  python -m benchmark ls
  python -m benchmark run --method retrieval --dataset shapes --tier quick
  python -m benchmark run --method retrieval --dataset shapes --tier smoke --set eval.num_graphs=16
  python -m benchmark eval runs/retrieval__shapes__quick__s0/checkpoint.safetensors
  python -m benchmark generate runs/retrieval__shapes__quick__s0/checkpoint.safetensors graphs.json --out images/
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE", default=[],
                   help="override a config field, e.g. train.steps=100, eval.num_graphs=64, method.lr=2e-4")
    p.add_argument("--results", type=Path, default=None, help="results folder (default: results/ of the repo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmark", description="Scene-graph-to-image benchmark suite.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("ls", help="list methods, datasets, metrics and text encoders")

    p = sub.add_parser("run", help="train, sample, evaluate, write the result, rebuild the leaderboard")
    p.add_argument("--method", required=True)
    p.add_argument("--dataset", default="shapes")
    p.add_argument("--tier", default="quick", help="smoke (seconds), quick (CPU minutes), full (published settings)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--protocol", default="", help="protocol variant, e.g. lostgan for coco_stuff (default: protocol.json)")
    p.add_argument("--out", default="runs", help="folder for checkpoints and samples (resumes if present)")
    _add_common(p)

    p = sub.add_parser("eval", help="score an existing checkpoint with the protocol it was trained under")
    p.add_argument("checkpoint", type=Path)
    _add_common(p)

    p = sub.add_parser("leaderboard", help="rebuild results/leaderboard.csv from results/runs/*.json and print it")
    p.add_argument("--results", type=Path, default=None)

    p = sub.add_parser("prepare", help="check / prepare a dataset on disk")
    p.add_argument("dataset")
    p.add_argument("--raw", type=Path, default=None, help="folder with the raw downloaded files")
    p.add_argument("--root", type=Path, default=None, help="where the prepared data goes")

    p = sub.add_parser("generate", help="images from a scene-graph JSON file (sg2im format) and a checkpoint")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("graphs", type=Path)
    p.add_argument("--out", type=Path, default=Path("generated"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--layout", choices=("pred", "gt"), default="pred")
    p.add_argument("--device", default="auto")
    return parser


def cmd_ls() -> int:
    table = registry.entries()
    for kind in registry.KINDS:
        print(f"{kind}s:")
        for name in sorted(table[kind]):
            print(f"  {name:<22} {table[kind][name].summary}")
        if not table[kind]:
            print("  (none yet)")
    return 0


def _print_result(result, path: Path) -> None:
    print(f"\nresult: {path}")
    for ev in result.evaluations:
        vals = ", ".join(
            f"{k}={v.value:.4g}" if v.value is not None else f"{k}=unavailable" for k, v in ev.metrics.items()
        )
        print(f"  {result.method} / {result.dataset} / {ev.split} ({ev.n_generated} generated): {vals}")
    if result.random_init:
        print("  random-init weights were used: this result is kept out of the leaderboard")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "ls":
            return cmd_ls()
        if args.command == "leaderboard":
            from benchmark.results import format_leaderboard, rebuild_leaderboard

            print(format_leaderboard(rebuild_leaderboard(args.results, echo=print)))
            return 0
        if args.command == "prepare":
            ds = registry.get("dataset", args.dataset)
            print(ds.prepare(root=args.root, raw=args.raw))
            return 0
        if args.command == "generate":
            from benchmark.run import generate

            paths = generate(args.checkpoint, args.graphs, args.out, args.seed, args.samples, args.layout, args.device)
            print("\n".join(map(str, paths)))
            return 0

        from benchmark.config import build_run_config, parse_sets
        from benchmark.results import format_leaderboard, rebuild_leaderboard

        sets = parse_sets(args.sets)
        progress = not args.quiet
        if args.command == "run":
            from benchmark.run import run

            cfg = build_run_config(args.method, args.dataset, args.tier, args.seed, args.device, sets, args.protocol)
            result, path = run(cfg, args.out, args.results, progress)
        else:
            from benchmark.run import eval_checkpoint

            result, path = eval_checkpoint(args.checkpoint, args.device, sets, args.results, progress)
        _print_result(result, path)
        print()
        print(format_leaderboard(rebuild_leaderboard(args.results)))
        return 0
    except (registry.UnknownNameError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
