"""The public entry point: a drop-in for torch.nn.attention.flex_attention.

The call is validated once, the mods traced into IR (mask_mod traces are kept on
the BlockMask), a backend chosen (see backends/__init__.py), and the result
returned in torch's conventions: `out`, `(out, lse)` with return_lse, or
`(out, AuxOutput)` with return_aux."""
from __future__ import annotations

import functools
import logging
import math
from typing import Callable, NamedTuple, Optional

import torch

from mod_codegen import TracedMod, trace_cached

from . import call_cache
from .autograd import kernel_attention
from .backends import AttentionCall, check_backend_name, decide, select_backend
from .block_mask import BlockMask, create_block_mask, noop_mask
from .validation import as_block_mask, check_block_mask, check_qkv, check_scale


class AuxRequest(NamedTuple):
    """Which auxiliary outputs flex_attention should return (as in torch)."""

    lse: bool = False
    max_scores: bool = False


class AuxOutput(NamedTuple):
    """Auxiliary outputs: natural-log LSE [B, Hq, Sq] and per-row max of the
    (scaled, score_mod-ed, unmasked) scores; None where not requested."""

    lse: Optional[torch.Tensor] = None
    max_scores: Optional[torch.Tensor] = None


# kernel_options["BACKEND"] values torch users already write
_TORCH_BACKEND_NAMES = {"FLASH": "fa4", "TRITON": "triton", "AUTO": "auto", "DEFAULT": "auto"}
_KNOWN_KERNEL_OPTIONS = frozenset({"BACKEND", "deterministic"})


@functools.lru_cache(maxsize=32)  # bounded: a decode loop with a growing KV length must not leak
def _default_block_mask(q_len: int, kv_len: int, device: torch.device) -> BlockMask:
    """No block_mask: every block visited (cut blocks at the sequence end partial)."""
    return create_block_mask(noop_mask, None, None, q_len, kv_len, device=device)


def _check_captured(traced: TracedMod, device: torch.device) -> None:
    for t in traced.buffers:
        if t.device != device:
            raise ValueError(
                f"{traced.kind} '{traced.name}' captures a tensor of shape {tuple(t.shape)} on {t.device}, "
                f"but query is on {device}; move it to {device}"
            )


def _traced_mask(block_mask: BlockMask, device: torch.device) -> Optional[TracedMod]:
    """The BlockMask's mask_mod as IR (None for noop_mask), traced once per mask."""
    if block_mask.mask_mod is noop_mask:
        return None
    cached = getattr(block_mask, "_traced_mask", None)
    if cached is None:
        cached = trace_cached(block_mask.mask_mod, "mask_mod")
        block_mask._traced_mask = cached
    _check_captured(cached, device)
    return cached


def _build_call(query, key, value, score_mod, block_mask, scale, enable_gqa, need_lse, need_max,
                kernel_options, traced_score: Optional[TracedMod] = None) -> AttentionCall:
    """Validate the call and pack it; `traced_score` is score_mod's trace when the
    caller already has it."""
    check_qkv(query, key, value, enable_gqa)
    check_scale(scale)
    if score_mod is not None and not callable(score_mod):
        raise TypeError(f"score_mod must be callable or None, got {type(score_mod).__name__}")
    if kernel_options is not None and not isinstance(kernel_options, dict):
        raise TypeError(f"kernel_options must be a dict or None, got {type(kernel_options).__name__}")
    unknown = sorted(set(kernel_options or ()) - _KNOWN_KERNEL_OPTIONS)
    if unknown:  # torch's tuning keys (BLOCK_M, num_warps, ...) mean nothing here: say so once
        from .backends import _log_once

        _log_once(logging.WARNING, f"flex_fa4 ignores kernel_options {unknown}; it understands "
                                   f"{sorted(_KNOWN_KERNEL_OPTIONS)}")
    dense = block_mask is None
    if dense:
        block_mask = _default_block_mask(query.shape[2], key.shape[2], query.device)
    else:
        block_mask = as_block_mask(block_mask)
        check_block_mask(block_mask, query, key)
    if traced_score is None and score_mod is not None:
        traced_score = trace_cached(score_mod, "score_mod")
    if traced_score is not None:
        _check_captured(traced_score, query.device)
    return AttentionCall(
        q=query, k=key, v=value,
        scale=float(scale) if scale is not None else 1.0 / math.sqrt(query.shape[-1]),
        score_mod=traced_score, mask_mod=_traced_mask(block_mask, query.device),
        block_sparse=block_mask.as_tensors(), dense=dense, need_lse=need_lse, need_max_scores=need_max,
        kernel_options=kernel_options,
    )


def _prepared_call(query, key, value, score_mod, block_mask, scale, enable_gqa, need_lse, need_max,
                   kernel_options, requested: str):
    """(AttentionCall, chosen backend): from the call cache when this call repeats
    an earlier one (Note [call cache] in call_cache.py), else validated and chosen."""
    traced_score = trace_cached(score_mod, "score_mod") if callable(score_mod) else None
    cache_key = owner = None  # owner: the BlockMask that holds the cache entry
    if score_mod is None or traced_score is not None:
        cache_key = call_cache.call_key(requested, query, key, value, traced_score, scale, enable_gqa,
                                        need_lse, need_max, kernel_options)
    if cache_key is not None:
        if block_mask is None:
            owner = _default_block_mask(query.shape[2], key.shape[2], query.device)
        elif isinstance(block_mask, BlockMask):
            owner = block_mask
        else:  # torch's BlockMask, converted (and remembered on it) by an earlier call
            owner = getattr(block_mask, "_flex_fa4_block_mask", None)
        hit = call_cache.lookup(owner, cache_key, traced_score, query, key, value) if owner is not None else None
        if hit is not None:
            return hit
    call = _build_call(query, key, value, score_mod, block_mask, scale, enable_gqa, need_lse, need_max,
                       kernel_options, traced_score)
    chosen = select_backend(call, requested)
    if cache_key is not None:
        if owner is None:  # a torch BlockMask on its first call: _build_call has converted it
            owner = as_block_mask(block_mask)
        call = call_cache.store(owner, cache_key, call, chosen)
    return call, chosen


def _requested_backend(backend: str, kernel_options: Optional[dict]) -> str:
    check_backend_name(backend)
    torch_name = (kernel_options or {}).get("BACKEND")
    if torch_name is not None and backend == "auto":
        if torch_name not in _TORCH_BACKEND_NAMES:
            raise ValueError(f"kernel_options['BACKEND']={torch_name!r}; choose one of {', '.join(_TORCH_BACKEND_NAMES)}")
        return _TORCH_BACKEND_NAMES[torch_name]
    return backend


def flex_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    score_mod: Optional[Callable] = None,
    block_mask: Optional[BlockMask] = None,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    return_lse: bool = False,
    kernel_options: Optional[dict] = None,
    *,
    return_aux: Optional[AuxRequest] = None,
    backend: str = "auto",
):
    """softmax(score_mod(q @ k^T * scale) masked by block_mask) @ v.

    query (B, Hq, Sq, D), key (B, Hkv, Skv, D), value (B, Hkv, Skv, Dv) ->
    out (B, Hq, Sq, Dv). Fully masked rows give 0 (and LSE -inf). `backend`:
    "auto" | "fa4" | "triton" | "reference"; see `explain` for the choice."""
    if return_lse and return_aux is not None:
        raise ValueError("give return_lse or return_aux, not both (return_aux=AuxRequest(lse=True) replaces return_lse)")
    if return_aux is not None and not isinstance(return_aux, AuxRequest):
        raise TypeError(f"return_aux must be an AuxRequest, got {type(return_aux).__name__}")
    want_lse = return_lse or bool(return_aux and return_aux.lse)
    want_max = bool(return_aux and return_aux.max_scores)
    requested = _requested_backend(backend, kernel_options)
    call, chosen = _prepared_call(query, key, value, score_mod, block_mask, scale, enable_gqa, want_lse, want_max,
                                  kernel_options, requested)
    if chosen.uses_autograd:
        out, lse, max_scores = chosen.forward(call)
    else:
        out, lse, max_scores = kernel_attention(chosen, call)
    if return_aux is not None:
        return out, AuxOutput(lse if return_aux.lse else None, max_scores if want_max else None)
    if return_lse:
        return out, lse
    return out


def explain(query, key, value, score_mod=None, block_mask=None, scale=None, enable_gqa=False,
            kernel_options=None, *, return_aux=None, backend="auto") -> str:
    """Which backend flex_attention would run for these arguments, and why each
    faster one was passed over. Runs no kernel."""
    requested = _requested_backend(backend, kernel_options)
    call = _build_call(query, key, value, score_mod, block_mask, scale, enable_gqa,
                       bool(return_aux and return_aux.lse), bool(return_aux and return_aux.max_scores), kernel_options)
    chosen, considered = decide(call, requested)
    lines = [f"backend={requested!r} -> " + (repr(chosen.name) if chosen else "no backend can serve this call")]
    for name, reason in considered:
        lines.append(f"  {name}: " + ("chosen" if reason is None else f"passed over: {reason}"))
    return "\n".join(lines)


def available_backends(device=None) -> list[str]:
    """Backends that can run on `device` at all (a given call may still need another)."""
    import os

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = ["reference"]
    from .backends.kernels import _import_cute, _import_triton

    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        if _import_triton()[0] is not None:
            names.insert(0, "triton")
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9 and _import_cute()[0] is not None:
        names.insert(0, "fa4")
    return names
