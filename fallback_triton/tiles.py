"""Device helpers shared by the forward and backward kernels.

Scores live in base-2 units inside the kernels: z = mod(qk * scale) * log2(e)
(or qk * scale * log2(e) folded into one multiply when there is no score_mod), so
softmax uses exp2. The helpers take index grids that broadcast either way round
(q_idx [M, 1] / kv_idx [1, N] in the forward and dQ pass, transposed in the dK/dV
pass): mods are elementwise, so the same code serves both layouts.
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def load_tile(base, rows, row_stride, n_rows, COLS: tl.constexpr, COLS_PAD: tl.constexpr,
              EVEN_ROWS: tl.constexpr):
    """The [len(rows), COLS_PAD] tile of a row-major matrix at `base` (unit column
    stride); rows past n_rows and columns past COLS read 0. Unmasked when neither can
    happen, so full tiles get plain vector loads."""
    cols = tl.arange(0, COLS_PAD)
    ptrs = base + rows[:, None] * row_stride + cols[None, :]
    if EVEN_ROWS and COLS == COLS_PAD:
        tile = tl.load(ptrs)
    else:
        tile = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (cols[None, :] < COLS), other=0.0)
    return tile


@triton.jit
def scores_log2(qk, b, h, q_idx, kv_idx, sm_scale, qk_scale, score_args, SCORE_FN: tl.constexpr):
    """The post-mod score in log2 units (the generated score_mod always returns a
    full tile: mod_codegen.emit_triton broadcasts scores that ignore `score`)."""
    if SCORE_FN is not None:
        s = SCORE_FN(qk * sm_scale, b, h, q_idx, kv_idx,
                     score_args[0], score_args[1], score_args[2], score_args[3])
        z = s.to(tl.float32) * LOG2E
    else:
        z = qk * qk_scale
    return z


@triton.jit
def keep_mask(b, h, q_idx, kv_idx, seq_q, seq_k, mask_args, like,
              MASK_FN: tl.constexpr, APPLY_MASK: tl.constexpr, CHECK_Q: tl.constexpr, CHECK_KV: tl.constexpr):
    """Which pairs of the tile take part: mask_mod (partial blocks only) and the
    sequence ends. Call only when one of the flags is set."""
    keep = tl.full(like.shape, 1, tl.int1)  # shaped like the score tile `like`
    if APPLY_MASK:
        m = MASK_FN(b, h, q_idx, kv_idx, mask_args[0], mask_args[1], mask_args[2], mask_args[3])
        keep = keep & m
    if CHECK_KV:
        keep = keep & (kv_idx < seq_k)
    if CHECK_Q:
        keep = keep & (q_idx < seq_q)
    return keep


@triton.jit
def block_of_tile(idx_row, full_row, n_part, t, TILES_PER_BLOCK: tl.constexpr, MERGED: tl.constexpr):
    """The mask block holding kernel tile t of a block list. MERGED: t runs over the
    partial list's tiles, then the full list's (n_part = the partial list's tile count).

    Note [merged lists]: without a mask_mod, partial and full blocks are treated alike
    (only the sequence tails are masked), so the kernels walk both lists in one loop:
    one software pipeline instead of two, which matters when rows are short."""
    if MERGED:
        ptr = tl.where(t < n_part, idx_row + t // TILES_PER_BLOCK, full_row + (t - n_part) // TILES_PER_BLOCK)
    else:
        ptr = idx_row + t // TILES_PER_BLOCK
    return tl.load(ptr)


@triton.jit
def tile_start(idx_row, full_row, n_part, t, SPARSE: tl.constexpr, BLOCK: tl.constexpr, MERGED: tl.constexpr,
               DENSE: tl.constexpr):
    """First row (q or kv) of the t-th visited kernel tile of a block list.

    Note [dense walk]: with DENSE (no block_mask given: every block full, no mask_mod)
    the t-th tile is simply the t-th of the sequence and the lists are never read; a
    list walk puts an index load in front of every tile's loads, which short rows
    (S=2048: 16 tiles) cannot hide (H200, noop forward S=2048: 0.88x -> 1.07x of torch
    flex's Triton path)."""
    if DENSE:
        start = t * BLOCK
    else:
        TILES_PER_BLOCK: tl.constexpr = SPARSE // BLOCK
        blk = block_of_tile(idx_row, full_row, n_part, t, TILES_PER_BLOCK, MERGED)
        start = blk * SPARSE + (t % TILES_PER_BLOCK) * BLOCK
    return start
