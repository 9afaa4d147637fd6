"""Timing of one op: warm-up, then the median of many runs.

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


def time_op(fn: Callable, arg_sets: Sequence[Sequence], device: torch.device,
            reps: int, warmup: int) -> Timing:
    """Median time of `fn(*arg_sets[i % len(arg_sets)])` over `reps` runs."""
    n = len(arg_sets)
    for i in range(warmup):
        fn(*arg_sets[i % n])
    sync(device)
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            starts[i].record()
            fn(*arg_sets[i % n])
            ends[i].record()
        torch.cuda.synchronize(device)
        ms = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        ms = []
        for i in range(reps):
            t0 = time.perf_counter()
            fn(*arg_sets[i % n])
            ms.append((time.perf_counter() - t0) * 1e3)
    return Timing(statistics.median(ms), min(ms), reps)
