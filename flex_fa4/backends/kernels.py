"""Adapters from AttentionCall to the two kernel packages.

`triton`: fallback_triton's block-sparse forward and backward, on any CUDA GPU
(and on the CPU under TRITON_INTERPRET=1, for tests).
`fa4`: cute_kernels' CuTeDSL forward on Hopper; its backward runs the Triton
backward kernels on the fa4 forward's output and LSE (there is no CuTeDSL
backward yet), which the first such call logs.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch

from .base import AttentionCall, Backend

log = logging.getLogger("flex_fa4")


def _import_triton():
    try:
        import fallback_triton
    except Exception as e:  # ImportError, or triton failing to initialise
        return None, f"the Triton kernels cannot be imported ({type(e).__name__}: {e})"
    if not hasattr(fallback_triton, "attention_forward"):
        return None, "the Triton kernels are not built into this install"
    return fallback_triton, None


def _import_cute():
    try:
        import cutlass  # noqa: F401 - cute_kernels imports it lazily; check here, before choosing fa4
        import cute_kernels
    except Exception as e:
        return None, f"the CuTeDSL kernels cannot be imported ({type(e).__name__}: {e}); pip install 'flex_fa4[cute]'"
    if not hasattr(cute_kernels, "flash_attn_fwd"):
        return None, "the CuTeDSL kernels are not built into this install"
    return cute_kernels, None


class TritonBackend(Backend):
    name = "triton"

    def why_not(self, call: AttentionCall) -> Optional[str]:
        interpret = os.environ.get("TRITON_INTERPRET") == "1"
        if call.q.device.type != "cuda" and not interpret:
            return f"needs a CUDA GPU (query is on {call.q.device}); on CPU only under TRITON_INTERPRET=1"
        if call.q.dtype == torch.float64:
            return "float64 is not supported by the Triton kernels (use float32, bfloat16 or float16)"
        module, reason = _import_triton()
        if module is None:
            return reason
        bs = call.block_sparse
        ok, reason = module.can_implement(call.q, call.k, call.v, block_q=bs.block_size_q,
                                          block_kv=bs.block_size_kv, scale=call.scale)
        return None if ok else reason

    @staticmethod
    def plan(call: AttentionCall):
        """The call's fallback_triton.AttentionPlan, kept for its repeats."""
        def build():
            import fallback_triton

            return fallback_triton.AttentionPlan(
                call.q, call.k, call.v, scale=call.scale, block_sparse=call.block_sparse,
                score_mod=call.score_mod, mask_mod=call.mask_mod, return_max_scores=call.need_max_scores,
                dense=call.dense and call.mask_mod is None,  # no block_mask: skip the block lists
            )

        return call.kept("triton", build)

    def forward(self, call: AttentionCall):
        return self.plan(call).forward(call.q, call.k, call.v)

    def backward(self, call: AttentionCall, out, lse, dout):
        if call.option("deterministic", False) and call.score_mod and any(b.requires_grad for b in call.score_mod.buffers):
            from . import _log_once

            _log_once(logging.WARNING, "deterministic=True covers dQ/dK/dV; gradients of captured tensors "
                                       "are fp32 atomic sums whose last bits may vary between runs")
        # dQ/dK/dV are deterministic whatever the option says (fallback_triton/backward.py);
        # gradients of captured tensors cost ~8% more backward time: only for those that need them
        wanted = [b.requires_grad for b in call.score_mod.buffers] if call.score_mod else None
        return self.plan(call).backward(call.q, call.k, call.v, out, lse, dout, buffer_requires_grad=wanted)


class FA4Backend(Backend):
    name = "fa4"

    def why_not(self, call: AttentionCall) -> Optional[str]:
        if call.q.device.type != "cuda":
            return f"needs an NVIDIA Hopper GPU (sm90); query is on {call.q.device}"
        major, minor = torch.cuda.get_device_capability(call.q.device)
        if major != 9:
            return f"the CuTeDSL kernel is built for Hopper (sm90); this GPU is sm{major}{minor}"
        if call.scale <= 0 and call.score_mod is None:
            # the kernel takes row maxima of the unscaled scores (scale folded into exp2)
            return f"scale must be positive for the CuTeDSL kernel (got {call.scale}); fold a sign into a score_mod"
        module, reason = _import_cute()
        if module is None:
            return reason
        bs = call.block_sparse
        ok, reason = module.can_implement(
            call.q, call.k, call.v, block_q=None if call.dense else bs.block_size_q,
            block_kv=None if call.dense else bs.block_size_kv,
            has_score_mod=call.score_mod is not None, has_mask_mod=call.mask_mod is not None,
            need_max_scores=call.need_max_scores,
        )
        if not ok:
            return reason
        if call.needs_grad:
            reason = TritonBackend().why_not(call)
            if reason:
                return f"its backward runs the Triton kernels, which cannot serve this call: {reason}"
        return None

    @staticmethod
    def plan(call: AttentionCall):
        """The call's cute_kernels.ForwardPlan (Note [launch plan]), kept for its repeats."""
        def build():
            import cute_kernels

            # with no block_mask the kernel's dense path beats walking an all-full block list (11%, NOTES.md)
            return cute_kernels.ForwardPlan(
                call.q, call.k, call.v, scale=call.scale, block_sparse=None if call.dense else call.block_sparse,
                score_mod=call.score_mod, mask_mod=call.mask_mod, return_max_scores=call.need_max_scores,
            )

        return call.kept("fa4", build)

    def forward(self, call: AttentionCall):
        # the plan was built for this call's tensors, or for a call with the same cache key,
        # which covers q, k and v's shapes, strides, dtypes and device (Note [call cache])
        return self.plan(call)(call.q, call.k, call.v, layout_known=True)

    def backward(self, call: AttentionCall, out, lse, dout):
        from . import _log_once

        _log_once(logging.INFO, "fa4 backward: running the Triton backward kernels on the fa4 forward's output and LSE")
        return TritonBackend().backward(call, out, lse, dout)
