"""The benchmark's backend registry: ours (flex_fa4 `backend=` names) and peers.

A `Runner` turns one benchmark case into a `Prepared` op, or raises `Skip` with the
reason it cannot run that case (missing package, no GPU, variant not expressible).
`register()` is the hook for adding runners: peers.py registers the comparison
libraries, and tests inject deliberately wrong ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .timing import call_seconds
from .variants import Mods


class Skip(Exception):
    """This runner cannot run this case; the message says why."""


@dataclass(frozen=True)
class Case:
    variant: str
    S: int
    D: int
    B: int
    H: int
    dtype: torch.dtype
    mode: str  # "fwd" | "fwdbwd"
    device: torch.device

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def _same(t):
    return t


@dataclass
class Prepared:
    """`fn(q, k, v) -> out` in the runner's own layout; `to_native` / `from_native`
    convert (B, H, S, D) tensors to and from it outside the timed region."""
    fn: Callable
    mask_ms: Optional[float] = None
    to_native: Callable = _same
    from_native: Callable = _same


@dataclass(frozen=True)
class Runner:
    name: str
    prepare: Callable[[Case, Mods], Prepared]
    ours: bool = False
    about: str = ""


RUNNERS: dict[str, Runner] = {}


def register(runner: Runner) -> Runner:
    """Add (or replace) a runner under its name."""
    RUNNERS[runner.name] = runner
    return runner


def unregister(name: str) -> None:
    RUNNERS.pop(name, None)


def check_runner_names(names: Sequence[str]) -> list[str]:
    """`names` as a list, or SystemExit naming those no runner is registered under (the
    command-line check of `flex-fa4 bench` and the scripts in benchmarks/)."""
    unknown = [n for n in names if n not in RUNNERS]
    if unknown:
        raise SystemExit(f"unknown backend(s) {unknown}; known: {', '.join(RUNNERS)}")
    return list(names)


def build_mask_ms(build: Callable, device: torch.device):
    """(milliseconds, mask) of the second of two synchronized builds: the first carries
    one-time costs (tracing the mask_mod, compiling the build) that a training loop pays
    once, not per mask."""
    for _ in range(2):
        seconds, mask = call_seconds(build, (), device)
    return seconds * 1e3, mask


# ----------------------------------------------------------------------------- ours
OURS = ("fa4", "triton", "reference")


def _ours(name: str) -> Runner:
    def prepare(case: Case, mods: Mods) -> Prepared:
        import flex_fa4

        # a backend that cannot serve the case says why in its first call
        # (flex_fa4.BackendUnavailableError), which the runner reports as a skip
        mask_ms, block_mask = None, None
        if mods.mask_mod is not None:
            mask_ms, block_mask = build_mask_ms(lambda: flex_fa4.create_block_mask(
                mods.mask_mod, case.B, case.H, case.S, case.S, device=case.device), case.device)

        def fn(q, k, v):
            return flex_fa4.flex_attention(q, k, v, score_mod=mods.score_mod, block_mask=block_mask, backend=name)

        return Prepared(fn, mask_ms)

    return Runner(name, prepare, ours=True, about=f"flex_fa4.flex_attention(backend={name!r})")


for _name in OURS:
    register(_ours(_name))
REFERENCE = _ours("reference")  # what every result is checked against, whatever is registered
