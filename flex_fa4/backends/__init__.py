"""Backend registry and selection.

`select_backend` picks who runs a call: an explicitly named backend must serve
it or the call fails with the reason (never a silent switch); `auto` tries fa4
(Hopper), then triton (any CUDA GPU), then the reference, logging why each
faster one was passed over. `explain` returns the same decision as text.
"""
from __future__ import annotations

import logging

from .base import AttentionCall, Backend
from .kernels import FA4Backend, TritonBackend
from .reference import ReferenceBackend

log = logging.getLogger("flex_fa4")

BACKENDS: dict[str, Backend] = {b.name: b for b in (FA4Backend(), TritonBackend(), ReferenceBackend())}
BACKEND_NAMES = ("auto", *BACKENDS)
_AUTO_ORDER = ("fa4", "triton", "reference")


class BackendUnavailableError(ValueError):
    """An explicitly requested backend cannot serve the call; the message says why."""

_logged: set[str] = set()


def _log_once(level: int, message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        log.log(level, message)


def check_backend_name(name: str) -> None:
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")


def decide(call: AttentionCall, requested: str = "auto") -> tuple[Backend | None, list[tuple[str, str | None]]]:
    """The chosen backend (None if an explicit one cannot serve) and, for each
    backend considered, the reason it was passed over (None for the chosen)."""
    check_backend_name(requested)
    names = _AUTO_ORDER if requested == "auto" else (requested,)
    if requested == "auto" and call.q.device.type != "cuda":
        names = ("reference",)  # the kernels need a GPU; the interpreter is for tests
    considered = []
    for name in names:
        reason = BACKENDS[name].why_not(call)
        considered.append((name, reason))
        if reason is None:
            return BACKENDS[name], considered
    return None, considered


def select_backend(call: AttentionCall, requested: str = "auto") -> Backend:
    backend, considered = decide(call, requested)
    if backend is None:
        name, reason = considered[-1]
        raise BackendUnavailableError(f"backend {name!r} cannot serve this call: {reason}")
    passed = [f"{n}: {r}" for n, r in considered if r is not None]
    if passed:
        level = logging.WARNING if backend.name == "reference" else logging.INFO
        _log_once(level, f"flex_fa4 backend=auto chose {backend.name!r}; passed over " + "; ".join(passed))
    return backend


__all__ = ["AttentionCall", "Backend", "BackendUnavailableError", "BACKENDS", "BACKEND_NAMES", "decide", "select_backend", "check_backend_name"]
