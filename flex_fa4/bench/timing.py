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


def time_ops(ops: Sequence[tuple[Callable, Sequence[Sequence]]], device: torch.device,
             reps: int, warmup: int, rounds: int = 5) -> list[Timing]:
    """Median time of each `(fn, arg_sets)` over `reps` runs, the ops interleaved: in each
    of `rounds` rounds every op runs one untimed lead-in run, then its share of the reps
    back to back; the order of the ops turns by one from round to round.

    Why interleave: under a heavy kernel the GPU reaches its power cap and its clock drops
    (H200, dense S=8192: SM clock 1515 to 1695 MHz while the power read up to 697 W, 1980
    MHz before and after). Timed one backend after the other, each saw whatever clock the
    ones before it left (one sweep: three backends' medians 10 to 15% over their minimum,
    another's 0.4%). Interleaved, every op sees the same mix of clocks.
    Why the lead-in: after another op the GPU's queue may be empty, and the first run's
    events would then also time this op's host work before its launch; the lead-in absorbs
    that, so the timed runs queue behind it as in a loop of one op."""
    n_ops = len(ops)
    for fn, arg_sets in ops:
        for i in range(warmup):
            fn(*arg_sets[i % len(arg_sets)])
    sync(device)
    rounds = max(1, min(rounds, reps))
    shares = [reps // rounds + (1 if r < reps % rounds else 0) for r in range(rounds)]
    ms: list[list[float]] = [[] for _ in ops]
    done = [0] * n_ops  # runs so far, so each op keeps cycling through its input sets
    pending = []  # (op index, start event, end event) on CUDA
    for r, share in enumerate(shares):
        for j in range(n_ops):
            k = (r + j) % n_ops
            fn, arg_sets = ops[k]
            fn(*arg_sets[(done[k] + len(arg_sets) - 1) % len(arg_sets)])  # lead-in
            for _ in range(share):
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
    return [Timing(statistics.median(m), min(m), reps) for m in ms]
