"""Split-KV decoding: few queries against a long KV.

With Q_LEN <= 64 a 128-row q tile would be mostly padding and B * Hq programs
rarely fill the GPU. Instead the q tile shrinks to the query count (>= 16, the
tl.dot minimum) and each row's tile list is cut into `num_splits` slices run by
separate programs (attention_fwd_kernel with IS_SPLIT); each writes a normalized
partial output, its log2-sum-exp and running max in fp32, and `combine_kernel`
merges the slices:

    out = sum_s 2^(lse_s - lse_max) * out_s / sum_s 2^(lse_s - lse_max)
    lse = lse_max + log2(sum_s 2^(lse_s - lse_max))

Empty slices (lse_s = -inf) weigh nothing; rows with no slice give 0 / -inf.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import DECODE_MAX_Q
from .forward import forward_launch
from .launch import Launch
from .problem import interpreting, num_sms
from .tiles import LN2


def choose_q_tile(seq_q: int, block_q: int) -> int:
    """The smallest power-of-two q tile >= 16 covering seq_q that divides the mask block."""
    tile = 16
    while tile < min(seq_q, DECODE_MAX_Q) and block_q % (tile * 2) == 0:
        tile *= 2
    return tile


def choose_splits(programs: int, max_tiles: int, num_sms: int) -> int:
    """Enough slices for about two programs per SM, each with at least 4 kv tiles
    (fewer and the combine's extra pass costs more than the parallelism gains)."""
    want = max(1, (2 * num_sms) // max(programs, 1))
    return max(1, min(want, max_tiles // 4, 128))


@triton.jit
def combine_kernel(Part, PartLse, PartMax, Out, Lse, MaxScores, rows, num_splits,
                   DV: tl.constexpr, DV_PAD: tl.constexpr, WRITE_MAX: tl.constexpr, BLOCK_R: tl.constexpr):
    """Part (S, rows, DV) fp32, PartLse / PartMax (S, rows) log2 units -> Out (rows, DV)
    in its dtype, Lse / MaxScores (rows,) natural units."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, DV_PAD)
    r_ok = offs_r < rows
    lse_max = tl.full([BLOCK_R], float("-inf"), tl.float32)
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    for s in range(num_splits):
        lse_max = tl.maximum(lse_max, tl.load(PartLse + s * rows + offs_r, mask=r_ok, other=float("-inf")))
        m = tl.maximum(m, tl.load(PartMax + s * rows + offs_r, mask=r_ok, other=float("-inf")))
    ref = tl.where(lse_max == float("-inf"), 0.0, lse_max)
    acc = tl.zeros([BLOCK_R, DV_PAD], tl.float32)
    total = tl.zeros([BLOCK_R], tl.float32)
    for s in range(num_splits):
        w = tl.math.exp2(tl.load(PartLse + s * rows + offs_r, mask=r_ok, other=float("-inf")) - ref)
        o = tl.load(Part + (s * rows + offs_r[:, None]).to(tl.int64) * DV + offs_d[None, :],
                    mask=r_ok[:, None] & (offs_d[None, :] < DV), other=0.0)
        acc += w[:, None] * o
        total += w
    safe = tl.where(total == 0.0, 1.0, total)
    out = acc / safe[:, None]
    tl.store(Out + offs_r[:, None].to(tl.int64) * DV + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=r_ok[:, None] & (offs_d[None, :] < DV))
    tl.store(Lse + offs_r, (ref + tl.math.log2(safe)) * LN2 + tl.where(total == 0.0, float("-inf"), 0.0), mask=r_ok)
    if WRITE_MAX:
        tl.store(MaxScores + offs_r, m * LN2, mask=r_ok)


# --------------------------------------------------------------------------- host side

class DecodeForward:
    """The forward for seq_q <= DECODE_MAX_Q, called as (q, k, v, out, lse, max_scores):
    a q tile sized to the queries and, when the (b, h, q-tile) programs alone leave SMs
    idle, split-KV with a combine pass."""

    def __init__(self, prob, strides: tuple, scale: float, part, full, score, mask, return_max: bool,
                 device: torch.device, dense: bool = False):
        block_m = choose_q_tile(prob.seq_q, prob.block_q)
        tile_n = 16 if interpreting() else 64
        programs = prob.batch * prob.heads * triton.cdiv(prob.seq_q, block_m)
        self.splits = choose_splits(programs, triton.cdiv(prob.seq_k, tile_n), num_sms(device))
        self.combine = None
        if self.splits == 1:
            self.attend = forward_launch(prob, strides, scale, part, full, score, mask, return_max, device,
                                         block_m=block_m, dense=dense)
            return
        self.attend = forward_launch(prob, strides, scale, part, full, score, mask, True, device,
                                     num_splits=self.splits, block_m=block_m, dense=dense)
        self.rows, self.head_dim_v = prob.batch * prob.heads * prob.seq_q, prob.head_dim_v
        block_r = 16
        consts = dict(DV=prob.head_dim_v, DV_PAD=max(16, triton.next_power_of_2(prob.head_dim_v)),
                      WRITE_MAX=return_max, BLOCK_R=block_r)
        self.combine = Launch(combine_kernel, (self.rows, self.splits), consts,
                              lambda meta: (triton.cdiv(self.rows, block_r),),
                              config=triton.Config({}, num_warps=1 if interpreting() else 4))

    def __call__(self, q, k, v, out, lse, max_scores) -> None:
        if self.combine is None:
            self.attend(q, k, v, out, lse, max_scores)
            return
        part_out = torch.empty(self.splits, self.rows, self.head_dim_v, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(self.splits, self.rows, dtype=torch.float32, device=q.device)
        part_max = torch.empty(self.splits, self.rows, dtype=torch.float32, device=q.device)
        self.attend(q, k, v, part_out, part_lse, part_max)
        self.combine(part_out, part_lse, part_max, out, lse, max_scores)
