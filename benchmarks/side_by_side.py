"""Peer and ours timed alternately in one process, on the same inputs: the only speed comparison we report.

A figure from another run, machine or day is not a comparison (these 2-core machines move by 20-40 % within an
hour), so every pair runs here as ``peer, ours, ours, peer, ...`` (the order flips each round so neither side
always runs on a warmer cache), after warm-up rounds of both, and the medians and their ratio go to
``benchmark.extra_info`` and to the terminal summary (``benchmarks/conftest.py``).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

#: One line per measured pair, printed by ``benchmarks/conftest.py`` at the end of the session.
RESULTS: list[str] = []


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def alternate(
    benchmark: Any,
    label: str,
    peer: Callable[[], object],
    ours: Callable[[], object],
    *,
    rounds: int = 5,
    warmup: int = 2,
    peer_name: str = "peer",
    items: int | None = None,
) -> dict[str, float]:
    """Time ``peer`` and ``ours`` alternately for ``rounds`` rounds after ``warmup`` rounds of each.

    Returns (and records in ``benchmark.extra_info``) both medians in seconds, their minima, and
    ``ratio = peer_median / ours_median`` (> 1: ours is faster). ``items`` (images per call) adds img/s.
    """
    # SG2I_BENCH_ROUNDS=r[,w]: fewer rounds (and warm-ups) for a quick look while developing.
    env = os.environ.get("SG2I_BENCH_ROUNDS")
    if env:
        rounds, _, w = env.partition(",")
        rounds, warmup = int(rounds), int(w) if w else warmup
    for _ in range(warmup):
        peer()
        ours()
    times: dict[str, list[float]] = {"peer": [], "ours": []}
    fns = {"peer": peer, "ours": ours}
    counter = iter(range(10**9))

    def one_round() -> None:
        order = ("peer", "ours") if next(counter) % 2 == 0 else ("ours", "peer")
        for name in order:
            _sync()
            t0 = time.perf_counter()
            fns[name]()
            _sync()
            times[name].append(time.perf_counter() - t0)

    benchmark.pedantic(one_round, rounds=rounds, iterations=1)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "peer_s_median": med["peer"],
        "ours_s_median": med["ours"],
        "peer_s_min": min(times["peer"]),
        "ours_s_min": min(times["ours"]),
        "ratio_peer_over_ours": med["peer"] / med["ours"],
        "rounds": len(times["ours"]),
    }
    if items:
        out["peer_items_per_s"] = items / med["peer"]
        out["ours_items_per_s"] = items / med["ours"]
    benchmark.extra_info.update(peer=peer_name, threads=torch.get_num_threads(), **out)
    line = (
        f"{label}: {peer_name} {med['peer']:.3f} s, ours {med['ours']:.3f} s, "
        f"peer/ours {out['ratio_peer_over_ours']:.2f} (medians of {out['rounds']} alternating rounds, "
        f"{torch.get_num_threads()} threads)"
    )
    RESULTS.append(line)
    print("\n[side-by-side] " + line, flush=True)
    return out
