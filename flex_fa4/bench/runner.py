"""The sweep: for each case and backend, build the mask, make the first call, check
the result against the reference backend; then time the backends that passed, together.

A result that disagrees with the reference is reported WRONG and never timed: a fast
wrong kernel must not show up as a speed-up. The reference is flex_fa4's
backend="reference" in float64 on CPU (float32 on CUDA) on the same inputs, over a
slice of the batch and heads when the full problem would be too costly to check.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
import traceback
from typing import Callable, Optional, Sequence

import torch

from . import flops as flop_count
from .backends import REFERENCE, RUNNERS, Case, Prepared, Skip
from .timing import call_seconds, n_input_sets, time_ops
from .variants import Mods, resolve

TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 2e-2, torch.float32: 1e-3, torch.float64: 1e-6}
MODES = ("fwd", "fwdbwd")


@dataclasses.dataclass
class SweepConfig:
    variants: Sequence[str]
    seqlens: Sequence[int]
    head_dims: Sequence[int]
    batch: int
    heads: int
    dtypes: Sequence[torch.dtype]
    modes: Sequence[str]
    backends: Sequence[str]
    device: torch.device
    reps: int
    warmup: int
    min_time_s: float = 0.0  # timed runs per op take at least this long (more reps, see time_ops)
    check_pairs: int = 1 << 32  # most (b, h, q, kv) pairs the reference check computes
    seed: int = 0
    time_limit_s: Optional[float] = None  # start no run after this many seconds


@dataclasses.dataclass
class Result:
    variant: str
    S: int
    D: int
    B: int
    H: int
    dtype: str
    mode: str
    backend: str
    ours: bool
    status: str  # ok | WRONG | SKIP | ERROR
    reason: str = ""
    fraction: float = 1.0  # unmasked (q, kv) pairs / all pairs
    flops: float = 0.0
    mask_ms: Optional[float] = None
    first_call_s: Optional[float] = None
    ms: Optional[float] = None
    min_ms: Optional[float] = None
    reps: Optional[int] = None  # timed runs behind ms / min_ms
    tflops: Optional[float] = None
    rel_err: Optional[float] = None  # worst relative error over out (and dq, dk, dv)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Inputs:
    """A case's input sets and the reference it is checked against (case_inputs)."""
    sets: list  # [(q, k, v[, do])] in (B, H, S, D)
    ref: list  # reference out (and dq, dk, dv) on the check slice
    check_b: int
    check_h: int


def reference_dtype(device: torch.device) -> torch.dtype:
    return torch.float64 if device.type == "cpu" else torch.float32


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| in float64; inf when got is not finite.

    A global norm can hide a few wrong rows among thousands, so the worst single
    row (last dim) also counts, at a tenth of its weight: one fully wrong row
    scores >= 0.1 whatever the size, while bf16 rounding keeps rows near 1e-2."""
    got, want = got.detach().double(), want.detach().double()
    if not torch.isfinite(got).all():
        return math.inf
    overall = float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want).clamp_min(1e-30))
    scale = torch.linalg.vector_norm(want, dim=-1).mean().clamp_min(1e-30)
    worst_row = float(torch.linalg.vector_norm(got - want, dim=-1).max() / scale)
    return max(overall, worst_row / 10)


def make_inputs(case: Case, n: int, seed: int = 0) -> list:
    """`n` seeded input sets (q, k, v[, dout]) in (B, H, S, D); q, k, v require grad for fwdbwd."""
    shape = (case.B, case.H, case.S, case.D)
    grad = case.mode == "fwdbwd"
    sets = []
    for i in range(n):
        g = torch.Generator(device=case.device).manual_seed(seed + i)
        ts = [torch.randn(shape, generator=g, device=case.device, dtype=torch.float32).to(case.dtype)
              for _ in range(4 if grad else 3)]
        for t in ts[:3]:
            t.requires_grad_(grad)
        sets.append(tuple(ts))
    return sets


def _check_slice(case: Case, budget: int) -> tuple[int, int]:
    """(batches, heads) the reference check covers: all of them when affordable."""
    per_head = case.S * case.S
    heads = max(1, min(case.H, budget // per_head))
    batches = max(1, min(case.B, budget // (per_head * case.H))) if heads == case.H else 1
    return batches, heads


def timed_callable(prep: Prepared, mode: str) -> Callable:
    """The timed callable: forward, or forward and backward (returning out and grads)."""
    if mode == "fwd":
        return lambda q, k, v: (prep.fn(q, k, v),)

    def fwd_bwd(q, k, v, do):
        out = prep.fn(q, k, v)
        return (out, *torch.autograd.grad(out, (q, k, v), do))

    return fwd_bwd


def _reference(case: Case, mods: Mods, first_set, check_b: int, check_h: int) -> list:
    """Reference out (and grads) on the check slice of the first input set, upcast."""
    dtype = reference_dtype(case.device)
    prep = REFERENCE.prepare(dataclasses.replace(case, B=check_b, H=check_h, dtype=dtype), mods)
    sl = [t[:check_b, :check_h].detach().to(dtype).requires_grad_(case.mode == "fwdbwd") for t in first_set]
    return [t.detach() for t in timed_callable(prep, case.mode)(*sl)]


def case_inputs(case: Case, mods: Mods, n_sets: int, check_pairs: int, seed: int = 0) -> Inputs:
    """`n_sets` seeded input sets and the reference outputs on the first set's check slice."""
    sets = make_inputs(case, n_sets, seed)
    check_b, check_h = _check_slice(case, check_pairs)
    return Inputs(sets, _reference(case, mods, sets[0], check_b, check_h), check_b, check_h)


@dataclasses.dataclass
class Checked:
    """A backend that passed its check: its op and its inputs in its own layout, to be
    timed (with the case's others in the sweep; alone in benchmarks/sustained.py)."""
    base: dict
    op: Callable
    sets: list


def check_backend(case: Case, runner, mods: Mods, inputs: Inputs, base: dict):
    """Prepare, first call and check: a final Result (SKIP, ERROR, WRONG) or a Checked."""
    try:
        prep = runner.prepare(case, mods)
    except Skip as e:
        return Result(**base, status="SKIP", reason=str(e))
    except Exception as e:  # noqa: BLE001 - every failure becomes a row, the sweep goes on
        return _failure(base, e)
    base["mask_ms"] = prep.mask_ms
    try:
        sets = [tuple(prep.to_native(t) for t in s) for s in inputs.sets]
        op = timed_callable(prep, case.mode)
        base["first_call_s"], got = call_seconds(op, sets[0], case.device)
    except Exception as e:  # noqa: BLE001
        return _failure(base, e)
    errs = [relative_error(prep.from_native(g)[: inputs.check_b, : inputs.check_h], r)
            for g, r in zip(got, inputs.ref)]
    base["rel_err"] = worst = max(errs)
    tol = TOLERANCE[case.dtype]
    if not worst <= tol:
        names = ("out", "dq", "dk", "dv")
        detail = ", ".join(f"{n} {e:.2e}" for n, e in zip(names, errs) if not e <= tol)
        return Result(**base, status="WRONG", reason=f"relative error {detail} > {tol:g}")
    return Checked(base, op, sets)


def _time_checked(checked: list[Checked], case: Case, cfg: SweepConfig) -> list[Result]:
    """Time the checked backends of one case together (interleaved, see time_ops)."""
    try:
        timings = time_ops([(c.op, c.sets) for c in checked], case.device, reps=cfg.reps, warmup=cfg.warmup,
                           min_seconds=cfg.min_time_s)
    except Exception as e:  # noqa: BLE001 - then time them one by one to find the one that fails
        if len(checked) == 1:
            return [_failure(checked[0].base, e)]
        return [r for c in checked for r in _time_checked([c], case, cfg)]
    out = []
    for c, t in zip(checked, timings):
        flops = c.base["flops"]
        tflops = flops / (t.median_ms * 1e-3) / 1e12 if flops else None
        out.append(Result(**c.base, status="ok", ms=t.median_ms, min_ms=t.min_ms, reps=t.reps,
                          tflops=tflops))
    return out


_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _where(e: Exception) -> str:
    """file:line where `e` was raised: the innermost frame in this project, else the innermost."""
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if f.filename.startswith(_PROJECT_ROOT) and "/site-packages/" not in f.filename]
    if not frames:
        return ""
    frame = (ours or frames)[-1]
    name = os.path.relpath(frame.filename, _PROJECT_ROOT) if ours else frame.filename
    return f" (at {name}:{frame.lineno})"


def _failure(base: dict, e: Exception) -> Result:
    msg = f"{type(e).__name__}: {e}".splitlines()[0][:300] + _where(e)
    from flex_fa4 import BackendUnavailableError

    if isinstance(e, BackendUnavailableError):
        return Result(**base, status="SKIP", reason=str(e).splitlines()[0])
    if isinstance(e, ImportError):  # a backend whose own checks missed a package it needs
        return Result(**base, status="SKIP", reason=f"missing package ({msg})")
    if isinstance(e, torch.OutOfMemoryError) and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return Result(**base, status="ERROR", reason=msg)


def cases(cfg: SweepConfig):
    """(variant, S) groups, each with its cases, in sweep order."""
    for variant, S in itertools.product(cfg.variants, cfg.seqlens):
        yield variant, S, [Case(variant, S, D, cfg.batch, cfg.heads, dt, mode, cfg.device)
                           for D, dt, mode in itertools.product(cfg.head_dims, cfg.dtypes, cfg.modes)]


def run_sweep(cfg: SweepConfig, progress: bool = True,
              on_case: Optional[Callable[[list[Result]], None]] = None) -> list[Result]:
    """Every case x backend in order. `on_case(results so far)` runs after each case
    (the CLI saves partial results, so a run cut short still leaves them). Once
    `cfg.time_limit_s` has passed, the remaining runs are recorded as skipped."""
    from tqdm import tqdm

    for name in cfg.backends:
        if name not in RUNNERS:
            raise ValueError(f"unknown backend {name!r}; known: {', '.join(RUNNERS)}")
    factories = {v: resolve(v) for v in cfg.variants}
    deadline = None if cfg.time_limit_s is None else time.monotonic() + cfg.time_limit_s
    total = len(cfg.variants) * len(cfg.seqlens) * len(cfg.head_dims) * len(cfg.dtypes) * len(cfg.modes)
    results: list[Result] = []
    with tqdm(total=total * len(cfg.backends), disable=not progress, unit="run", dynamic_ncols=True) as bar:
        for variant, S, group in cases(cfg):
            mods, fraction, why = None, 1.0, None
            if not _past(deadline):
                try:
                    mods = factories[variant](cfg.batch, cfg.heads, S, cfg.device)
                    fraction = flop_count.unmasked_fraction(mods.mask_mod, cfg.batch, cfg.heads, S, S, cfg.device)
                except Exception as e:  # noqa: BLE001 - a broken user variant fails its rows, not the sweep
                    why = f"{VARIANT_FAILED}: {type(e).__name__}: {e}".splitlines()[0][:300] + _where(e)
            for case in group:
                results += _run_case(case, mods, fraction, cfg, bar, deadline, why)
                if on_case is not None:
                    on_case(results)
    return results


VARIANT_FAILED = "building the variant failed"  # a user mod's error, not a backend's


def result_base(case: Case, backend: str, fraction: float, flops: float) -> dict:
    """The Result fields of one case and backend that do not depend on how the run went."""
    return dict(variant=case.variant, S=case.S, D=case.D, B=case.B, H=case.H, dtype=case.dtype_name,
                mode=case.mode, backend=backend, ours=RUNNERS[backend].ours, fraction=fraction,
                flops=flops)


def _past(deadline: Optional[float]) -> bool:
    return deadline is not None and time.monotonic() > deadline


def _run_case(case: Case, mods: Optional[Mods], fraction: float, cfg: SweepConfig, bar,
              deadline: Optional[float], why: Optional[str] = None) -> list[Result]:
    """One case on every backend; `why` (the variant could not be built) fails them all."""
    flops = flop_count.attention_flops(case.B, case.H, case.S, case.S, case.D, fraction, case.mode)
    inputs = None
    if why is None and not _past(deadline):
        bytes_per_set = (4 if case.mode == "fwdbwd" else 3) * case.B * case.H * case.S * case.D * case.dtype.itemsize
        try:
            inputs = case_inputs(case, mods, n_input_sets(bytes_per_set, case.device), cfg.check_pairs, cfg.seed)
        except Exception as e:  # noqa: BLE001 - nothing can be checked, so nothing is timed
            why = (f"inputs or reference failed, nothing checked or timed ({type(e).__name__}: {e}"
                   .splitlines()[0][:300] + _where(e) + ")")
    rows: list = []  # per backend: a final Result, or a Checked still to be timed
    for name in cfg.backends:
        runner = RUNNERS[name]
        bar.set_description(f"{case.variant} S={case.S} D={case.D} {case.dtype_name} {case.mode} {name}")
        base = result_base(case, name, fraction, flops)
        if why is not None:
            rows.append(Result(**base, status="ERROR", reason=why))
        elif inputs is None or _past(deadline):
            rows.append(Result(**base, status="SKIP", reason=f"not run: the {cfg.time_limit_s:g} s time limit passed"))
        else:
            rows.append(check_backend(case, runner, mods, inputs, base))
        bar.update(1)
    checked = [r for r in rows if isinstance(r, Checked)]
    if checked:
        bar.set_description(f"{case.variant} S={case.S} D={case.D} {case.dtype_name} {case.mode} timing")
        timed = iter(_time_checked(checked, case, cfg))
        rows = [next(timed) if isinstance(r, Checked) else r for r in rows]
    del checked
    del inputs
    if case.device.type == "cuda":
        torch.cuda.empty_cache()
    return rows
