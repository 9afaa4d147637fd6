"""Autograd for the kernel backends: their forward and backward kernels wrapped
in one torch.autograd.Function. Captured floating-point tensors of score_mod
are inputs too, so they receive gradients (the reference backend needs none of
this: it is differentiable as written)."""
from __future__ import annotations

import torch

from .backends import AttentionCall, Backend


class _KernelAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, backend: Backend, call: AttentionCall, q, k, v, *buffers):
        out, lse, max_scores = backend.forward(call)
        ctx.backend, ctx.call = backend, call
        # saving the inputs (not only reading them off `call`) lets autograd detect an
        # in-place change between forward and backward, as it does for torch ops
        ctx.save_for_backward(out, lse, q, k, v, *buffers)
        ctx.set_materialize_grads(False)  # an unused lse then arrives as None, not zeros
        if max_scores is None:
            return out, lse
        ctx.mark_non_differentiable(max_scores)
        return out, lse, max_scores

    @staticmethod
    def backward(ctx, dout, dlse=None, *unused):
        if dlse is not None:
            # the kernels' backward takes dO only; a silent zero would be a wrong gradient
            raise NotImplementedError(
                f"backward through the returned LSE is not supported by backend {ctx.backend.name!r}; "
                "use backend='reference', or detach the LSE"
            )
        out, lse, *_ = ctx.saved_tensors  # unpacking runs autograd's version check
        call = ctx.call
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv, dbuffers = ctx.backend.backward(call, out, lse, dout.contiguous())
        n = len(call.score_mod.buffers) if call.score_mod is not None else 0
        dbuffers = list(dbuffers or []) + [None] * n
        dbuffers = [
            None if (g is None or not b.requires_grad) else g.to(b.dtype)
            for g, b in zip(dbuffers[:n], call.score_mod.buffers if n else [])
        ]
        return (None, None, dq, dk, dv, *dbuffers)


def kernel_attention(backend: Backend, call: AttentionCall):
    """(out, lse, max_scores or None), differentiable w.r.t. q, k, v and score_mod's buffers.

    A call that needs no gradient (inference, or torch.no_grad) runs the backend directly:
    the autograd.Function would only add host time to a result without a grad_fn (Note
    [launch plan] in cute_kernels/interface.py)."""
    if not call.needs_grad:
        return backend.forward(call)
    buffers = call.score_mod.buffers if call.score_mod is not None else []
    result = _KernelAttention.apply(backend, call, call.q, call.k, call.v, *buffers)
    return (*result, None) if len(result) == 2 else result
