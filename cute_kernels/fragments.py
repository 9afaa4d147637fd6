"""Register-fragment views of sm90 wgmma accumulators.

A wgmma accumulator fragment for one thread has shape ((2, 2, N/8), MMA_M, MMA_N):
mode 0 is (column pair, row half, column octet). Softmax wants (rows, cols) and the
second GEMM wants the P fragment in the A-operand register layout. Both are pure
layout changes (no data movement), built here once.
"""
import cutlass
import cutlass.cute as cute
from cutlass import const_expr


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
