"""Which KV tiles a (batch, head, q-tile) visits, read from BlockMask tensors.

Note [mask blocks vs kernel tiles]: a BlockMask block is (Q_BS x KV_BS) and the kernel
tile is (tile_m x tile_n) with tile_m | Q_BS and tile_n | KV_BS. A q-tile reads the row
of its enclosing mask block; each listed KV block expands to KV_BS / tile_n consecutive
kernel tiles. Partial-block tiles get mask_mod, full-block tiles do not; every tile also
gets the seqlen mask when it reaches past seqlen_k (the BlockMask was built on padded
lengths, so the tail block may be listed as full).

Both ratios (Q_BS / tile_m, KV_BS / tile_n) are compile-time constants: with runtime
ratios the per-tile index arithmetic was an integer division inside the mainloop (about
100 extra SASS instructions per iteration at hdim 128, next to ~600 for the whole step).

The broadcast of B' = 1 or H' = 1 is a runtime modulo (b % B'), once per q-tile, so one
compiled kernel serves both shapes.
"""
import cutlass
import cutlass.cute as cute
from cutlass import Int32, const_expr


@cute.jit
def sparse_rows(sparse, batch_idx: Int32, head_idx: Int32, m_block: Int32,
                q_ratio: cutlass.Constexpr):
    """The q-tile's BlockMask rows (partial list, full list or None), without loading
    anything. A row is (index tensor, b', h', q-block).

    Not a 1-D view of the tensor: a view's base pointer is one more 64-bit value live
    across the KV loop, and the two of them made ptxas serialize the consumers' wgmmas at
    hdim 128 (C7512) back when the consumers read the lists too; indexing the 4-D tensor
    reuses values it keeps anyway. Since Note [kv tile ring] (hopper_fwd.py) only the
    producer warp reads the rows."""
    cnt, idx, full_cnt, full_idx = sparse
    b = batch_idx % cnt.shape[0]
    h = head_idx % cnt.shape[1]
    qb = m_block // q_ratio
    full_row = None if const_expr(full_cnt is None) else (full_idx, b, h, qb)
    return (idx, b, h, qb), full_row


@cute.jit
def sparse_row(sparse, batch_idx: Int32, head_idx: Int32, m_block: Int32,
               q_ratio: cutlass.Constexpr, kv_ratio: cutlass.Constexpr):
    """The q-tile's BlockMask row: (#partial tiles, #full tiles, partial-list row,
    full-list row), the rows as in sparse_rows."""
    cnt, _, full_cnt, _ = sparse
    part_row, full_row = sparse_rows(sparse, batch_idx, head_idx, m_block, q_ratio)
    _, b, h, qb = part_row
    num_partial = cnt[b, h, qb] * kv_ratio
    num_full = Int32(0)
    if const_expr(full_cnt is not None):
        num_full = full_cnt[b, h, qb] * kv_ratio
    return num_partial, num_full, part_row, full_row


@cute.jit
def sparse_tile(row, t: Int32, kv_ratio: cutlass.Constexpr) -> Int32:
    """Kernel KV-tile index of the t-th tile of a block-list row."""
    idx, b, h, qb = row
    tile = Int32(0)
    if const_expr(kv_ratio == 1):
        tile = idx[b, h, qb, t]
    else:
        tile = idx[b, h, qb, t // kv_ratio] * kv_ratio + t % kv_ratio
    return tile
