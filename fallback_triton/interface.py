"""Public entry points of fallback_triton: what flex_fa4's Triton backend calls.

    ok, why = can_implement(q, k, v)
    out, lse, max_scores = attention_forward(q, k, v, scale=..., block_sparse=..., score_mod=..., mask_mod=...)
    dq, dk, dv, dbuffers = attention_backward(q, k, v, out, lse, dout, scale=..., block_sparse=..., ...)

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

import dataclasses
from typing import Optional, Sequence

import torch

from mod_codegen.kernel_args import BlockSparseTensors
from mod_codegen.trace import TracedMod

from .backward import launch_backward
from .configs import DECODE_MAX_Q, MIN_TILE
from .forward import launch_forward
from .mods import buffer_grads, grad_launch, kv_lists, mod_launch, q_lists
from .problem import Problem, alloc, interpreting
from .split_kv import launch_decode

if interpreting():
    from . import interpreter_compat

    interpreter_compat.apply()

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def can_implement(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_q: Optional[int] = None,
                  block_kv: Optional[int] = None, scale: Optional[float] = None) -> tuple[bool, str]:
    """(True, "") if these inputs (and, when given, BlockMask block sizes and scale)
    can run here, else (False, what to change)."""
    for name, size in (("BLOCK_SIZE[0]", block_q), ("BLOCK_SIZE[1]", block_kv)):
        if size is not None and (size <= 0 or size % MIN_TILE):
            return False, f"BlockMask {name} = {size} must be a positive multiple of {MIN_TILE}"
    if scale is not None and not scale > 0:
        return False, f"scale must be positive, got {scale}; fold a sign into a score_mod instead"
    if q.device.type == "cuda":
        pass
    elif q.device.type == "cpu":
        if not interpreting():
            return False, "CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before importing triton"
    else:
        return False, f"device {q.device.type} is not supported (CUDA, or CPU with TRITON_INTERPRET=1)"
    if not (q.device == k.device == v.device):
        return False, "q, k and v must be on one device"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return False, "q, k, v must be 4-D: (B, H, S, D)"
    if q.dtype not in SUPPORTED_DTYPES:
        return False, f"dtype {q.dtype} is not supported (float16, bfloat16, float32)"
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        # seen with triton 3.6: tl.dot on bf16 tiles returns garbage in the interpreter
        return False, "bfloat16 needs a GPU (Triton's CPU interpreter computes bf16 dots wrongly); use float16/32"
    if not (q.dtype == k.dtype == v.dtype):
        return False, f"q, k, v must share one dtype (got {q.dtype}, {k.dtype}, {v.dtype})"
    if q.shape[0] != k.shape[0] or k.shape[0] != v.shape[0]:
        return False, "q, k, v must have the same batch size"
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        return False, "k and v must have the same number of heads and length"
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        return False, f"query heads ({q.shape[1]}) must be a multiple of kv heads ({k.shape[1]})"
    if q.shape[3] != k.shape[3]:
        return False, f"q and k head dims differ ({q.shape[3]} vs {k.shape[3]})"
    for name, d in (("qk", q.shape[3]), ("v", v.shape[3])):
        if not 1 <= d <= MAX_HEAD_DIM:
            return False, f"{name} head dim {d} is outside 1..{MAX_HEAD_DIM}"
    return True, ""


def _check(q, k, v, scale: float, block_sparse: BlockSparseTensors, score_mod: Optional[TracedMod]) -> None:
    ok, why = can_implement(q, k, v)
    if not ok:
        raise ValueError(f"fallback_triton cannot run this call: {why}")
    if not scale > 0:  # the forward takes row maxima before scaling (Note [scale folded into exp2])
        raise ValueError(f"scale must be positive, got {scale}; fold a sign into a score_mod instead")
    for name in ("block_size_q", "block_size_kv"):
        size = int(getattr(block_sparse, name))
        if size <= 0 or size % MIN_TILE:
            raise ValueError(f"BlockMask {name} = {size} must be a positive multiple of {MIN_TILE}")


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, block_sparse: BlockSparseTensors,
    score_mod: Optional[TracedMod], mask_mod: Optional[TracedMod], return_max_scores: bool = False,
    dense: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Block-sparse attention forward. Returns (out, lse, max_scores or None).

    dense=True promises that block_sparse lists every block as full and there is no
    mask_mod (what flex_fa4 builds when no block_mask is given): the kernel then walks
    every kv tile without reading the lists (Note [dense walk] in tiles.py)."""
    if dense and mask_mod is not None:
        raise ValueError("dense=True means no mask_mod, but a mask_mod was given")
    _check(q, k, v, scale, block_sparse, score_mod)
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    prob = Problem.of(q, k, v, block_sparse)
    B, Hq, Sq, Dv = prob.batch, prob.heads, prob.seq_q, prob.head_dim_v
    out = alloc((B, Hq, Sq, Dv), q.dtype, q.device)
    lse = alloc((B, Hq, Sq), torch.float32, q.device)
    max_scores = alloc((B, Hq, Sq), torch.float32, q.device) if return_max_scores else None
    if Sq == 0:
        return out, lse, max_scores
    part, full = kv_lists(block_sparse)
    score, mask = mod_launch(score_mod), mod_launch(mask_mod)
    if Sq <= DECODE_MAX_Q:
        launch_decode(q, k, v, prob, scale, part, full, score, mask, return_max_scores, out, lse, max_scores,
                      dense=dense)
    else:
        launch_forward(q, k, v, prob, scale, part, full, score, mask, return_max_scores,
                       out=out, lse=lse, max_scores=max_scores, dense=dense)
    return out, lse, max_scores


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
    if dense and mask_mod is not None:
        raise ValueError("dense=True means no mask_mod, but a mask_mod was given")
    _check(q, k, v, scale, block_sparse, score_mod)
    q, k, v, out, dout = (_last_dim_contiguous(t) for t in (q, k, v, out, dout))
    prob = Problem.of(q, k, v, block_sparse)
    kv_part, kv_full = kv_lists(block_sparse)
    q_part, q_full = q_lists(block_sparse)
    if score_mod is not None and not all(b.is_contiguous() for b in score_mod.buffers):
        # buffer gradients are scattered over the buffer's storage: in a broadcast
        # (stride-0) view every alias would add into one cell, counted again by the
        # view's own backward; a dense copy (same values) has one cell per element
        score_mod = dataclasses.replace(score_mod, buffers=[b.contiguous() for b in score_mod.buffers])
    score, mask = mod_launch(score_mod), mod_launch(mask_mod)
    grad = grad_launch(score_mod, q.device, buffer_requires_grad)
    if prob.seq_q == 0 or prob.seq_k == 0:
        return (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), buffer_grads(score_mod, grad))
    dq, dk, dv = launch_backward(q, k, v, out, lse, dout, prob, scale, kv_part, kv_full, q_part, q_full,
                                 score, mask, grad, dense=dense)
    return dq, dk, dv, buffer_grads(score_mod, grad)


__all__ = ["can_implement", "attention_forward", "attention_backward"]
