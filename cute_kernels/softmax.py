"""Online softmax over one warpgroup's (64 x tile_n) score fragment, base 2.

Each thread owns 2 rows of the 64-row slab; a row is spread over the 4 threads of a
quad, so row reductions are a local reduction plus two butterfly shuffles.
The softmax scale (times log2(e)) is folded into the exponent, so the scores are never
rescaled in place: p = exp2(s * scale_log2 - m * scale_log2).

Note [lazy rescale]: the exponent's shift m need not be the row max, only near it. With
`lazy`, a row keeps its shift (the "reference max") until the running max passes it by
more than LAZY_RESCALE_LOG2 (so p <= 2^8, far inside bf16/fp16/fp32 range). A row whose
shift did not move has row scale exactly 1, and once a warp's rows all keep theirs the
caller skips rescaling the O accumulator (64 FMULs a thread at hdim 128) for that tile;
with random scores that is nearly every tile after the first few. O, the row sum and
the LSE use the shift; the returned max scores use the true running max. FA4 uses the
same idea on Blackwell.
"""
import math

import cutlass
import cutlass.cute as cute
from cutlass import Float32

from .fragments import as_mn

LOG2_E = math.log2(math.e)
LN_2 = math.log(2.0)
LAZY_RESCALE_LOG2 = 8.0


class OnlineSoftmax:
    """Running row max / row sum in registers. Not a device object: a trace-time helper
    holding references to rmem tensors (they are mutated in place)."""

    def __init__(self, scale_log2: Float32, num_rows: int, lazy: bool = False, _state=None):
        self.lazy = lazy  # Note [lazy rescale]
        if _state is not None:  # rebuilt from IR values (see __new_from_mlir_values__)
            self.scale_log2, self.row_max, self.row_sum, self.row_ref = _state
            return
        self.scale_log2 = scale_log2
        self.row_max = cute.make_rmem_tensor(num_rows, Float32)
        self.row_sum = cute.make_rmem_tensor(num_rows, Float32)
        # the exponent's shift: the row max itself unless lazy
        self.row_ref = cute.make_rmem_tensor(num_rows, Float32) if lazy else self.row_max
        self.reset()

    def reset(self):
        self.row_max.fill(-Float32.inf)
        self.row_sum.fill(0.0)
        if cutlass.const_expr(self.lazy):
            self.row_ref.fill(-Float32.inf)

    def _parts(self):
        own_ref = (self.row_ref,) if self.lazy else ()  # else row_ref is row_max
        return (self.scale_log2, self.row_max, self.row_sum) + own_ref

    # Lets the object cross dynamic `if` / `for` regions of the DSL.
    def __extract_mlir_values__(self):
        parts = [cutlass.extract_mlir_values(x) for x in self._parts()]
        self._lens = [len(p) for p in parts]
        return [v for p in parts for v in p]

    def __new_from_mlir_values__(self, values):
        out, pos = [], 0
        for x, n in zip(self._parts(), self._lens):
            out.append(cutlass.new_from_mlir_values(x, values[pos:pos + n]))
            pos += n
        if not self.lazy:
            out.append(out[1])
        return OnlineSoftmax(None, 0, self.lazy, _state=tuple(out))

    def new_max_buffer(self) -> cute.Tensor:
        return cute.make_rmem_tensor_like(self.row_max, Float32)

    @cute.jit
    def update_max(self, acc_S: cute.Tensor, m_new: cute.Tensor):
        """m_new <- running row max including acc_S, reduced over the quad. Split from
        `step` so the caller can place it before a branch join (Note [wait placement])."""
        s_mn = as_mn(acc_S)
        for r in cutlass.range_constexpr(cute.size(self.row_max)):
            row = s_mn[r, None].load()
            m_new[r] = quad_max(row.reduce(cute.ReductionOp.MAX, self.row_max[r], 0))

    @cute.jit
    def step(self, acc_S: cute.Tensor, m_new: cute.Tensor):
        """Exponentiate acc_S in place (it becomes P) given the new row max from
        update_max. Returns (the factors by which the O accumulator rows must be
        rescaled, whether any row of this warp needs it): the flag is warp-uniform and
        always true unless lazy (Note [lazy rescale])."""
        s_mn = as_mn(acc_S)
        row_scale = cute.make_rmem_tensor_like(self.row_max, Float32)
        moved = cutlass.Boolean(not self.lazy)
        for r in cutlass.range_constexpr(cute.size(self.row_max)):
            row = s_mn[r, None].load()
            ref_prev = self.row_ref[r]
            self.row_max[r] = m_new[r]
            if cutlass.const_expr(self.lazy):
                # A NaN difference (NaN max, or -inf on both sides) takes the new max, as
                # the eager shift would: a NaN reaches O and the LSE, an empty row stays
                # -inf. The row scale is 1 (or 0 on a still-empty row) unless ref changed.
                keep = (m_new[r] - ref_prev) * self.scale_log2 <= LAZY_RESCALE_LOG2
                self.row_ref[r] = ref_prev if keep else m_new[r]
                moved = moved | (self.row_ref[r] != ref_prev)
            # Note [fully masked rows]: while a row has seen only -inf, shift by 0 so
            # exp2(-inf - 0) = 0 instead of exp2(-inf + inf) = NaN.
            ref = self.row_ref[r]
            m_safe = ref if ref != -Float32.inf else Float32(0.0)
            shift = m_safe * self.scale_log2
            p = cute.math.exp2(row * self.scale_log2 - shift, fastmath=True)
            row_scale[r] = cute.math.exp2(ref_prev * self.scale_log2 - shift, fastmath=True)
            self.row_sum[r] = self.row_sum[r] * row_scale[r] + p.reduce(
                cute.ReductionOp.ADD, Float32(0.0), 0
            )
            s_mn[r, None].store(p)
        if cutlass.const_expr(self.lazy):
            moved = cute.arch.vote_any_sync(moved)
        return row_scale, moved

    @cute.jit
    def finalize(self):
        """Reduce row sums across the quad; return (1/sum, lse_natural, max_natural).

        Empty rows (every score -inf, so the max stays -inf) get 1/sum = 0 (O = 0) and
        lse = -inf. A NaN score (e.g. from a score_mod) is not an empty row: the NaN
        reaches O and lse, as in the float64 reference."""
        inv = cute.make_rmem_tensor_like(self.row_sum, Float32)
        lse = cute.make_rmem_tensor_like(self.row_sum, Float32)
        mx = cute.make_rmem_tensor_like(self.row_sum, Float32)
        for r in cutlass.range_constexpr(cute.size(self.row_sum)):
            s = cute.arch.warp_reduction_sum(self.row_sum[r], threads_in_group=4)
            m = self.row_ref[r]  # the shift the row sum is relative to
            empty = m == -Float32.inf
            inv[r] = Float32(0.0) if empty else cute.arch.rcp_approx(s)
            m_safe = Float32(0.0) if empty else m
            lse[r] = (
                -Float32.inf
                if empty
                else (m_safe * self.scale_log2 + cute.math.log2(s, fastmath=True)) * LN_2
            )
            mx[r] = self.row_max[r] * (self.scale_log2 * LN_2)
        return inv, lse, mx


@cute.jit
def quad_max(x: Float32) -> Float32:
    """Max over the 4 threads of a quad, NaN-propagating like the per-thread reduce (a
    NaN score must reach O and LSE): one FMNMX.NAN per shuffle. (With
    warp_reduction_max here, Nsight Compute's SASS showed a compare-and-select sequence
    after the first shuffle.)"""
    for offset in (2, 1):
        x = cute.arch.fmax(x, cute.arch.shuffle_sync_bfly(x, offset=offset), nan=True)
    return x


@cute.jit
def rescale_rows(acc_O: cute.Tensor, row_scale: cute.Tensor, dst=None):
    """acc_O's rows times row_scale, in place, or into dst (its element type, acc_O
    untouched) when given."""
    o_mn = as_mn(acc_O)
    d_mn = o_mn if cutlass.const_expr(dst is None) else as_mn(dst)
    for r in cutlass.range_constexpr(cute.size(row_scale)):
        d_mn[r, None].store((o_mn[r, None].load() * row_scale[r]).to(d_mn.element_type))
