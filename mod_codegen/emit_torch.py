"""Evaluate an IR graph with torch ops on broadcastable tensors.

Used by the reference backend and by create_block_mask. It is differentiable
(autograd flows into captured floating-point buffers through the loads), runs
the "f32" type in any float dtype (float64 for test references) and uses int64
for index math so references never overflow.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .ir import DType, Graph, Op

_UNARY = {
    Op.EXP: torch.exp, Op.EXP2: torch.exp2, Op.LOG: torch.log, Op.LOG2: torch.log2, Op.SQRT: torch.sqrt,
    Op.RSQRT: torch.rsqrt, Op.TANH: torch.tanh, Op.SIGMOID: torch.sigmoid, Op.SIN: torch.sin, Op.COS: torch.cos,
    Op.ERF: torch.erf, Op.FLOOR: torch.floor, Op.ABS: torch.abs, Op.NEG: torch.neg,
}
_BINARY = {
    Op.ADD: torch.add, Op.SUB: torch.sub, Op.MUL: torch.mul, Op.DIV: torch.div,
    Op.FLOORDIV: lambda a, b: torch.div(a, b, rounding_mode="floor"), Op.MOD: torch.remainder,
    Op.MIN: torch.minimum, Op.MAX: torch.maximum, Op.LT: torch.lt, Op.LE: torch.le, Op.GT: torch.gt,
    Op.GE: torch.ge, Op.EQ: torch.eq, Op.NE: torch.ne,
    Op.AND: torch.bitwise_and, Op.OR: torch.bitwise_or, Op.XOR: torch.bitwise_xor,
}


def _flat_view(buf: torch.Tensor) -> torch.Tensor:
    """A 1-D view over every element `buf` addresses, so a flat offset
    (sum of index * stride) selects the element; differentiable."""
    if buf.numel() == 0:
        raise ValueError("a captured tensor is empty")
    span = 1 + sum((s - 1) * st for s, st in zip(buf.shape, buf.stride()))
    return torch.as_strided(buf, (span,), (1,), buf.storage_offset())


def evaluate(
    graph: Graph,
    inputs: dict[str, torch.Tensor],
    buffers: Sequence[torch.Tensor],
    scalars: Sequence[Any],
    float_dtype: torch.dtype = torch.float32,
    int_dtype: torch.dtype = torch.int64,
) -> list[torch.Tensor]:
    """Values of `graph.outputs`. `inputs` maps input names (score, b, h, q_idx,
    kv_idx, grad) to tensors that broadcast against each other. `int_dtype`
    int32 halves the memory of mask evaluation; int64 (default) never overflows."""
    device = next(iter(inputs.values())).device if inputs else torch.device("cpu")
    torch_dtype = {DType.F32: float_dtype, DType.I32: int_dtype, DType.BOOL: torch.bool}
    flats: dict[int, torch.Tensor] = {}
    vals: list[torch.Tensor] = []
    for node in graph.nodes:
        op, a = node.op, node.args
        dt = torch_dtype[node.dtype]
        if op is Op.INPUT:
            if node.attr not in inputs:
                raise KeyError(f"graph needs input '{node.attr}'")
            v = inputs[node.attr].to(dt)
        elif op is Op.CONST:
            v = torch.tensor(node.attr, dtype=dt, device=device)
        elif op is Op.SCALAR:
            v = torch.tensor(scalars[node.attr], dtype=dt, device=device)
        elif op is Op.BUF_SIZE:
            buf, dim = node.attr
            v = torch.tensor(buffers[buf].shape[dim], dtype=dt, device=device)
        elif op is Op.BUF_STRIDE:
            buf, dim = node.attr
            v = torch.tensor(buffers[buf].stride(dim), dtype=dt, device=device)
        elif op is Op.LOAD:
            if node.attr not in flats:
                flats[node.attr] = _flat_view(buffers[node.attr])
            v = flats[node.attr][vals[a[0]].to(device).long()].to(dt)
        elif op is Op.CAST:
            x = vals[a[0]]
            if node.dtype is DType.BOOL:
                v = x != 0
            elif node.dtype is DType.I32 and x.is_floating_point():
                v = torch.trunc(x).to(dt)
            else:
                v = x.to(dt)
        elif op is Op.NOT:
            v = torch.logical_not(vals[a[0]]) if node.dtype is DType.BOOL else torch.bitwise_not(vals[a[0]])
        elif op in _UNARY:
            v = _UNARY[op](vals[a[0]])
        elif op in _BINARY:
            v = _BINARY[op](vals[a[0]], vals[a[1]])
        elif op is Op.WHERE:
            v = torch.where(vals[a[0]], vals[a[1]], vals[a[2]])
        else:  # pragma: no cover - verify() rejects unknown ops
            raise NotImplementedError(op)
        vals.append(v)
    return [vals[o] for o in graph.outputs]


def index_grids(
    b: torch.Tensor | int, h: torch.Tensor | int, q_idx: torch.Tensor, kv_idx: torch.Tensor, device=None,
    dtype: torch.dtype = torch.int64,
) -> dict[str, torch.Tensor]:
    """Broadcastable (b, h, q, kv) index tensors shaped [B,1,1,1], [1,H,1,1],
    [1,1,Q,1], [1,1,1,KV] from 1-D index vectors (or single indices): the inputs
    `evaluate` takes for a mod over a block of the score matrix."""
    def as_t(x):
        return torch.as_tensor(x, dtype=dtype, device=device).reshape(-1)

    return {
        "b": as_t(b).view(-1, 1, 1, 1), "h": as_t(h).view(1, -1, 1, 1),
        "q_idx": as_t(q_idx).view(1, 1, -1, 1), "kv_idx": as_t(kv_idx).view(1, 1, 1, -1),
    }


LN2 = math.log(2.0)
