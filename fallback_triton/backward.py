"""Block-sparse attention backward (FlashAttention-2 style) in Triton.

Two launches:
  1. `preprocess_kernel`: delta = rowsum(dO * O) and lse in log2 units, with
     fully masked rows (lse = -inf) turned into +inf so their P = 2^(z - lse) is 0,
     never NaN.
  2. `backward_kernel`, whose programs are of two kinds (Note [one backward launch]):
     dK/dV programs, one per (kv tile, batch, kv head), walk the transposed BlockMask
     lists (q_* / full_q_*) of every query head in the GQA group and accumulate dK, dV
     in registers. Summing the group inside one program (not atomics across programs)
     makes dK/dV deterministic; the captured-buffer gradients of the score_mod are
     scatter-added here (Note [buffer-gradient reduction] in mods.py). dQ programs, one
     per (q tile, batch, query head), walk the forward lists and accumulate dQ.
Neither kind uses atomics for dQ/dK/dV, so they are bitwise reproducible; the
price is recomputing QK^T and dO V^T in both (7 matmuls instead of 5), which the
Triton flex kernels pay too.

Note [one backward launch]: the dK/dV and dQ programs of one (batch, kv head) sit
side by side on program axis 0 of a single launch, dK/dV first, as PyTorch's flex
backward does. One launch instead of two saves a launch's host time and its tail
(the last wave of the dK/dV pass no longer idles SMs while the dQ pass waits), and
programs of the same head run together, so Q, K, V, dO are read from L2 by both
kinds. Same tiles, H200, backward alone: 4-7% faster at S=8192 (causal 8.71 -> 8.26
ms), 7-20% at S=2048 (noop 1.36 -> 1.09 ms). Starting the dQ programs from the last q
tile (longest first under causal masks) measured no different and was dropped.

Math, with s = qk * scale, z = score_mod(s) (masked: -inf), P = softmax(z):
    dV = P^T dO,  dP = dO V^T,  dZ = P * (dP - delta),
    dS = d_score(s, grad=dZ) (the score_mod's chain rule, or dZ itself),
    dQ = scale * dS K,  dK = scale * dS^T Q.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import configs
from .launch import Launch
from .mods import empty_list
from .problem import alloc, contiguous_strides3, interpreting
from .tiles import LOG2E, keep_mask, load_tile, scores_log2, tile_start


@triton.jit
def preprocess_kernel(Out, DOut, Lse, Delta, Lse2, o_strides, do_strides, seq_q, num_heads,
                      DV: tl.constexpr, DV_PAD: tl.constexpr, BLOCK_R: tl.constexpr):
    """Delta (B,Hq,Sq) = rowsum(dO * O); Lse2 = lse * log2(e), +inf where lse = -inf."""
    bh = tl.program_id(1)
    b = bh // num_heads
    h = bh % num_heads
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, DV_PAD)
    ok = (offs_r[:, None] < seq_q) & (offs_d[None, :] < DV)
    o = tl.load(Out + b.to(tl.int64) * o_strides[0] + h.to(tl.int64) * o_strides[1]
                + offs_r[:, None] * o_strides[2] + offs_d[None, :], mask=ok, other=0.0)
    do = tl.load(DOut + b.to(tl.int64) * do_strides[0] + h.to(tl.int64) * do_strides[1]
                 + offs_r[:, None] * do_strides[2] + offs_d[None, :], mask=ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    row = bh.to(tl.int64) * seq_q + offs_r
    r_ok = offs_r < seq_q
    lse = tl.load(Lse + row, mask=r_ok, other=0.0)
    tl.store(Delta + row, delta, mask=r_ok)
    tl.store(Lse2 + row, tl.where(lse == float("-inf"), float("inf"), lse * LOG2E), mask=r_ok)


@triton.jit
def _pair_accumulators(offs_n, NUM_PAIRS: tl.constexpr):
    """Per buffer-gradient pair: a (values [N], offsets [N]) accumulator over the kv rows
    of the program, for pairs whose offset does not depend on q_idx."""
    acc = ()
    for i in tl.static_range(NUM_PAIRS):
        acc = acc + (tl.zeros(offs_n.shape, tl.float32), tl.zeros(offs_n.shape, tl.int32))
    return acc


@triton.constexpr_function
def _pair_mode(pair_modes, i):
    """Pair i's 3-bit field of PAIR_MODES (Note [buffer-gradient reduction]), called at
    each use: a compile-time value bound to a name inside tl.static_range would be an
    annotated constexpr rebound per iteration, which compiled Triton rejects (the
    interpreter does not, so only GPU runs caught it)."""
    return (pair_modes >> (3 * i)) & 7


@triton.jit
def _scatter_buffer_grads(res, keep, like, acc, DBuf, bases, NUM_PAIRS: tl.constexpr, PAIR_MODES: tl.constexpr,
                          NEEDS_KEEP: tl.constexpr):
    """One (kv rows x q columns) tile's buffer-gradient pairs (Note [buffer-gradient
    reduction] in mods.py). Offsets that do not depend on q_idx are constant along the
    q axis, which is within a thread's registers: sum along it and keep the [N] sums in
    `acc` for `_flush_buffer_grads` (no atomics in the loop). Offsets that depend on
    q_idx are added atomically now, summed over kv first when kv does not matter."""
    zero_i = tl.zeros(like.shape, tl.int32)
    new_acc = ()
    for i in tl.static_range(NUM_PAIRS):
        if _pair_mode(PAIR_MODES, i) == 4:  # gradient not wanted
            new_acc = new_acc + (acc[2 * i], acc[2 * i + 1])
        else:
            off = res[1 + 2 * i] + zero_i
            val = res[2 + 2 * i] + tl.zeros_like(like)
            if NEEDS_KEEP:
                val = tl.where(keep, val, 0.0)
            if _pair_mode(PAIR_MODES, i) % 2 == 0:  # modes 0, 2: q-independent, accumulate per kv row
                new_acc = new_acc + (acc[2 * i] + tl.sum(val, 1), tl.max(off, 1))
            else:
                base = DBuf + bases[i]
                if _pair_mode(PAIR_MODES, i) == 1:  # q only: reduce over kv
                    tl.atomic_add(base + tl.max(off, 0), tl.sum(val, 0))
                else:
                    tl.atomic_add(base + off, val)
                new_acc = new_acc + (acc[2 * i], acc[2 * i + 1])
    return new_acc


@triton.jit
def _flush_buffer_grads(acc, DBuf, bases, NUM_PAIRS: tl.constexpr, PAIR_MODES: tl.constexpr):
    """Atomically add the per-kv-row sums kept by `_scatter_buffer_grads`."""
    for i in tl.static_range(NUM_PAIRS):
        base = DBuf + bases[i]
        if _pair_mode(PAIR_MODES, i) == 0:  # one address for the whole program
            tl.atomic_add(base + tl.max(acc[2 * i + 1], 0), tl.sum(acc[2 * i], 0))
        elif _pair_mode(PAIR_MODES, i) == 2:
            tl.atomic_add(base + acc[2 * i + 1], acc[2 * i])


@triton.jit
def _through_score_mod(qk, ds, b, h, q_idx, kv_idx, sm_scale, grad_args, GRAD_FN: tl.constexpr,
                       NUM_PAIRS: tl.constexpr):
    """(dS after the score_mod's chain rule, as a full tile; GRAD_FN's raw result, whose
    entries after the first are the buffer-gradient pairs when NUM_PAIRS > 0). Either
    tile layout works: the mod is elementwise (q_idx / kv_idx broadcast either way)."""
    res = GRAD_FN(qk * sm_scale, ds, b, h, q_idx, kv_idx, grad_args[0], grad_args[1], grad_args[2], grad_args[3])
    if NUM_PAIRS == 0:
        ds = res + tl.zeros_like(ds)
    else:
        ds = res[0] + tl.zeros_like(ds)
    return ds, res


@triton.jit
def _dkdv_tiles(dk, dv, bacc, k, v, q_base, do_base, q_stride_m, do_stride_m, lse_row, delta_row,
                idx_row, full_row, n_part, tile_lo, tile_hi, b, h, offs_n, seq_q, seq_k, sm_scale, qk_scale,
                score_args, mask_args, grad_args, DBuf, dbuf_bases,
                SCORE_FN: tl.constexpr, MASK_FN: tl.constexpr, GRAD_FN: tl.constexpr,
                NUM_PAIRS: tl.constexpr, PAIR_MODES: tl.constexpr, IS_FULL_BLOCK: tl.constexpr,
                MERGED: tl.constexpr, EVEN_Q: tl.constexpr, EVEN_KV: tl.constexpr, SPARSE_Q: tl.constexpr,
                BLOCK_M: tl.constexpr,
                D: tl.constexpr, DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
                PREC: tl.constexpr, DENSE: tl.constexpr):
    """dK, dV contributions of q tiles [tile_lo, tile_hi) of one transposed list (or of
    both, MERGED: Note [merged lists] in tiles.py; or of every q tile, DENSE). Works on transposed tiles (kv
    rows, q columns) so dK/dV need no transposes."""
    APPLY_MASK: tl.constexpr = (not IS_FULL_BLOCK) and (MASK_FN is not None)
    NEEDS_KEEP: tl.constexpr = APPLY_MASK or (not EVEN_Q) or (not EVEN_KV)
    offs_m0 = tl.arange(0, BLOCK_M)
    kv_idx = offs_n[:, None]
    for t in range(tile_lo, tile_hi):
        offs_m = tile_start(idx_row, full_row, n_part, t, SPARSE_Q, BLOCK_M, MERGED, DENSE) + offs_m0
        q = load_tile(q_base, offs_m, q_stride_m, seq_q, D, D_PAD, EVEN_Q)
        if EVEN_Q:
            lse2 = tl.load(lse_row + offs_m)
        else:
            lse2 = tl.load(lse_row + offs_m, mask=offs_m < seq_q, other=float("inf"))
        qkT = tl.dot(k, tl.trans(q), input_precision=PREC)  # (N, M)
        q_idx = offs_m[None, :]
        zT = scores_log2(qkT, b, h, q_idx, kv_idx, sm_scale, qk_scale, score_args, SCORE_FN)
        if NEEDS_KEEP:
            keep = keep_mask(b, h, q_idx, kv_idx, seq_q, seq_k, mask_args, zT,
                             MASK_FN, APPLY_MASK, not EVEN_Q, not EVEN_KV)
            zT = tl.where(keep, zT, float("-inf"))
        else:
            keep = None
        pT = tl.math.exp2(zT - lse2[None, :])
        do = load_tile(do_base, offs_m, do_stride_m, seq_q, DV, DV_PAD, EVEN_Q)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=PREC)
        if EVEN_Q:
            delta = tl.load(delta_row + offs_m)
        else:
            delta = tl.load(delta_row + offs_m, mask=offs_m < seq_q, other=0.0)
        dpT = tl.dot(v, tl.trans(do), input_precision=PREC)
        dsT = pT * (dpT - delta[None, :])
        if SCORE_FN is not None:
            dsT, res = _through_score_mod(qkT, dsT, b, h, q_idx, kv_idx, sm_scale, grad_args, GRAD_FN, NUM_PAIRS)
            if NUM_PAIRS > 0:
                bacc = _scatter_buffer_grads(res, keep, dsT, bacc, DBuf, dbuf_bases, NUM_PAIRS, PAIR_MODES,
                                             NEEDS_KEEP)
            if NEEDS_KEEP:
                dsT = tl.where(keep, dsT, 0.0)
        dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=PREC)
    return dk, dv, bacc


@triton.jit
def _list_row(num, idx, num_strides, idx_strides, b, h, row, TILES: tl.constexpr):
    """(tile count, pointer to the index row) of one block-list row."""
    n = tl.load(num + b * num_strides[0] + h * num_strides[1] + row * num_strides[2]) * TILES
    return n, idx + b * idx_strides[0] + h * idx_strides[1] + row * idx_strides[2]


@triton.jit
def _dkdv_program(
    tile_n, b, hk, Q, K, V, DO, DK, DV_out, Lse2, Delta, DBuf,
    q_strides, k_strides, v_strides, do_strides, dk_strides, dv_strides,
    q_num, q_idx, q_num_strides, q_idx_strides, fq_num, fq_idx, fq_num_strides, fq_idx_strides,
    seq_q, seq_k, num_heads, group, sm_scale, qk_scale, score_args, mask_args, grad_args, dbuf_bases,
    SCORE_FN: tl.constexpr, MASK_FN: tl.constexpr, GRAD_FN: tl.constexpr,
    NUM_PAIRS: tl.constexpr, PAIR_MODES: tl.constexpr, HAS_FULL: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    SPARSE_Q: tl.constexpr, SPARSE_KV: tl.constexpr, EVEN_Q: tl.constexpr, EVEN_KV: tl.constexpr,
    PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DENSE: tl.constexpr,
):
    """dK, dV of kv tile `tile_n` of (batch b, kv head hk): walks the transposed lists
    of every query head of the GQA group."""
    start_n = tile_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    k_base = K + b.to(tl.int64) * k_strides[0] + hk.to(tl.int64) * k_strides[1]
    v_base = V + b.to(tl.int64) * v_strides[0] + hk.to(tl.int64) * v_strides[1]
    k = load_tile(k_base, offs_n, k_strides[2], seq_k, D, D_PAD, EVEN_KV)
    v = load_tile(v_base, offs_n, v_strides[2], seq_k, DV, DV_PAD, EVEN_KV)
    dk = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, DV_PAD], tl.float32)
    bkv = start_n // SPARSE_KV
    ROW_TILES: tl.constexpr = SPARSE_Q // BLOCK_M  # q tiles per listed q block
    for g in range(group):
        h = hk * group + g
        q_base = Q + b.to(tl.int64) * q_strides[0] + h.to(tl.int64) * q_strides[1]
        do_base = DO + b.to(tl.int64) * do_strides[0] + h.to(tl.int64) * do_strides[1]
        lse_row = Lse2 + (b * num_heads + h).to(tl.int64) * seq_q
        delta_row = Delta + (b * num_heads + h).to(tl.int64) * seq_q
        bacc = _pair_accumulators(offs_n, NUM_PAIRS)
        if DENSE:  # Note [dense walk] in tiles.py
            n_part, part_row = 0, q_idx
            n_full, full_row = tl.cdiv(seq_q, BLOCK_M), q_idx
        else:
            n_part, part_row = _list_row(q_num, q_idx, q_num_strides, q_idx_strides, b, h, bkv, ROW_TILES)
            if HAS_FULL:
                n_full, full_row = _list_row(fq_num, fq_idx, fq_num_strides, fq_idx_strides, b, h, bkv, ROW_TILES)
            else:
                n_full, full_row = 0, part_row
        if DENSE or (HAS_FULL and MASK_FN is None):  # Note [merged lists]
            dk, dv, bacc = _dkdv_tiles(dk, dv, bacc, k, v, q_base, do_base, q_strides[2], do_strides[2], lse_row,
                                       delta_row, part_row, full_row, n_part, 0, n_part + n_full, b, h, offs_n,
                                       seq_q, seq_k, sm_scale, qk_scale, score_args, mask_args, grad_args, DBuf,
                                       dbuf_bases, SCORE_FN, MASK_FN, GRAD_FN, NUM_PAIRS, PAIR_MODES, True, True,
                                       EVEN_Q, EVEN_KV, SPARSE_Q, BLOCK_M, D, DV, D_PAD, DV_PAD, PREC, DENSE)
        else:
            dk, dv, bacc = _dkdv_tiles(dk, dv, bacc, k, v, q_base, do_base, q_strides[2], do_strides[2], lse_row,
                                       delta_row, part_row, part_row, 0, 0, n_part, b, h, offs_n, seq_q, seq_k,
                                       sm_scale, qk_scale, score_args, mask_args, grad_args, DBuf, dbuf_bases,
                                       SCORE_FN, MASK_FN, GRAD_FN, NUM_PAIRS, PAIR_MODES, False, False,
                                       EVEN_Q, EVEN_KV, SPARSE_Q, BLOCK_M, D, DV, D_PAD, DV_PAD, PREC, False)
            if HAS_FULL:
                dk, dv, bacc = _dkdv_tiles(dk, dv, bacc, k, v, q_base, do_base, q_strides[2], do_strides[2],
                                           lse_row, delta_row, full_row, full_row, 0, 0, n_full, b, h, offs_n,
                                           seq_q, seq_k, sm_scale, qk_scale, score_args, mask_args, grad_args,
                                           DBuf, dbuf_bases, SCORE_FN, MASK_FN, GRAD_FN, NUM_PAIRS, PAIR_MODES,
                                           True, False, EVEN_Q, EVEN_KV, SPARSE_Q, BLOCK_M, D, DV, D_PAD, DV_PAD,
                                           PREC, False)
        if NUM_PAIRS > 0:
            _flush_buffer_grads(bacc, DBuf, dbuf_bases, NUM_PAIRS, PAIR_MODES)
    dk = dk * sm_scale
    n_ok = offs_n < seq_k
    dk_ptrs = DK + b.to(tl.int64) * dk_strides[0] + hk.to(tl.int64) * dk_strides[1] \
        + offs_n[:, None] * dk_strides[2] + offs_d[None, :]
    dv_ptrs = DV_out + b.to(tl.int64) * dv_strides[0] + hk.to(tl.int64) * dv_strides[1] \
        + offs_n[:, None] * dv_strides[2] + offs_dv[None, :]
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=n_ok[:, None] & (offs_d[None, :] < D))
    tl.store(dv_ptrs, dv.to(DV_out.dtype.element_ty), mask=n_ok[:, None] & (offs_dv[None, :] < DV))


@triton.jit
def _dq_tiles(dq, q, do, lse2, delta, k_base, v_base, stride_kn, stride_vn, idx_row, full_row, n_part,
              tile_lo, tile_hi,
              b, h, offs_m, seq_q, seq_k, sm_scale, qk_scale, score_args, mask_args, grad_args,
              SCORE_FN: tl.constexpr, MASK_FN: tl.constexpr, GRAD_FN: tl.constexpr, NUM_PAIRS: tl.constexpr,
              IS_FULL_BLOCK: tl.constexpr, MERGED: tl.constexpr, EVEN_Q: tl.constexpr, EVEN_KV: tl.constexpr,
              SPARSE_KV: tl.constexpr, BLOCK_N: tl.constexpr,
              D: tl.constexpr, DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
              PREC: tl.constexpr, DENSE: tl.constexpr):
    """dQ contributions of kv tiles [tile_lo, tile_hi) of one forward list (or of both,
    MERGED: Note [merged lists] in tiles.py; or of every kv tile, DENSE)."""
    APPLY_MASK: tl.constexpr = (not IS_FULL_BLOCK) and (MASK_FN is not None)
    NEEDS_KEEP: tl.constexpr = APPLY_MASK or (not EVEN_KV)
    offs_n0 = tl.arange(0, BLOCK_N)
    q_idx = offs_m[:, None]
    for t in range(tile_lo, tile_hi):
        offs_n = tile_start(idx_row, full_row, n_part, t, SPARSE_KV, BLOCK_N, MERGED, DENSE) + offs_n0
        k = load_tile(k_base, offs_n, stride_kn, seq_k, D, D_PAD, EVEN_KV)
        v = load_tile(v_base, offs_n, stride_vn, seq_k, DV, DV_PAD, EVEN_KV)
        qk = tl.dot(q, tl.trans(k), input_precision=PREC)
        kv_idx = offs_n[None, :]
        z = scores_log2(qk, b, h, q_idx, kv_idx, sm_scale, qk_scale, score_args, SCORE_FN)
        if NEEDS_KEEP:
            keep = keep_mask(b, h, q_idx, kv_idx, seq_q, seq_k, mask_args, z,
                             MASK_FN, APPLY_MASK, False, not EVEN_KV)
            z = tl.where(keep, z, float("-inf"))
        p = tl.math.exp2(z - lse2[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        if SCORE_FN is not None:
            ds, _ = _through_score_mod(qk, ds, b, h, q_idx, kv_idx, sm_scale, grad_args, GRAD_FN, NUM_PAIRS)
            if NEEDS_KEEP:
                ds = tl.where(keep, ds, 0.0)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PREC)
    return dq


@triton.jit
def _dq_program(
    tile_m, b, h, Q, K, V, DO, DQ, Lse2, Delta,
    q_strides, k_strides, v_strides, do_strides, dq_strides,
    kv_num, kv_idx, kv_num_strides, kv_idx_strides, full_num, full_idx, full_num_strides, full_idx_strides,
    seq_q, seq_k, num_heads, group, sm_scale, qk_scale, score_args, mask_args, grad_args,
    SCORE_FN: tl.constexpr, MASK_FN: tl.constexpr, GRAD_FN: tl.constexpr, NUM_PAIRS: tl.constexpr,
    HAS_FULL: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    SPARSE_Q: tl.constexpr, SPARSE_KV: tl.constexpr, EVEN_Q: tl.constexpr, EVEN_KV: tl.constexpr,
    PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DENSE: tl.constexpr,
):
    """dQ of q tile `tile_m` of (batch b, query head h): walks the forward lists."""
    start_m = tile_m * BLOCK_M
    hk = h // group
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    m_ok = offs_m < seq_q
    q = load_tile(Q + b.to(tl.int64) * q_strides[0] + h.to(tl.int64) * q_strides[1], offs_m, q_strides[2],
                  seq_q, D, D_PAD, EVEN_Q)
    do = load_tile(DO + b.to(tl.int64) * do_strides[0] + h.to(tl.int64) * do_strides[1], offs_m, do_strides[2],
                   seq_q, DV, DV_PAD, EVEN_Q)
    row = (b * num_heads + h).to(tl.int64) * seq_q + offs_m
    lse2 = tl.load(Lse2 + row, mask=m_ok, other=float("inf"))
    delta = tl.load(Delta + row, mask=m_ok, other=0.0)
    k_base = K + b.to(tl.int64) * k_strides[0] + hk.to(tl.int64) * k_strides[1]
    v_base = V + b.to(tl.int64) * v_strides[0] + hk.to(tl.int64) * v_strides[1]
    dq = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    bq = start_m // SPARSE_Q
    ROW_TILES: tl.constexpr = SPARSE_KV // BLOCK_N
    if DENSE:  # Note [dense walk] in tiles.py
        n_part, part_row = 0, kv_idx
        n_full, full_row = tl.cdiv(seq_k, BLOCK_N), kv_idx
    else:
        n_part, part_row = _list_row(kv_num, kv_idx, kv_num_strides, kv_idx_strides, b, h, bq, ROW_TILES)
        if HAS_FULL:
            n_full, full_row = _list_row(full_num, full_idx, full_num_strides, full_idx_strides, b, h, bq,
                                         ROW_TILES)
        else:
            n_full, full_row = 0, part_row
    if DENSE or (HAS_FULL and MASK_FN is None):  # Note [merged lists]
        dq = _dq_tiles(dq, q, do, lse2, delta, k_base, v_base, k_strides[2], v_strides[2], part_row, full_row,
                       n_part, 0, n_part + n_full, b, h, offs_m, seq_q, seq_k, sm_scale, qk_scale, score_args,
                       mask_args, grad_args, SCORE_FN, MASK_FN, GRAD_FN, NUM_PAIRS, True, True, EVEN_Q, EVEN_KV,
                       SPARSE_KV, BLOCK_N, D, DV, D_PAD, DV_PAD, PREC, DENSE)
    else:
        dq = _dq_tiles(dq, q, do, lse2, delta, k_base, v_base, k_strides[2], v_strides[2], part_row, part_row,
                       0, 0, n_part, b, h, offs_m, seq_q, seq_k, sm_scale, qk_scale, score_args, mask_args,
                       grad_args, SCORE_FN, MASK_FN, GRAD_FN, NUM_PAIRS, False, False, EVEN_Q, EVEN_KV,
                       SPARSE_KV, BLOCK_N, D, DV, D_PAD, DV_PAD, PREC, False)
        if HAS_FULL:
            dq = _dq_tiles(dq, q, do, lse2, delta, k_base, v_base, k_strides[2], v_strides[2], full_row, full_row,
                           0, 0, n_full, b, h, offs_m, seq_q, seq_k, sm_scale, qk_scale, score_args, mask_args,
                           grad_args, SCORE_FN, MASK_FN, GRAD_FN, NUM_PAIRS, True, False, EVEN_Q, EVEN_KV,
                           SPARSE_KV, BLOCK_N, D, DV, D_PAD, DV_PAD, PREC, False)
    dq = dq * sm_scale
    tl.store(DQ + b.to(tl.int64) * dq_strides[0] + h.to(tl.int64) * dq_strides[1]
             + offs_m[:, None] * dq_strides[2] + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=m_ok[:, None] & (offs_d[None, :] < D))


@triton.jit(do_not_specialize=["tune_key"])
def backward_kernel(
    Q, K, V, DO, DQ, DK, DV_out, Lse2, Delta, DBuf,
    q_strides, k_strides, v_strides, do_strides, dq_strides, dk_strides, dv_strides,
    kv_num, kv_idx, kv_num_strides, kv_idx_strides,  # forward lists (dQ programs)
    full_num, full_idx, full_num_strides, full_idx_strides,
    q_num, q_idx, q_num_strides, q_idx_strides,  # transposed lists (dK/dV programs)
    fq_num, fq_idx, fq_num_strides, fq_idx_strides,
    seq_q, seq_k, num_heads, num_kv_heads, group, sm_scale, qk_scale,
    score_args, mask_args, grad_args, dbuf_bases, tune_key,  # tune_key: unused, see configs.launch
    SCORE_FN: tl.constexpr, MASK_FN: tl.constexpr, GRAD_FN: tl.constexpr,
    NUM_PAIRS: tl.constexpr, PAIR_MODES: tl.constexpr, HAS_FULL: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    SPARSE_Q: tl.constexpr, SPARSE_KV: tl.constexpr, EVEN_Q: tl.constexpr, EVEN_KV: tl.constexpr,
    PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M2: tl.constexpr,
    BLOCK_N2: tl.constexpr, DENSE: tl.constexpr,
):
    """Grid (kv tiles + q tiles * group, batch * kv heads): program axis 0 runs over the
    dK/dV programs (one per BLOCK_N kv tile, tile BLOCK_M x BLOCK_N), then the dQ
    programs (one per BLOCK_M2 q tile and query head of the GQA group, tile BLOCK_M2 x
    BLOCK_N2). Note [one backward launch]."""
    pid = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // num_kv_heads
    hk = bhk % num_kv_heads
    n_kv_tiles = tl.cdiv(seq_k, BLOCK_N)
    if pid < n_kv_tiles:
        _dkdv_program(pid, b, hk, Q, K, V, DO, DK, DV_out, Lse2, Delta, DBuf,
                      q_strides, k_strides, v_strides, do_strides, dk_strides, dv_strides,
                      q_num, q_idx, q_num_strides, q_idx_strides, fq_num, fq_idx, fq_num_strides, fq_idx_strides,
                      seq_q, seq_k, num_heads, group, sm_scale, qk_scale, score_args, mask_args, grad_args,
                      dbuf_bases, SCORE_FN, MASK_FN, GRAD_FN, NUM_PAIRS, PAIR_MODES, HAS_FULL,
                      D, DV, D_PAD, DV_PAD, SPARSE_Q, SPARSE_KV, EVEN_Q, EVEN_KV, PREC, BLOCK_M, BLOCK_N, DENSE)
    else:
        # dQ program i: query head g of the group, q tile i % n_q_tiles
        i = pid - n_kv_tiles
        n_q_tiles = tl.cdiv(seq_q, BLOCK_M2)
        _dq_program(i % n_q_tiles, b, hk * group + i // n_q_tiles, Q, K, V, DO, DQ, Lse2, Delta,
                    q_strides, k_strides, v_strides, do_strides, dq_strides,
                    kv_num, kv_idx, kv_num_strides, kv_idx_strides,
                    full_num, full_idx, full_num_strides, full_idx_strides,
                    seq_q, seq_k, num_heads, group, sm_scale, qk_scale, score_args, mask_args, grad_args,
                    SCORE_FN, MASK_FN, GRAD_FN, NUM_PAIRS, HAS_FULL,
                    D, DV, D_PAD, DV_PAD, SPARSE_Q, SPARSE_KV, EVEN_Q, EVEN_KV, PREC, BLOCK_M2, BLOCK_N2, DENSE)


# --------------------------------------------------------------------------- host side

class BackwardLaunch:
    """The backward's two launches, called as (q, k, v, out, lse, dout, workspace) ->
    (dq, dk, dv). `strides` holds the (b, h, s) strides of q, k, v, out and dout, in
    that order; dq, dk, dv are allocated contiguous. `kv_*`/`q_*` are mods.BlockList
    (full ones may be None); `grad` is a mods.GradLaunch or None and `workspace` the
    fp32 tensor its buffer gradients are scattered into; `dense`: Note [dense walk]
    in tiles.py."""

    def __init__(self, prob, strides: tuple, scale: float, kv_part, kv_full, q_part, q_full, score, mask, grad,
                 device: torch.device, dense: bool = False):
        self.prob = prob
        consts = prob.constexprs()
        q_strides, k_strides, v_strides, out_strides, do_strides = strides
        block_r = 16 if interpreting() else 64
        self.preprocess = Launch(
            preprocess_kernel, (out_strides, do_strides, prob.seq_q, prob.heads),
            dict(DV=consts["DV"], DV_PAD=consts["DV_PAD"], BLOCK_R=block_r),
            lambda meta: (triton.cdiv(prob.seq_q, block_r), prob.batch * prob.heads), config=triton.Config({}))
        empty = empty_list(device)
        static_args = (
            q_strides, k_strides, v_strides, do_strides,
            contiguous_strides3((prob.batch, prob.heads, prob.seq_q, prob.head_dim)),
            contiguous_strides3((prob.batch, prob.kv_heads, prob.seq_k, prob.head_dim)),
            contiguous_strides3((prob.batch, prob.kv_heads, prob.seq_k, prob.head_dim_v)),
            *kv_part.args(), *(kv_full or empty).args(), *q_part.args(), *(q_full or empty).args(),
            prob.seq_q, prob.seq_k, prob.heads, prob.kv_heads, prob.group, scale, scale * 1.4426950408889634,
            score.args, mask.args, grad.args if grad is not None else score.args,
            grad.bases if grad is not None else (0,),
        )
        num_pairs = grad.num_pairs if grad is not None else 0
        consts = dict(SCORE_FN=score.fn, MASK_FN=mask.fn, GRAD_FN=grad.fn if grad is not None else None,
                      NUM_PAIRS=num_pairs, PAIR_MODES=grad.modes if grad is not None else 0,
                      HAS_FULL=kv_full is not None, DENSE=dense, **consts)

        def grid(meta):
            return (triton.cdiv(prob.seq_k, meta["BLOCK_N"]) + triton.cdiv(prob.seq_q, meta["BLOCK_M2"]) * prob.group,
                    prob.batch * prob.kv_heads)

        if interpreting():
            self.main = Launch(backward_kernel, static_args, consts, grid,
                               config=configs.interpreter_tile(prob.block_q, prob.block_kv, backward=True).config())
        else:
            # autotuning replays the kernel: the scatter-added workspace must restart from zero
            self.main = Launch(backward_kernel, static_args, consts, grid,
                               tiles=configs.backward_tiles(max(prob.head_dim, prob.head_dim_v), prob.dtype.itemsize),
                               tune_key=prob.tune_key(consts), block_q=prob.block_q, block_kv=prob.block_kv,
                               reset_to_zero=["DBuf"] if grad is not None and grad.workspace_size else None)

    def __call__(self, q, k, v, out, lse, dout, workspace):
        prob, dev = self.prob, q.device
        rows = prob.batch * prob.heads * prob.seq_q
        delta = alloc((rows,), torch.float32, dev)
        lse2 = alloc((rows,), torch.float32, dev)
        self.preprocess(out, dout, lse, delta, lse2)
        dq = alloc(q.shape, q.dtype, dev)
        dk = alloc(k.shape, k.dtype, dev)
        dv = alloc(v.shape, v.dtype, dev)
        # with nothing to scatter, `delta` stands in for the workspace (never written)
        self.main(q, k, v, dout, dq, dk, dv, lse2, delta, workspace if workspace is not None else delta)
        return dq, dk, dv
