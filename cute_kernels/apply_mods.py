"""Apply ModSpec hooks to a register fragment of scores (device side, inlined).

Each accumulator element's (q_idx, kv_idx) comes from an identity tensor of the tile,
offset to the tile's global position and partitioned like the accumulator (tScS).

Every thread's fragment has the same pattern of columns: kv_idx = kv_base + kv_off, with
kv_base this thread's first column (run time) and kv_off thread 0's column of the
element in the unshifted tile (t0ScS, a compile-time int). The mods take both, so their
affine comparisons and casts become one compare against an immediate per element
(mod_codegen.affine).
"""
import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32


def kv_base(tScS: cute.Tensor, t0ScS: cute.Tensor):
    """This thread's first column: kv_idx of element i == kv_base + kv_offset(t0ScS, i)."""
    return tScS[0][1] - t0ScS[0][1]


def kv_offset(t0ScS: cute.Tensor, i: int) -> int:
    """Element i's column in thread 0's fragment of the unshifted tile (trace time)."""
    kv_off = t0ScS[i][1]
    if not isinstance(kv_off, int):
        raise TypeError(f"thread 0's fragment column is not a compile-time int: {kv_off!r}")
    return kv_off


@cute.jit
def apply_score_mod(
    acc_S: cute.Tensor,
    tScS: cute.Tensor,
    t0ScS: cute.Tensor,
    score_mod: cutlass.Constexpr,
    batch_idx: Int32,
    head_idx: Int32,
    softmax_scale: Float32,
    bufs,
    scalars,
):
    """acc_S <- score_mod(acc_S * scale, ...). The scale is applied first (flex semantics)."""
    base = kv_base(tScS, t0ScS)
    for i in cutlass.range_constexpr(cute.size(acc_S)):
        q_idx, kv_idx = tScS[i]
        acc_S[i] = score_mod.fn(acc_S[i] * softmax_scale, batch_idx, head_idx, q_idx, kv_idx,
                                bufs, scalars, base, kv_offset(t0ScS, i))


@cute.jit
def apply_mask_mod(
    acc_S: cute.Tensor,
    tScS: cute.Tensor,
    t0ScS: cute.Tensor,
    mask_mod: cutlass.Constexpr,
    batch_idx: Int32,
    head_idx: Int32,
    bufs,
    scalars,
):
    base = kv_base(tScS, t0ScS)
    for i in cutlass.range_constexpr(cute.size(acc_S)):
        q_idx, kv_idx = tScS[i]
        keep = mask_mod.fn(batch_idx, head_idx, q_idx, kv_idx, bufs, scalars, base,
                           kv_offset(t0ScS, i))
        acc_S[i] = acc_S[i] if keep else -Float32.inf


@cute.jit
def apply_seqlen_mask(acc_S: cute.Tensor, tScS: cute.Tensor, t0ScS: cute.Tensor,
                      seqlen_k: Int32):
    """kv_idx < seqlen_k, as kv_off < seqlen_k - kv_base: one compare per element."""
    limit = seqlen_k - kv_base(tScS, t0ScS)
    for i in cutlass.range_constexpr(cute.size(acc_S)):
        acc_S[i] = acc_S[i] if kv_offset(t0ScS, i) < limit else -Float32.inf
