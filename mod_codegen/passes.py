"""IR passes: the index arithmetic every emitter shares.

`build_load` is the one place that decides how a captured tensor is addressed:
each index is clamped into [0, size-1] (padded tile positions compute indices
past the sequence end; clamping makes those loads safe, and their results are
discarded by the kernel's own bounds mask), multiplied by the runtime stride and
summed into one flat element offset. Sizes and strides are runtime leaves, so a
captured tensor of another length or layout reuses the compiled code.
"""
from __future__ import annotations

from .ir import DType, GraphBuilder, Op


def build_load(builder: GraphBuilder, buf: int, indices: list[int]) -> int:
    """Append `LOAD(buf, sum_d clamp(idx_d) * stride_d)` and return its node id."""
    spec = builder.buffers[buf]
    if len(indices) != spec.ndim:
        raise ValueError(f"captured tensor of rank {spec.ndim} indexed with {len(indices)} indices")
    offset = builder.const(0, DType.I32)
    zero = builder.const(0, DType.I32)
    one = builder.const(1, DType.I32)
    for dim, idx in enumerate(indices):
        idx = builder.cast(idx, DType.I32)
        size = builder.add(Op.BUF_SIZE, DType.I32, (), (buf, dim))
        last = builder.add(Op.SUB, DType.I32, (size, one))
        clamped = builder.add(Op.MIN, DType.I32, (builder.add(Op.MAX, DType.I32, (idx, zero)), last))
        stride = builder.add(Op.BUF_STRIDE, DType.I32, (), (buf, dim))
        term = builder.add(Op.MUL, DType.I32, (clamped, stride))
        offset = term if dim == 0 else builder.add(Op.ADD, DType.I32, (offset, term))
    return builder.add(Op.LOAD, spec.value_dtype, (offset,), buf)
