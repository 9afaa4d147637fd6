"""Register-fragment views of sm90 wgmma accumulators.

A wgmma accumulator fragment for one thread has shape ((2, 2, N/8), MMA_M, MMA_N):
mode 0 is (column pair, row half, column octet). Softmax wants (rows, cols) and the
second GEMM wants the P fragment in the A-operand register layout. Both are pure
layout changes (no data movement), built here once; store_16bit packs P into that
A-operand fragment.
"""
import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, const_expr
from cutlass._mlir.dialects import llvm
from cutlass.cutlass_dsl import T, dsl_user_op


def acc_layout_to_mn(acc_layout: cute.Layout) -> cute.Layout:
    """((2, 2, V), M, N) -> ((2, M), (2, V, N)): rows first, then columns."""
    flat = cute.make_layout(acc_layout.shape)
    shape = (
        (flat.shape[0][1], flat.shape[1]),
        (flat.shape[0][0], *flat.shape[0][2:], flat.shape[2]),
    )
    stride = (
        (flat.stride[0][1], flat.stride[1]),
        (flat.stride[0][0], *flat.stride[0][2:], flat.stride[2]),
    )
    return cute.composition(acc_layout, cute.make_layout(shape, stride=stride))


def as_mn(acc: cute.Tensor) -> cute.Tensor:
    return cute.make_tensor(acc.iterator, acc_layout_to_mn(acc.layout))


def acc_layout_to_operand_a(acc_layout: cute.Layout) -> cute.Layout:
    """((2, 2, V), M, N) -> ((2, 2, 2), M, (V/2, N)).

    Note [P stays in registers]: for 16-bit inputs the wgmma A-operand fragment of a
    k=16 slice holds the same (row, col) pairs that the accumulator holds for two
    consecutive column octets, so reading the fp32 accumulator through this layout and
    converting element by element gives the RS operand of P @ V without any shuffle.
    """
    div = 2 if const_expr(acc_layout.shape[0][2] % 2 == 0) else 1
    l = cute.logical_divide(acc_layout, ((None, None, div), None, None))
    return cute.make_layout(
        (
            (l.shape[0][0], l.shape[0][1], l.shape[0][2][0]),
            l.shape[1],
            (l.shape[0][2][1], l.shape[2]),
        ),
        stride=(
            (l.stride[0][0], l.stride[0][1], l.stride[0][2][0]),
            l.stride[1],
            (l.stride[0][2][1], l.stride[2]),
        ),
    )


def as_operand_a(acc: cute.Tensor) -> cute.Tensor:
    return cute.make_tensor(acc.iterator, acc_layout_to_operand_a(acc.layout))


def transpose_smem_view(t: cute.Tensor) -> cute.Tensor:
    """Swap the first two modes of a (staged) smem tensor: V (n, dv, s) -> V^T (dv, n, s)."""
    shape = (t.shape[1], t.shape[0], *t.shape[2:])
    order = (1, 0, *range(2, cute.rank(t)))
    return cute.composition(t, cute.make_ordered_layout(shape, order=order))


@dsl_user_op
def _pack_16bit_pair(lo: Float32, hi: Float32, to_bf16: bool, *, loc=None, ip=None) -> Int32:
    """Two fp32 values -> one register holding (lo, hi) as bf16 / fp16 (round to nearest)."""
    kind = "bf16x2" if to_bf16 else "f16x2"
    return Int32(llvm.inline_asm(
        T.i32(), [Float32(hi).ir_value(loc=loc, ip=ip), Float32(lo).ir_value(loc=loc, ip=ip)],
        f"cvt.rn.{kind}.f32 $0, $1, $2;", "=r,f,f",
        has_side_effects=False, is_align_stack=False, asm_dialect=llvm.AsmDialect.AD_ATT))


@cute.jit
def store_16bit(src: cute.Tensor, dst: cute.Tensor):
    """dst (bf16 / fp16) = src (fp32), two elements per cvt, pairs in logical order.

    Note [P conversion]: `dst.store(src.load().to(dtype))` lowers to the same cvt
    instructions, but LLVM sinks them to the loop header, where both the in-loop P V and
    the P V after the loop read them, and ptxas then materializes the packed P twice per
    iteration, in the two wgmmas' operand registers (64 instead of 32 F2FP per iteration
    at tile_n 128, the whole difference in F2FP count to FA4 in Nsight Compute). An
    inline-asm cvt written into dst's registers stays where it is, as FA4's does.
    Needs dst's logical pairs (2i, 2i + 1) to share a 32-bit register (the wgmma A
    fragment layout, and any compact layout whose first mode has even size)."""
    dst_pairs = cute.recast_tensor(dst, Int32)
    to_bf16 = const_expr(dst.element_type is cutlass.BFloat16)
    for i in cutlass.range_constexpr(cute.size(dst_pairs)):
        dst_pairs[i] = _pack_16bit_pair(src[2 * i], src[2 * i + 1], to_bf16)
