"""Online softmax over one warpgroup's (64 x tile_n) score fragment, base 2.

Each thread owns 2 rows of the 64-row slab; a row is spread over the 4 threads of a
quad, so row reductions are a local reduction plus two butterfly shuffles.
The softmax scale (times log2(e)) is folded into the exponent, so the scores are never
rescaled in place: p = exp2(s * scale_log2 - m * scale_log2).
"""
import math

import cutlass
import cutlass.cute as cute
from cutlass import Float32

from .fragments import as_mn

LOG2_E = math.log2(math.e)
LN_2 = math.log(2.0)


class OnlineSoftmax:
    """Running row max / row sum in registers. Not a device object: a trace-time helper
    holding references to two rmem tensors (they are mutated in place)."""

    def __init__(self, scale_log2: Float32, num_rows: int, _state=None):
        if _state is not None:  # rebuilt from IR values (see __new_from_mlir_values__)
            self.scale_log2, self.row_max, self.row_sum = _state
            return
        self.scale_log2 = scale_log2
        self.row_max = cute.make_rmem_tensor(num_rows, Float32)
        self.row_sum = cute.make_rmem_tensor(num_rows, Float32)
        self.row_max.fill(-Float32.inf)
        self.row_sum.fill(0.0)

    def reset(self):
        self.row_max.fill(-Float32.inf)
        self.row_sum.fill(0.0)

    # Lets the object cross dynamic `if` / `for` regions of the DSL.
    def __extract_mlir_values__(self):
        parts = [cutlass.extract_mlir_values(x) for x in (self.scale_log2, self.row_max, self.row_sum)]
        self._lens = [len(p) for p in parts]
        return [v for p in parts for v in p]

    def __new_from_mlir_values__(self, values):
        out, pos = [], 0
        for x, n in zip((self.scale_log2, self.row_max, self.row_sum), self._lens):
            out.append(cutlass.new_from_mlir_values(x, values[pos:pos + n]))
            pos += n
        return OnlineSoftmax(None, 0, _state=tuple(out))

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
    def step(self, acc_S: cute.Tensor, m_new: cute.Tensor) -> cute.Tensor:
        """Exponentiate acc_S in place (it becomes P) given the new row max from
        update_max, and return the factor by which the O accumulator rows must be
        rescaled."""
        s_mn = as_mn(acc_S)
        row_scale = cute.make_rmem_tensor_like(self.row_max, Float32)
        for r in cutlass.range_constexpr(cute.size(self.row_max)):
            row = s_mn[r, None].load()
            m_prev = self.row_max[r]
            self.row_max[r] = m_new[r]
            # Note [fully masked rows]: while a row has seen only -inf, shift by 0 so
            # exp2(-inf - 0) = 0 instead of exp2(-inf + inf) = NaN.
            m_safe = m_new[r] if m_new[r] != -Float32.inf else Float32(0.0)
            shift = m_safe * self.scale_log2
            p = cute.math.exp2(row * self.scale_log2 - shift, fastmath=True)
            row_scale[r] = cute.math.exp2(m_prev * self.scale_log2 - shift, fastmath=True)
            self.row_sum[r] = self.row_sum[r] * row_scale[r] + p.reduce(
                cute.ReductionOp.ADD, Float32(0.0), 0
            )
            s_mn[r, None].store(p)
        return row_scale

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
            m = self.row_max[r]
            empty = m == -Float32.inf
            inv[r] = Float32(0.0) if empty else cute.arch.rcp_approx(s)
            m_safe = Float32(0.0) if empty else m
            lse[r] = (
                -Float32.inf
                if empty
                else (m_safe * self.scale_log2 + cute.math.log2(s, fastmath=True)) * LN_2
            )
            mx[r] = m * (self.scale_log2 * LN_2)
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
