"""Plan once, launch many: everything about an attention call except its tensors' data.

An AttentionPlan is built from q, k, v (shapes, strides, dtype, device), the
BlockMask tensors, the traced mods and the flags. Building it checks the call,
converts the block lists, emits the mods' functions and prepares the launches
(Note [fast relaunch] in launch.py); `forward` and `backward` then only allocate
outputs and launch. A caller that repeats a call keeps the plan (flex_fa4 keeps one
per call signature on the BlockMask) and skips that host work, which at S=2048 is as
long as the kernels themselves.

A plan reads the BlockMask tensors and the mods' captured tensors when it launches,
so in-place updates of a captured tensor (an optimizer step on a learned bias) are
seen. Derived data is built once: block lists that are not int32 and contiguous are
converted, and missing transposed lists are computed, at planning time.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch

from mod_codegen.kernel_args import BlockSparseTensors
from mod_codegen.trace import TracedMod

from .backward import BackwardLaunch
from .checks import check_call
from .configs import DECODE_MAX_Q
from .forward import forward_launch
from .mods import buffer_grads, grad_launch, kv_lists, mod_launch, q_lists
from .problem import Problem, alloc, strides3
from .split_kv import DecodeForward


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _layout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple:
    return (q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype, q.device)


class AttentionPlan:
    """One attention call's launches, for q, k, v laid out as the ones it was built
    with (after a copy of any tensor whose last dim is not contiguous)."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                 block_sparse: BlockSparseTensors, score_mod: Optional[TracedMod], mask_mod: Optional[TracedMod],
                 return_max_scores: bool = False, dense: bool = False):
        if dense and mask_mod is not None:
            raise ValueError("dense=True means no mask_mod, but a mask_mod was given")
        check_call(q, k, v, scale, block_sparse)
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        self.layout = _layout(q, k, v)
        self.prob = Problem.of(q, k, v, block_sparse)
        self.scale, self.block_sparse, self.dense = scale, block_sparse, dense
        self.score_mod, self.mask_mod, self.return_max_scores = score_mod, mask_mod, return_max_scores
        self.strides = (strides3(q), strides3(k), strides3(v))
        self.kv_part, self.kv_full = kv_lists(block_sparse)
        self.score, self.mask = mod_launch(score_mod), mod_launch(mask_mod)
        self._forward = None
        self._backward: dict = {}  # (out and dout strides, buffer_requires_grad) -> (GradLaunch, BackwardLaunch)
        self._q_lists = None

    def _inputs(self, q, k, v) -> tuple:
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        if _layout(q, k, v) != self.layout:
            raise ValueError("this AttentionPlan was built for q, k, v of other shapes, strides, dtype or device; "
                             "build a plan for these")
        return q, k, v

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """(out, lse, max_scores or None), as attention_forward."""
        q, k, v = self._inputs(q, k, v)
        p = self.prob
        out = alloc((p.batch, p.heads, p.seq_q, p.head_dim_v), q.dtype, q.device)
        lse = alloc((p.batch, p.heads, p.seq_q), torch.float32, q.device)
        max_scores = alloc((p.batch, p.heads, p.seq_q), torch.float32, q.device) if self.return_max_scores else None
        if p.seq_q == 0:
            return out, lse, max_scores
        if self._forward is None:
            args = (p, self.strides, self.scale, self.kv_part, self.kv_full, self.score, self.mask,
                    self.return_max_scores, q.device)
            if p.seq_q <= DECODE_MAX_Q:
                self._forward = DecodeForward(*args, dense=self.dense)
            else:
                self._forward = forward_launch(*args, dense=self.dense)
        self._forward(q, k, v, out, lse, max_scores if max_scores is not None else lse)
        return out, lse, max_scores

    def backward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                 dout: torch.Tensor, buffer_requires_grad: Optional[Sequence[bool]] = None):
        """(dq, dk, dv, dbuffers), as attention_backward."""
        q, k, v = self._inputs(q, k, v)
        out, dout, lse = _last_dim_contiguous(out), _last_dim_contiguous(dout), lse.contiguous()
        p = self.prob
        score_mod = self.score_mod
        # buffer gradients are scattered over the buffer's storage: in a broadcast
        # (stride-0) view every alias would add into one cell, counted again by the
        # view's own backward; a dense copy (same values) has one cell per element. The
        # copy is taken per call (a plan must see in-place updates), so is its launch.
        copied = score_mod is not None and not all(b.is_contiguous() for b in score_mod.buffers)
        if copied:
            score_mod = dataclasses.replace(score_mod, buffers=[b.contiguous() for b in score_mod.buffers])
        key = (strides3(out), strides3(dout), None if buffer_requires_grad is None else tuple(buffer_requires_grad))
        entry = None if copied else self._backward.get(key)
        if entry is None:
            grad = grad_launch(score_mod, buffer_requires_grad)
            if self._q_lists is None:
                self._q_lists = q_lists(self.block_sparse)
            score = mod_launch(score_mod) if copied else self.score
            launch = BackwardLaunch(p, (*self.strides, key[0], key[1]), self.scale, self.kv_part, self.kv_full,
                                    *self._q_lists, score, self.mask, grad, q.device, dense=self.dense)
            entry = (grad, launch)
            if not copied:
                self._backward[key] = entry
        grad, launch = entry
        workspace = grad.new_workspace(q.device) if grad is not None else None
        if p.seq_q == 0 or p.seq_k == 0:
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), \
                buffer_grads(score_mod, grad, workspace)
        dq, dk, dv = launch(q, k, v, out, lse, dout, workspace)
        return dq, dk, dv, buffer_grads(score_mod, grad, workspace)
