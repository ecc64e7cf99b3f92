"""Peer and ours timed alternately in one process, on the same inputs: the only speed comparison we report.

A figure from another run, machine or day is not a comparison (these 2-core machines move by 20-40 % within an
hour), so every pair runs here as ``peer, ours, ours, peer, ...`` (the order flips each round so neither side
always runs on a warmer cache), after warm-up rounds of both, and the medians and their ratio go to
``benchmark.extra_info`` and to the terminal summary (``benchmarks/conftest.py``). Each round's own ratio
(peer and ours timed back to back) is reported as a range beside it, with the ratio of the two minima: when the
machine drifts during a run, they show how far one figure can be trusted.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

#: ``(label, peer name, summarize(...), threads)`` per measured pair, printed as one table by
#: ``benchmarks/conftest.py`` (:func:`format_table`) at the end of the session.
RESULTS: list[tuple[str, str, dict[str, float], int]] = []


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def summarize(peer_s: list[float], ours_s: list[float], items: int | None = None) -> dict[str, float]:
    """Medians, minima and ``ratio_peer_over_ours = median(peer) / median(ours)`` of paired timings (round i of
    each side ran back to back), the ratio of the minima (contention only ever adds time, so each side's
    fastest round is its least disturbed one), and the median and range of the per-round ratios."""
    if not peer_s or len(peer_s) != len(ours_s):
        raise ValueError(f"summarize: need paired timings, got {len(peer_s)} peer and {len(ours_s)} ours")
    med_p, med_o = statistics.median(peer_s), statistics.median(ours_s)
    per_round = [p / o for p, o in zip(peer_s, ours_s)]
    out = {
        "peer_s_median": med_p,
        "ours_s_median": med_o,
        "peer_s_min": min(peer_s),
        "ours_s_min": min(ours_s),
        "ratio_peer_over_ours": med_p / med_o,
        "ratio_of_minima": min(peer_s) / min(ours_s),
        "ratio_round_median": statistics.median(per_round),
        "ratio_round_min": min(per_round),
        "ratio_round_max": max(per_round),
        "rounds": len(ours_s),
    }
    if items:
        out["peer_items_per_s"] = items / med_p
        out["ours_items_per_s"] = items / med_o
    return out


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

    Returns (and records in ``benchmark.extra_info``) :func:`summarize` of the timings: both medians in seconds,
    their minima, ``ratio_peer_over_ours`` (> 1: ours is faster) and the per-round ratio range. ``items``
    (images per call) adds img/s.
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
    out = summarize(times["peer"], times["ours"], items)
    benchmark.extra_info.update(peer=peer_name, threads=torch.get_num_threads(), **out)
    RESULTS.append((label, peer_name, out, torch.get_num_threads()))
    print(
        f"\n[side-by-side] {label}\n    {peer_name} {out['peer_s_median']:.3f} s | ours {out['ours_s_median']:.3f} s"
        f" | peer/ours {out['ratio_peer_over_ours']:.2f} (medians of {out['rounds']}) | minima "
        f"{out['ratio_of_minima']:.2f} | per round {out['ratio_round_min']:.2f}-{out['ratio_round_max']:.2f}",
        flush=True,
    )
    return out


def format_table(results: list[tuple[str, str, dict[str, float], int]]) -> list[str]:
    """The pairs as a table that fits 120 columns: each pair's label and figures, then its peer on the next line."""
    rows = [
        f"{'pair / peer':<62}{'peer s':>8}{'ours s':>8}{'peer/ours':>11}{'minima':>8}{'per round':>12}{'rounds':>7}"
    ]
    for label, peer_name, out, threads in results:
        if len(label) > 61:  # a long label gets its own line
            rows.append(label)
            label = ""
        rows.append(
            f"{label:<62}{out['peer_s_median']:>8.3f}{out['ours_s_median']:>8.3f}"
            f"{out['ratio_peer_over_ours']:>11.2f}{out['ratio_of_minima']:>8.2f}"
            f"{out['ratio_round_min']:>7.2f}-{out['ratio_round_max']:<4.2f}{int(out['rounds']):>7}"
        )
        rows.append(f"  vs {peer_name}, {threads} threads")
    rows.append(
        "peer/ours > 1: ours is faster. Medians of alternating rounds; minima: fastest round of each side."
    )
    return rows
