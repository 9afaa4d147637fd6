"""Block-sparse attention forward (FlashAttention-2 online softmax) in Triton.

One program owns a (q tile, batch, query head) and walks the kv blocks its
BlockMask row lists: partial blocks first (mask_mod applied), then full blocks
(mask_mod skipped), both through one inner loop specialized by IS_FULL_BLOCK.
Each listed mask block expands to block_size_kv / BLOCK_N kernel tiles
(Note [tile divides mask block] in configs.py). The same kernel serves split-KV
decoding (split_kv.py): with IS_SPLIT, program axis 2 takes one contiguous slice
of the row's tile list and writes a partial result (its normalized out, log2-sum-exp
and running max) in fp32 for the combine kernel.

Supports: GQA/MQA (kv head = h // (Hq // Hkv); mods see the query head), head
dims 1..256 padded to powers of two >= 16 (qk dim may differ from v dim), any
lengths (tails masked), fp16/bf16/fp32 (fp32 through IEEE dots).
Fully masked rows give out = 0 and lse = -inf.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import configs
from .configs import Tile
from .launch import Launch
from .mods import empty_list
from .problem import interpreting
from .tiles import LN2, keep_mask, load_tile, scores_log2, tile_start


@triton.jit
def _attend(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, idx_row, full_row, n_part, tile_lo, tile_hi,
            b, h, offs_m, seq_q, seq_k, sm_scale, qk_scale, score_args, mask_args,
            SCORE_FN: tl.constexpr, MASK_FN: tl.constexpr, IS_FULL_BLOCK: tl.constexpr, MERGED: tl.constexpr,
            EVEN_KV: tl.constexpr, SPARSE_KV: tl.constexpr, BLOCK_N: tl.constexpr,
            D: tl.constexpr, DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
            PREC: tl.constexpr, DENSE: tl.constexpr):
    """Online softmax over kernel tiles [tile_lo, tile_hi) of one block list (or of
    both, MERGED: Note [merged lists] in tiles.py; or of every kv tile, DENSE)."""
    APPLY_MASK: tl.constexpr = (not IS_FULL_BLOCK) and (MASK_FN is not None)
    NEEDS_KEEP: tl.constexpr = APPLY_MASK or (not EVEN_KV)
    offs_n0 = tl.arange(0, BLOCK_N)
    q_idx = offs_m[:, None]
    for t in range(tile_lo, tile_hi):
        offs_n = tile_start(idx_row, full_row, n_part, t, SPARSE_KV, BLOCK_N, MERGED, DENSE) + offs_n0
        k = load_tile(k_base, offs_n, stride_kn, seq_k, D, D_PAD, EVEN_KV)
        qk = tl.dot(q, tl.trans(k), input_precision=PREC)
        kv_idx = offs_n[None, :]
        # Note [scale folded into exp2]: without a score_mod the row max is taken on the
        # raw qk (scale > 0 keeps the arg max) and the scale goes into the exponent's
        # FMA, qk * (scale * log2 e) - m: one FP32 op per score fewer than scaling first.
        if SCORE_FN is None:
            z = qk
        else:
            z = scores_log2(qk, b, h, q_idx, kv_idx, sm_scale, qk_scale, score_args, SCORE_FN)
        if NEEDS_KEEP:
            keep = keep_mask(b, h, q_idx, kv_idx, seq_q, seq_k, mask_args, z,
                             MASK_FN, APPLY_MASK, False, not EVEN_KV)
            z = tl.where(keep, z, float("-inf"))
        if SCORE_FN is None:
            m_new = tl.maximum(m_i, tl.max(z, 1) * qk_scale)
        else:
            m_new = tl.maximum(m_i, tl.max(z, 1))
        # a row with nothing unmasked so far keeps m = -inf; subtract 0 instead so
        # exp2 gives 0 rather than NaN
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        if SCORE_FN is None:
            p = tl.math.exp2(z * qk_scale - m_sub[:, None])
        else:
            p = tl.math.exp2(z - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = load_tile(v_base, offs_n, stride_vn, seq_k, DV, DV_PAD, EVEN_KV)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _row_tiles(num_ptr, bq, n_strides, b, h, ROW_TILES: tl.constexpr):
    """Number of kernel tiles a block-list row holds."""
    return tl.load(num_ptr + b * n_strides[0] + h * n_strides[1] + bq * n_strides[2]) * ROW_TILES


@triton.jit(do_not_specialize=["tune_key"])
def attention_fwd_kernel(
    Q, K, V, Out, Lse, MaxScores,  # q (B,Hq,Sq,D) k (B,Hkv,Skv,D) v (B,Hkv,Skv,DV); outputs contiguous
    q_strides, k_strides, v_strides,  # (b, h, s) element strides; last dims contiguous
    kv_num, kv_idx, kv_num_strides, kv_idx_strides,  # partial-block lists
    full_num, full_idx, full_num_strides, full_idx_strides,  # full-block lists
    seq_q, seq_k, num_batch, num_heads, group, sm_scale, qk_scale, num_splits,
    score_args, mask_args, tune_key,  # tune_key: the autotuning key's hash, unused
    SCORE_FN: tl.constexpr, MASK_FN: tl.constexpr, HAS_FULL: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    SPARSE_Q: tl.constexpr, SPARSE_KV: tl.constexpr, EVEN_Q: tl.constexpr, EVEN_KV: tl.constexpr,
    PREC: tl.constexpr, WRITE_MAX: tl.constexpr, IS_SPLIT: tl.constexpr, DENSE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    split = tl.program_id(2)
    b = bh // num_heads
    h = bh % num_heads
    hk = h // group
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, DV_PAD)

    # this q tile's row of the BlockMask and its tile ranges
    bq = (start_m * BLOCK_M) // SPARSE_Q
    ROW_TILES: tl.constexpr = SPARSE_KV // BLOCK_N
    if DENSE:  # Note [dense walk] in tiles.py
        n_part = 0
        n_full = tl.cdiv(seq_k, BLOCK_N)
    else:
        n_part = _row_tiles(kv_num, bq, kv_num_strides, b, h, ROW_TILES)
        if HAS_FULL:
            n_full = _row_tiles(full_num, bq, full_num_strides, b, h, ROW_TILES)
        else:
            n_full = 0
    if IS_SPLIT:
        per = tl.cdiv(n_part + n_full, num_splits)
        lo = split * per
        hi = tl.minimum(lo + per, n_part + n_full)
        part_lo = tl.minimum(lo, n_part)
        part_hi = tl.minimum(hi, n_part)
        full_lo = tl.maximum(lo - n_part, 0)
        full_hi = tl.maximum(hi - n_part, 0)
    else:
        lo = 0
        hi = n_part + n_full
        part_lo = 0
        part_hi = n_part
        full_lo = 0
        full_hi = n_full

    q_base = Q + b.to(tl.int64) * q_strides[0] + h.to(tl.int64) * q_strides[1]
    q = load_tile(q_base, offs_m, q_strides[2], seq_q, D, D_PAD, EVEN_Q)
    k_base = K + b.to(tl.int64) * k_strides[0] + hk.to(tl.int64) * k_strides[1]
    v_base = V + b.to(tl.int64) * v_strides[0] + hk.to(tl.int64) * v_strides[1]

    acc = tl.zeros([BLOCK_M, DV_PAD], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)

    part_row = kv_idx + b * kv_idx_strides[0] + h * kv_idx_strides[1] + bq * kv_idx_strides[2]
    full_row = full_idx + b * full_idx_strides[0] + h * full_idx_strides[1] + bq * full_idx_strides[2]
    if DENSE or (HAS_FULL and MASK_FN is None):  # Note [merged lists]
        acc, l_i, m_i = _attend(acc, l_i, m_i, q, k_base, v_base, k_strides[2], v_strides[2], part_row, full_row,
                                n_part, lo, hi, b, h, offs_m, seq_q, seq_k, sm_scale, qk_scale,
                                score_args, mask_args, SCORE_FN, MASK_FN, True, True, EVEN_KV, SPARSE_KV, BLOCK_N,
                                D, DV, D_PAD, DV_PAD, PREC, DENSE)
    else:
        acc, l_i, m_i = _attend(acc, l_i, m_i, q, k_base, v_base, k_strides[2], v_strides[2], part_row, part_row,
                                0, part_lo, part_hi, b, h, offs_m, seq_q, seq_k, sm_scale, qk_scale,
                                score_args, mask_args, SCORE_FN, MASK_FN, False, False, EVEN_KV, SPARSE_KV, BLOCK_N,
                                D, DV, D_PAD, DV_PAD, PREC, False)
        if HAS_FULL:
            acc, l_i, m_i = _attend(acc, l_i, m_i, q, k_base, v_base, k_strides[2], v_strides[2], full_row,
                                    full_row, 0, full_lo, full_hi, b, h, offs_m, seq_q, seq_k, sm_scale, qk_scale,
                                    score_args, mask_args, SCORE_FN, MASK_FN, True, False, EVEN_KV, SPARSE_KV,
                                    BLOCK_N, D, DV, D_PAD, DV_PAD, PREC, False)

    # epilogue: rows that saw nothing have l = 0, m = -inf -> out 0, lse -inf
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse2 = m_i + tl.math.log2(l_safe)
    row = (split * num_batch * num_heads + bh).to(tl.int64) * seq_q + offs_m
    o_ptrs = Out + row[:, None] * DV + offs_dv[None, :]
    row_ok = offs_m < seq_q
    if IS_SPLIT:
        tl.store(o_ptrs, out, mask=row_ok[:, None] & (offs_dv[None, :] < DV))
        tl.store(Lse + row, lse2, mask=row_ok)
        tl.store(MaxScores + row, m_i, mask=row_ok)
    else:
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & (offs_dv[None, :] < DV))
        tl.store(Lse + row, lse2 * LN2, mask=row_ok)
        if WRITE_MAX:
            tl.store(MaxScores + row, m_i * LN2, mask=row_ok)


# --------------------------------------------------------------------------- host side

def forward_launch(prob, strides: tuple, scale: float, part, full, score, mask, return_max: bool,
                   device: torch.device, num_splits: int = 1, block_m: int | None = None,
                   dense: bool = False) -> Launch:
    """attention_fwd_kernel as a Launch taking (q, k, v, out, lse, max_scores), where
    `strides` are q's, k's and v's (b, h, s) strides and max_scores may be lse when not
    wanted. `part`/`full` are mods.BlockList (full may be None); `score`/`mask` are
    mods.ModLaunch. With num_splits > 1 (split-KV) the outputs are the fp32 partial
    buffers of split_kv.py and `block_m` fixes the q tile; otherwise the tile is
    autotuned on a GPU. `dense`: Note [dense walk] in tiles.py (the caller has checked
    that there is no mask_mod)."""
    full_list = full if full is not None else empty_list(device)
    static_args = (
        *strides, *part.args(), *full_list.args(),
        prob.seq_q, prob.seq_k, prob.batch, prob.heads, prob.group, scale, scale * 1.4426950408889634, num_splits,
        score.args, mask.args,
    )
    consts = dict(
        SCORE_FN=score.fn, MASK_FN=mask.fn, HAS_FULL=full is not None, **prob.constexprs(),
        WRITE_MAX=return_max, IS_SPLIT=num_splits > 1, DENSE=dense,
    )

    def grid(meta):
        return (triton.cdiv(prob.seq_q, meta["BLOCK_M"]), prob.batch * prob.heads, num_splits)

    if interpreting():
        tile = configs.interpreter_tile(prob.block_q, prob.block_kv)
        config = Tile(block_m or tile.m, tile.n, tile.warps, tile.stages).config()
    elif block_m is not None:
        bn = next(n for n in configs.DECODE_TILE_N if prob.block_kv % n == 0)
        config = Tile(block_m, bn, 4, 3).config()
    else:
        return Launch(attention_fwd_kernel, static_args, consts, grid,
                      tiles=configs.forward_tiles(max(prob.head_dim, prob.head_dim_v), prob.dtype.itemsize),
                      tune_key=prob.tune_key(consts), block_q=prob.block_q, block_kv=prob.block_kv)
    return Launch(attention_fwd_kernel, static_args, consts, grid, config=config)
