"""Timing of ops: warm-up, then the median of many runs, the ops of one case interleaved.

On CUDA each run sits between two CUDA events (device time, no host sync inside the
loop) and the runs cycle through several input sets, so an op whose inputs fit in L2
is not timed with its inputs already cached. On CPU, time.perf_counter with fewer reps.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass(frozen=True)
class Timing:
    median_ms: float
    min_ms: float
    reps: int


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def n_input_sets(bytes_per_set: int, device: torch.device, cap: int = 8) -> int:
    """Enough input sets that cycling through them spans twice the L2 cache (at least 2)."""
    if device.type != "cuda":
        return 2
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20)
    return max(2, min(cap, math.ceil(2 * l2 / max(1, bytes_per_set))))


def call_seconds(fn: Callable, args: Sequence, device: torch.device):
    """(seconds, result) of one synchronized call: for first calls (compile, autotune)
    and mask builds, which are timed once, not as a median."""
    sync(device)
    t0 = time.perf_counter()
    out = fn(*args)
    sync(device)
    return time.perf_counter() - t0, out


def reps_for(reps: int, est_seconds: float, min_seconds: float, max_reps: int) -> int:
    """`reps`, raised so the timed runs take at least `min_seconds` (at most `max_reps`)."""
    if min_seconds <= 0 or est_seconds <= 0:
        return reps
    return max(reps, min(max_reps, math.ceil(min_seconds / est_seconds)))


def time_ops(ops: Sequence[tuple[Callable, Sequence[Sequence]]], device: torch.device,
             reps: int, warmup: int, rounds: int = 5, min_seconds: float = 0.0,
             max_reps: int = 2000) -> list[Timing]:
    """Median time of each `(fn, arg_sets)` over `reps` runs, the ops interleaved: in each
    of `rounds` rounds every op runs one untimed lead-in run, then its share of the reps
    back to back; the order of the ops turns by one from round to round.

    With `min_seconds`, an op whose warm-up runs say it is fast gets more reps (up to
    `max_reps`), so that its timed runs take at least that long. Why: at S=8192 under the
    power cap a median of 30 runs (50-100 ms of work) moved by up to 3% between processes,
    even between two copies of one kernel; with 300 runs per op three processes agreed to
    0.1-0.6% on an H200 and 1-3% on an H100 (BENCHMARKS.md, session 10).

    Why interleave: under a heavy kernel the GPU reaches its power cap and its clock drops
    (H200, dense S=8192: SM clock 1515 to 1695 MHz while the power read up to 697 W, 1980
    MHz before and after). Timed one backend after the other, each saw whatever clock the
    ones before it left (one sweep: three backends' medians 10 to 15% over their minimum,
    another's 0.4%). Interleaved, every op sees the same mix of clocks.
    Why the lead-in: after another op the GPU's queue may be empty, and the first run's
    events would then also time this op's host work before its launch; the lead-in absorbs
    that, so the timed runs queue behind it as in a loop of one op."""
    n_ops = len(ops)
    op_reps = []
    for fn, arg_sets in ops:
        sync(device)
        t0 = time.perf_counter()
        for i in range(warmup):
            fn(*arg_sets[i % len(arg_sets)])
        sync(device)
        est = (time.perf_counter() - t0) / warmup if warmup else 0.0
        op_reps.append(reps_for(reps, est, min_seconds, max_reps))
    rounds = max(1, min(rounds, reps))
    shares = [[n // rounds + (1 if r < n % rounds else 0) for n in op_reps] for r in range(rounds)]
    ms: list[list[float]] = [[] for _ in ops]
    done = [0] * n_ops  # runs so far, so each op keeps cycling through its input sets
    pending = []  # (op index, start event, end event) on CUDA
    for r, round_shares in enumerate(shares):
        for j in range(n_ops):
            k = (r + j) % n_ops
            fn, arg_sets = ops[k]
            fn(*arg_sets[(done[k] + len(arg_sets) - 1) % len(arg_sets)])  # lead-in
            for _ in range(round_shares[k]):
                args = arg_sets[done[k] % len(arg_sets)]
                done[k] += 1
                if device.type == "cuda":
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn(*args)
                    end.record()
                    pending.append((k, start, end))
                else:
                    t0 = time.perf_counter()
                    fn(*args)
                    ms[k].append((time.perf_counter() - t0) * 1e3)
    sync(device)
    for k, start, end in pending:
        ms[k].append(start.elapsed_time(end))
    return [Timing(statistics.median(m), min(m), n) for m, n in zip(ms, op_reps)]
