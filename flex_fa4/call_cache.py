"""Repeated calls skip validation, tracing and the backend choice.

Note [call cache]: a training or decoding loop calls flex_attention with the same
shapes, BlockMask and mods every step. The first such call validates, traces and
chooses a backend; the AttentionCall it builds (without q, k, v) and the backend it
chose are kept on the BlockMask, keyed by everything the checks and the choice read:
the requested backend; q, k and v's shapes, strides, dtypes, devices and
requires_grad; grad mode; the traced score_mod (trace_cached hands back the same
object while nothing it captures has changed) and its buffers' requires_grad; scale,
enable_gqa, the requested outputs and kernel_options. A hit rebinds q, k, v and goes
straight to the backend, which finds what it prepared for the first call (a Triton
AttentionPlan) in `AttentionCall.prepared`.

Entries live on the BlockMask (the default one, for calls without block_mask, is
cached per length pair), so they go when the mask goes; at most MAX_ENTRIES per mask.
The entry holds no q, k, v: a cached call must not keep a step's activations alive.
"""
from __future__ import annotations

from typing import Optional

import torch

from mod_codegen import TracedMod

from .backends import AttentionCall, Backend

MAX_ENTRIES = 8


def call_key(requested: str, q, k, v, score: Optional[TracedMod], scale, enable_gqa: bool, need_lse: bool,
             need_max: bool, kernel_options: Optional[dict]) -> Optional[tuple]:
    """The cache key, or None when the call cannot be keyed (an argument that is
    not a 4-D non-empty tensor, an unhashable kernel option): such calls take the
    full path, whose checks name the problem."""
    try:
        if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or not (q.numel() and k.numel() and v.numel()):
            return None  # the full path says what is wrong
        opts = tuple(sorted(kernel_options.items())) if kernel_options else None
        key = (requested, torch.is_grad_enabled(), scale, type(scale), enable_gqa, need_lse, need_max, opts,
               None if score is None else (id(score), tuple(b.requires_grad for b in score.buffers)),
               q.shape, q.stride(), q.dtype, q.device, q.requires_grad,
               k.shape, k.stride(), k.dtype, k.device, k.requires_grad,
               v.shape, v.stride(), v.dtype, v.device, v.requires_grad)
        hash(key)
        return key
    except (AttributeError, TypeError):
        return None


def lookup(block_mask, key: Optional[tuple], score: Optional[TracedMod], q, k, v):
    """(call rebound to q, k, v, backend) on a hit, else None."""
    if key is None:
        return None
    entries = getattr(block_mask, "_call_cache", None)
    if not entries:
        return None
    hit = entries.get(key)
    if hit is None or hit[0].score_mod is not score:  # an id() reused by a new trace
        return None
    template, backend = hit
    return template.rebind(q, k, v), backend


def store(block_mask, key: Optional[tuple], call: AttentionCall, backend: Backend) -> AttentionCall:
    """Keep `call` (without its tensors) for later hits. Returns the call to run now,
    sharing the kept one's `prepared` state."""
    if key is None:
        return call
    entries = getattr(block_mask, "_call_cache", None)
    if entries is None:
        entries = {}
        try:
            block_mask._call_cache = entries
        except AttributeError:  # a mask type that takes no attributes: no cache
            return call
    if len(entries) >= MAX_ENTRIES:
        entries.clear()
    entries[key] = (call.rebind(None, None, None), backend)
    return call
