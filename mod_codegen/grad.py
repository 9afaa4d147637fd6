"""Reverse-mode differentiation of a score_mod graph, as IR.

`score_mod_grad(graph)` returns a graph with one extra input, `grad` (dL/d of the
mod's output at this score), whose outputs are

    d_score, offset_0, d_buf_0, offset_1, d_buf_1, ...

one (offset, value) pair per load from a captured floating-point tensor: the
backward kernels scatter-add `d_buf_i` into that buffer's gradient at the flat
element offset `offset_i`. Every backend's backward uses this one derivation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .ir import DType, Graph, GraphBuilder, Op, prune, verify

_LN2 = math.log(2.0)


@dataclass(frozen=True)
class ScoreModGrad:
    graph: Graph  # outputs: d_score, then (offset, value) per buffer-gradient contribution
    targets: tuple[int, ...]  # buffer index of each (offset, value) pair

    @property
    def has_buffer_grads(self) -> bool:
        return bool(self.targets)

    def key(self) -> str:
        return self.graph.key()


def score_mod_grad(graph: Graph) -> ScoreModGrad:
    if graph.kind != "score_mod":
        raise ValueError(f"score_mod_grad needs a score_mod graph, got {graph.kind}")
    b = GraphBuilder("score_mod_grad")
    b.buffers = list(graph.buffers)
    b.scalars = list(graph.scalars)
    ids = [b.add(n.op, n.dtype, n.args, n.attr) for n in graph.nodes]  # forward recompute, same ids
    assert ids == list(range(len(ids))), "forward graph must be canonical (pruned, hash-consed)"
    f32 = DType.F32
    adj: dict[int, int] = {graph.output: b.add(Op.INPUT, f32, (), "grad")}

    def acc(node: int, value: int) -> None:
        if b.nodes[node].dtype is not f32:
            return  # integers and booleans carry no gradient
        adj[node] = b.add(Op.ADD, f32, (adj[node], value)) if node in adj else value

    def c(v: float) -> int:
        return b.const(v, f32)

    def mul(x: int, y: int) -> int:
        return b.add(Op.MUL, f32, (x, y))

    zero = c(0.0)
    contributions: list[tuple[int, int, int]] = []  # (buffer, offset node, value node)
    for i in range(len(graph.nodes) - 1, -1, -1):
        if i not in adj:
            continue
        g = adj[i]
        n = graph.nodes[i]
        a = n.args
        op = n.op
        if op is Op.LOAD:
            contributions.append((n.attr, a[0], g))
        elif op is Op.ADD:
            acc(a[0], g)
            acc(a[1], g)
        elif op is Op.SUB:
            acc(a[0], g)
            acc(a[1], b.add(Op.NEG, f32, (g,)))
        elif op is Op.MUL:
            acc(a[0], mul(g, a[1]))
            acc(a[1], mul(g, a[0]))
        elif op is Op.DIV:
            gx = b.add(Op.DIV, f32, (g, a[1]))
            acc(a[0], gx)
            acc(a[1], b.add(Op.NEG, f32, (mul(gx, i),)))  # -g * x / y^2 = -(g / y) * out
        elif op is Op.NEG:
            acc(a[0], b.add(Op.NEG, f32, (g,)))
        elif op is Op.ABS:
            x = a[0]
            pos = b.add(Op.GT, DType.BOOL, (x, zero))
            neg = b.add(Op.LT, DType.BOOL, (x, zero))
            acc(x, b.add(Op.WHERE, f32, (pos, g, b.add(Op.WHERE, f32, (neg, b.add(Op.NEG, f32, (g,)), zero)))))
        elif op is Op.EXP:
            acc(a[0], mul(g, i))
        elif op is Op.EXP2:
            acc(a[0], mul(g, mul(i, c(_LN2))))
        elif op is Op.LOG:
            acc(a[0], b.add(Op.DIV, f32, (g, a[0])))
        elif op is Op.LOG2:
            acc(a[0], b.add(Op.DIV, f32, (g, mul(a[0], c(_LN2)))))
        elif op is Op.SQRT:
            acc(a[0], b.add(Op.DIV, f32, (mul(g, c(0.5)), i)))
        elif op is Op.RSQRT:
            acc(a[0], mul(g, b.add(Op.DIV, f32, (mul(i, c(-0.5)), a[0]))))
        elif op is Op.TANH:
            acc(a[0], mul(g, b.add(Op.SUB, f32, (c(1.0), mul(i, i)))))
        elif op is Op.SIGMOID:
            acc(a[0], mul(g, mul(i, b.add(Op.SUB, f32, (c(1.0), i)))))
        elif op is Op.SIN:
            acc(a[0], mul(g, b.add(Op.COS, f32, (a[0],))))
        elif op is Op.COS:
            acc(a[0], b.add(Op.NEG, f32, (mul(g, b.add(Op.SIN, f32, (a[0],))),)))
        elif op is Op.ERF:
            x = a[0]
            e = b.add(Op.EXP, f32, (b.add(Op.NEG, f32, (mul(x, x),)),))
            acc(x, mul(g, mul(e, c(2.0 / math.sqrt(math.pi)))))
        elif op in (Op.MIN, Op.MAX):
            # ties split the gradient evenly, as torch.minimum/maximum do
            x, y = a
            first = b.add(Op.LT if op is Op.MIN else Op.GT, DType.BOOL, (x, y))
            tie = b.add(Op.EQ, DType.BOOL, (x, y))
            half = mul(g, c(0.5))
            to_x = b.add(Op.WHERE, f32, (first, g, b.add(Op.WHERE, f32, (tie, half, zero))))
            acc(x, to_x)
            acc(y, b.add(Op.SUB, f32, (g, to_x)))
        elif op is Op.WHERE:
            cond, x, y = a
            acc(x, b.add(Op.WHERE, f32, (cond, g, zero)))
            acc(y, b.add(Op.WHERE, f32, (cond, zero, g)))
        elif op in (Op.FLOOR, Op.INPUT, Op.CONST, Op.SCALAR, Op.CAST):
            pass  # piecewise constant, a leaf, or a cast from a non-differentiable type
        else:  # pragma: no cover - every float-valued op is listed above
            raise NotImplementedError(f"no derivative for {op}")
    score = next((j for j, n in enumerate(graph.nodes) if n.op is Op.INPUT and n.attr == "score"), None)
    d_score = adj.get(score, zero) if score is not None else zero
    outputs = [d_score]
    for _, offset, value in contributions:
        outputs += [offset, value]
    result = prune(_finish(b, outputs))
    verify(result)
    return ScoreModGrad(result, tuple(buf for buf, _, _ in contributions))


def _finish(b: GraphBuilder, outputs: list[int]) -> Graph:
    return Graph(tuple(b.nodes), tuple(outputs), tuple(b.buffers), tuple(b.scalars), b.kind)
