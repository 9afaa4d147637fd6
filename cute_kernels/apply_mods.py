"""Apply ModSpec hooks to a register fragment of scores (device side, inlined).

Each accumulator element's (q_idx, kv_idx) comes from an identity tensor of the tile,
offset to the tile's global position and partitioned like the accumulator (tScS).
"""
import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32


@cute.jit
def apply_score_mod(
    acc_S: cute.Tensor,
    tScS: cute.Tensor,
    score_mod: cutlass.Constexpr,
    batch_idx: Int32,
    head_idx: Int32,
    softmax_scale: Float32,
    bufs,
    scalars,
):
    """acc_S <- score_mod(acc_S * scale, ...). The scale is applied first (flex semantics)."""
    for i in cutlass.range_constexpr(cute.size(acc_S)):
        q_idx, kv_idx = tScS[i]
        acc_S[i] = score_mod.fn(
            acc_S[i] * softmax_scale, batch_idx, head_idx, q_idx, kv_idx, bufs, scalars
        )


@cute.jit
def apply_mask_mod(
    acc_S: cute.Tensor,
    tScS: cute.Tensor,
    mask_mod: cutlass.Constexpr,
    batch_idx: Int32,
    head_idx: Int32,
    bufs,
    scalars,
):
    for i in cutlass.range_constexpr(cute.size(acc_S)):
        q_idx, kv_idx = tScS[i]
        keep = mask_mod.fn(batch_idx, head_idx, q_idx, kv_idx, bufs, scalars)
        acc_S[i] = acc_S[i] if keep else -Float32.inf


@cute.jit
def apply_seqlen_mask(acc_S: cute.Tensor, tScS: cute.Tensor, seqlen_k: Int32):
    for i in cutlass.range_constexpr(cute.size(acc_S)):
        _, kv_idx = tScS[i]
        acc_S[i] = acc_S[i] if kv_idx < seqlen_k else -Float32.inf
