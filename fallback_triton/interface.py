"""Public entry points of fallback_triton: what flex_fa4's Triton backend calls.

    ok, why = can_implement(q, k, v)
    out, lse, max_scores = attention_forward(q, k, v, scale=..., block_sparse=..., score_mod=..., mask_mod=...)
    dq, dk, dv, dbuffers = attention_backward(q, k, v, out, lse, dout, scale=..., block_sparse=..., ...)

    plan = AttentionPlan(q, k, v, scale=..., block_sparse=..., score_mod=..., mask_mod=...)
    out, lse, max_scores = plan.forward(q, k, v)          # the same two, with the per-call
    dq, dk, dv, dbuffers = plan.backward(q, k, v, out, lse, dout)   # host work done once

attention_forward / attention_backward build a plan per call; a caller that repeats
a call (flex_fa4 does) keeps the plan and saves that host time (plan.py).

Layouts: q (B, Hq, Sq, D), k (B, Hkv, Skv, D), v (B, Hkv, Skv, Dv), any strides
(a tensor whose last dim is not contiguous is copied). Hq must be a multiple of
Hkv. Outputs are freshly allocated and contiguous: out (B, Hq, Sq, Dv) in q's
dtype, lse and max_scores (B, Hq, Sq) fp32 in natural-log units. Fully masked
rows give out 0, lse -inf, max_scores -inf and zero gradients.

The BlockMask block sizes must be multiples of 16 (the smallest kernel tile) and
`scale` must be positive. Q_LEN <= 64 takes the split-KV decoding path
(split_kv.py) automatically. bfloat16 needs a GPU (the CPU interpreter's bf16 dots
are wrong). dQ/dK/dV use no atomics (reproducible); captured-buffer gradients are
fp32 atomic sums.

Environment: FLEX_FA4_TRITON_AUTOTUNE=0 takes the first fitting tile instead of
autotuning; FLEX_FA4_TRITON_POISON=1 NaN-fills outputs before the kernels write
them (default on in the interpreter, off on GPUs).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from mod_codegen.kernel_args import BlockSparseTensors
from mod_codegen.trace import TracedMod

from .checks import can_implement
from .plan import AttentionPlan
from .problem import interpreting

if interpreting():
    from . import interpreter_compat

    interpreter_compat.apply()

def attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, block_sparse: BlockSparseTensors,
    score_mod: Optional[TracedMod], mask_mod: Optional[TracedMod], return_max_scores: bool = False,
    dense: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Block-sparse attention forward. Returns (out, lse, max_scores or None).

    dense=True promises that block_sparse lists every block as full and there is no
    mask_mod (what flex_fa4 builds when no block_mask is given): the kernel then walks
    every kv tile without reading the lists (Note [dense walk] in tiles.py)."""
    plan = AttentionPlan(q, k, v, scale=scale, block_sparse=block_sparse, score_mod=score_mod, mask_mod=mask_mod,
                         return_max_scores=return_max_scores, dense=dense)
    return plan.forward(q, k, v)


def attention_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    dout: torch.Tensor, *, scale: float, block_sparse: BlockSparseTensors,
    score_mod: Optional[TracedMod], mask_mod: Optional[TracedMod], deterministic: bool = False,
    buffer_requires_grad: Optional[Sequence[bool]] = None, dense: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
    """Gradients of attention_forward's `out`. Returns (dq, dk, dv, dbuffers) where
    dbuffers is aligned with score_mod.buffers: the gradient of each captured float
    tensor (its shape and dtype), None for non-float ones; [] without a score_mod.
    `buffer_requires_grad` (aligned with score_mod.buffers; None = all) skips the
    gradients nobody needs: their entries come back None and are never computed.

    dq, dk, dv never use atomics (deterministic whatever `deterministic` says); the
    captured-buffer gradients are fp32 atomic sums, so their last bits may vary from
    run to run. `dense`: as for attention_forward."""
    del deterministic  # dq/dk/dv are always computed in a fixed order, see backward.py
    plan = AttentionPlan(q, k, v, scale=scale, block_sparse=block_sparse, score_mod=score_mod, mask_mod=mask_mod,
                         dense=dense)
    return plan.backward(q, k, v, out, lse, dout, buffer_requires_grad=buffer_requires_grad)


__all__ = ["can_implement", "attention_forward", "attention_backward", "AttentionPlan"]
