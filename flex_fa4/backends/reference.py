"""The reference backend: plain PyTorch, any device, differentiable by autograd.

It is the semantics every kernel is checked against, so it is written for
clarity: scores are computed in float32 (float64 for float64 inputs) one chunk
of query blocks at a time, so memory is O(chunk x KV), not O(Q x KV); each
chunk is checkpointed, so the backward pass recomputes it instead of storing
it. The BlockMask is honoured exactly: pairs in skipped blocks never take part,
full blocks skip mask_mod, partial blocks apply it, and each chunk only looks
at the kv range its visited blocks span.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.utils.checkpoint import checkpoint

from mod_codegen import evaluate, index_grids

from ..block_mask import block_states
from .base import AttentionCall, Backend

# scores held at once per chunk (B * Hq * rows * KV elements)
_CHUNK_ELEMENTS = 1 << 23


class ReferenceBackend(Backend):
    name = "reference"
    uses_autograd = True

    def why_not(self, call: AttentionCall) -> Optional[str]:
        return None  # serves every valid call, on every device

    def forward(self, call: AttentionCall):
        q, k, v = call.q, call.k, call.v
        B, Hq, Sq, _ = q.shape
        Skv = k.shape[2]
        compute = torch.float64 if q.dtype == torch.float64 else torch.float32
        partial, full = block_states(call.block_sparse)
        partial, full = partial.to(q.device), full.to(q.device)
        bq = call.block_sparse.block_size_q
        rows = max(bq, (_CHUNK_ELEMENTS // max(1, B * Hq * Skv)) // bq * bq)
        head_map = torch.arange(Hq, device=q.device) // (Hq // k.shape[1])
        kf = k.to(compute).index_select(1, head_map)
        vf = v.to(compute).index_select(1, head_map)
        outs, lses, maxes = [], [], []
        for r0 in range(0, Sq, rows):
            r1 = min(Sq, r0 + rows)
            args = (q[:, :, r0:r1].to(compute), kf, vf)
            fn = lambda qc, kk, vv, r0=r0: _attend_chunk(call, qc, kk, vv, r0, partial, full, compute)  # noqa: E731
            if call.needs_grad:
                o, lse, mx = checkpoint(fn, *args, use_reentrant=False)
            else:
                o, lse, mx = fn(*args)
            outs.append(o)
            lses.append(lse)
            maxes.append(mx)
        out = torch.cat(outs, dim=2).to(q.dtype)
        lse_dtype = torch.float64 if compute == torch.float64 else torch.float32
        lse = torch.cat(lses, dim=2).to(lse_dtype)
        max_scores = torch.cat(maxes, dim=2).to(lse_dtype) if call.need_max_scores else None
        return out, lse, max_scores


def _attend_chunk(call: AttentionCall, qc, kf, vf, r0, partial, full, compute):
    """Attention for query rows [r0, r0 + rows) against every key."""
    B, Hq, rows, _ = qc.shape
    Skv, Dv = kf.shape[2], vf.shape[3]
    bs = call.block_sparse
    bq, bkv = bs.block_size_q, bs.block_size_kv
    q_idx = torch.arange(r0, r0 + rows, device=qc.device)
    qb = q_idx // bq
    visited = (partial | full)[:, :, qb[0]: qb[-1] + 1].any(dim=(0, 1, 2)).nonzero()
    if visited.numel() == 0:  # every pair of the chunk is skipped
        empty = qc.new_full((B, Hq, rows), float("-inf"))
        return qc.new_zeros(B, Hq, rows, Dv) + 0 * qc.sum(), empty, empty
    kv0 = int(visited[0]) * bkv
    kv1 = min(Skv, (int(visited[-1]) + 1) * bkv)
    kv_idx = torch.arange(kv0, kv1, device=qc.device)
    grids = index_grids(torch.arange(B), torch.arange(Hq), q_idx, kv_idx, device=qc.device)
    scores = torch.einsum("bhqd,bhkd->bhqk", qc, kf[:, :, kv0:kv1]) * call.scale
    if call.score_mod is not None:
        sm = call.score_mod
        (scores,) = evaluate(sm.graph, {"score": scores, **grids}, sm.buffers, sm.scalars, float_dtype=compute)
    kvb = kv_idx // bkv
    part = partial[:, :, qb][:, :, :, kvb]
    allowed = full[:, :, qb][:, :, :, kvb]
    if call.mask_mod is not None:
        mm = call.mask_mod
        (keep,) = evaluate(mm.graph, grids, mm.buffers, mm.scalars)
        allowed = allowed | (part & keep)
    else:
        allowed = allowed | part
    allowed = allowed.expand(B, Hq, rows, kv1 - kv0)
    masked = scores.masked_fill(~allowed, float("-inf"))
    empty_row = ~allowed.any(dim=-1, keepdim=True)
    # logsumexp over a finite stand-in for empty rows keeps their gradients 0, not NaN
    lse = torch.logsumexp(masked.masked_fill(empty_row, 0.0), dim=-1, keepdim=True)
    probs = torch.exp(masked - lse)
    out = torch.einsum("bhqk,bhkd->bhqd", probs, vf[:, :, kv0:kv1])
    lse = lse.squeeze(-1).masked_fill(empty_row.squeeze(-1), float("-inf"))
    max_scores = masked.amax(dim=-1)
    return out, lse, max_scores
