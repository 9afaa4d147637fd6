"""Which KV tiles a (batch, head, q-tile) visits, read from BlockMask tensors.

Note [mask blocks vs kernel tiles]: a BlockMask block is (Q_BS x KV_BS) and the kernel
tile is (tile_m x tile_n) with tile_m | Q_BS and tile_n | KV_BS. A q-tile reads the row
of its enclosing mask block; each listed KV block expands to KV_BS / tile_n consecutive
kernel tiles. Partial-block tiles get mask_mod, full-block tiles do not; every tile also
gets the seqlen mask when it reaches past seqlen_k (the BlockMask was built on padded
lengths, so the tail block may be listed as full).

The broadcast of B' = 1 or H' = 1 is a runtime modulo (b % B'), so one compiled kernel
serves both shapes.
"""
import cutlass
import cutlass.cute as cute
from cutlass import Int32, const_expr


@cute.jit
def sparse_row(sparse, batch_idx: Int32, head_idx: Int32, m_block: Int32, tile_m: cutlass.Constexpr,
               q_block_size: Int32, kv_ratio: Int32):
    """The q-tile's row of the BlockMask: (b', h', q-block, #partial tiles, #full tiles)."""
    cnt, idx, full_cnt, full_idx = sparse
    b = batch_idx % cnt.shape[0]
    h = head_idx % cnt.shape[1]
    qb = (m_block * tile_m) // q_block_size
    num_partial = cnt[b, h, qb] * kv_ratio
    num_full = Int32(0)
    if const_expr(full_cnt is not None):
        num_full = full_cnt[b, h, qb] * kv_ratio
    return b, h, qb, num_partial, num_full


@cute.jit
def sparse_tile(indices: cute.Tensor, b: Int32, h: Int32, qb: Int32, kv_ratio: Int32, t: Int32) -> Int32:
    """Kernel KV-tile index of the t-th tile of a (partial or full) block list."""
    blk = indices[b, h, qb, t // kv_ratio]
    return blk * kv_ratio + t % kv_ratio
