"""Emit CuTeDSL device functions from the IR, for cute_kernels.

Each graph becomes one plain Python function that the kernel calls per accumulator
element while it is being traced by CuTeDSL, so the mod is inlined into the kernel:

    fn(score, b, h, q_idx, kv_idx, bufs, scalars, kv_base=None, kv_off=0) -> Float32
    fn(b, h, q_idx, kv_idx, bufs, scalars, kv_base=None, kv_off=0) -> Boolean

`bufs` are the captured tensors as `cute.Tensor` kernel arguments (sizes and strides are
read from them at run time), `scalars` the captured scalars as Float32 / Int32 kernel
arguments: new values never recompile. The function has no Python control flow on
runtime values (selects only), so it works inside any `@cute.jit` region.

Bool captured tensors travel as uint8 (`runtime_buffers` does the view).

Integer comparisons and int-to-float casts that are affine in kv_idx get a second,
split form (mod_codegen.affine): a kernel that passes `kv_base` and a compile-time
`kv_off` (kv_idx == kv_base + kv_off) gets one compare against an immediate per element
and one conversion per row; without them the function computes the plain form.

Float division is emitted as a multiply by `rcp.approx` (<= 2 ulp from IEEE division):
IEEE `div.rn.f32` is a long instruction sequence, and it took tanh softcap with a
captured cap (+ causal, hdim 128, H200) from 224 to 450 TFLOP/s (cute_kernels/NOTES.md).
"""
from __future__ import annotations

import math
from typing import Any

from .affine import KvSplit, kv_splits
from .emit_base import TextEmitter
from .ir import DType, Graph, Node, Op

INPUTS = {
    "score_mod": ("score", "b", "h", "q_idx", "kv_idx"),
    "mask_mod": ("b", "h", "q_idx", "kv_idx"),
}
_TYPES = {DType.F32: "Float32", DType.I32: "Int32", DType.BOOL: "Boolean"}
_COMPARE_SYMBOLS = {Op.LT: "<", Op.LE: "<=", Op.GT: ">", Op.GE: ">=", Op.EQ: "==", Op.NE: "!="}

PRELUDE = '''\
import cutlass
import cutlass.cute as cute
from cutlass import Boolean, Float32, Int32


def _where(c, a, b, T):
    if isinstance(c, bool):
        return T(a) if c else T(b)
    return T(cutlass.select_(c, T(a), T(b)))


def _floordiv(a, b):
    # Python semantics (toward -inf) whichever rounding `//` has for Int32
    q = a // b
    r = a - q * b
    return _where((r != 0) & ((r < 0) != (b < 0)), q - 1, q, Int32)


def _mod(a, b):
    return a - _floordiv(a, b) * b


def _not(x):
    return _where(x, False, True, Boolean)


def _load(t, offset, T):
    flat = cute.make_tensor(t.iterator + offset, cute.make_layout(1))
    return T(flat[0])
'''


class CuteEmitter(TextEmitter):
    formats = {
        Op.NEG: "-({0})", Op.ABS: "cute.math.abs({0})", Op.EXP: "cute.math.exp({0}, fastmath=True)",
        Op.EXP2: "cute.math.exp2({0}, fastmath=True)", Op.LOG: "cute.math.log({0}, fastmath=True)",
        Op.LOG2: "cute.math.log2({0}, fastmath=True)", Op.SQRT: "cute.math.sqrt({0})",
        Op.RSQRT: "cute.math.rsqrt({0})", Op.TANH: "cute.math.tanh({0}, fastmath=True)",
        Op.SIGMOID: "Float32(1.0) / (Float32(1.0) + cute.math.exp(-({0}), fastmath=True))",
        Op.SIN: "cute.math.sin({0})", Op.COS: "cute.math.cos({0})", Op.ERF: "cute.math.erf({0})",
        Op.FLOOR: "cute.math.floor({0})",
        Op.ADD: "{0} + {1}", Op.SUB: "{0} - {1}", Op.MUL: "{0} * {1}", Op.DIV: "({0}) * cute.arch.rcp_approx({1})",
        Op.FLOORDIV: "_floordiv({0}, {1})", Op.MOD: "_mod({0}, {1})",
        Op.LT: "{0} < {1}", Op.LE: "{0} <= {1}", Op.GT: "{0} > {1}", Op.GE: "{0} >= {1}",
        Op.EQ: "{0} == {1}", Op.NE: "{0} != {1}",
        Op.AND: "({0}) & ({1})", Op.OR: "({0}) | ({1})", Op.XOR: "({0}) ^ ({1})",
    }

    def __init__(self, graph: Graph):
        if graph.kind not in INPUTS:
            raise ValueError(f"emit_cute has no {graph.kind} functions")
        self.graph = graph
        self.splits = kv_splits(graph)

    def expression(self, graph: Graph, i: int, names: list[str]) -> str:
        plain = super().expression(graph, i, names)
        split = self.splits.get(i)
        if split is None:
            return plain
        return f"{self.split_expression(split, names)} if kv_base is not None else {plain}"

    @staticmethod
    def split_expression(split: KvSplit, names: list[str]) -> str:
        """`row cmp imm` or `float(row) + float(imm)` (mod_codegen.affine.KvSplit)."""
        form = split.form
        parts = [(names[node], coef) for node, coef in form.terms] + [("kv_base", form.kv)]
        parts.sort(key=lambda p: p[1] < 0)  # positive terms first: no leading negation
        row = ""
        for name, coef in parts:
            term = name if abs(coef) == 1 else f"{name} * {abs(coef)}"
            if not row:
                row = term if coef > 0 else f"-({term})"
            else:
                row += (" + " if coef > 0 else " - ") + term
        if split.kind == "cast":
            return f"Float32({row}) + Float32(float({_offset_expr(form.kv, form.const)}))"
        return f"({row}) {_COMPARE_SYMBOLS[split.op]} ({_offset_expr(-form.kv, -form.const)})"

    def leaf(self, node: Node) -> str:
        if node.op is Op.INPUT:
            return node.attr
        if node.op is Op.CONST:
            v = node.attr
            if isinstance(v, float) and not math.isfinite(v):
                v = f"float('{v}')"
            elif isinstance(v, bool):
                v = repr(v)
            return f"{_TYPES[node.dtype]}({v})"
        if node.op is Op.SCALAR:
            return f"{_TYPES[self.graph.scalars[node.attr]]}(scalars[{node.attr}])"
        buf, dim = node.attr
        what = "shape" if node.op is Op.BUF_SIZE else "stride"
        return f"Int32(bufs[{buf}].{what}[{dim}])"

    def load(self, node: Node, offset: str) -> str:
        if node.dtype is DType.BOOL:
            return f"_load(bufs[{node.attr}], {offset}, Int32) != 0"
        return f"_load(bufs[{node.attr}], {offset}, {_TYPES[node.dtype]})"

    def cast(self, node: Node, src: Node, x: str) -> str:
        if node.dtype is DType.BOOL:
            return f"({x}) != 0"
        if src.dtype is DType.BOOL:
            return f"_where({x}, 1, 0, {_TYPES[node.dtype]})"
        return f"{_TYPES[node.dtype]}({x})"

    def op_format(self, node: Node, operands: list[Node]) -> str:
        if node.op is Op.NOT:
            return "_not({0})" if node.dtype is DType.BOOL else "~({0})"
        if node.op in (Op.MIN, Op.MAX):
            cmp = "<" if node.op is Op.MIN else ">"
            return "_where({0} " + cmp + " {1}, {0}, {1}, " + _TYPES[node.dtype] + ")"
        if node.op is Op.WHERE:
            return "_where({0}, {1}, {2}, " + _TYPES[node.dtype] + ")"
        return super().op_format(node, operands)

    def function(self, name: str) -> str:
        extra = ("bufs", "scalars", "kv_base=None", "kv_off=0")
        params = ", ".join(INPUTS[self.graph.kind] + extra)
        lines, outs = self.body(self.graph)
        out_t = _TYPES[self.graph.nodes[self.graph.output].dtype]
        want = "Float32" if self.graph.kind == "score_mod" else "Boolean"
        ret = outs[0]
        if out_t != want:
            ret = f"({ret}) != 0" if want == "Boolean" else f"Float32({ret})"
        body = "\n".join(self.indent + ln for ln in lines + [f"return {ret}"])
        return f"def {name}({params}):\n{body}\n"


def _offset_expr(coef: int, const: int) -> str:
    """Source of `coef * kv_off + const`: a Python int when the kernel traces it."""
    text = "kv_off" if coef == 1 else "-kv_off" if coef == -1 else f"{coef} * kv_off"
    return text + (f" + {const}" if const > 0 else f" - {-const}" if const < 0 else "")


_FUNCTIONS: dict[str, Any] = {}


def cute_function(graph: Graph):
    """(python function, source) for graph, generated once per graph key."""
    key = graph.key()
    if key not in _FUNCTIONS:
        name = f"{graph.kind}_{key}"
        source = PRELUDE + "\n\n" + CuteEmitter(graph).function(name)
        namespace: dict[str, Any] = {}
        exec(compile(source, f"<flex_fa4 cute {name}>", "exec"), namespace)
        _FUNCTIONS[key] = (namespace[name], source)
    return _FUNCTIONS[key]


def runtime_buffers(traced) -> list:
    """The captured tensors as the kernel takes them (bool viewed as uint8)."""
    import torch

    return [t.view(torch.uint8) if t.dtype == torch.bool else t for t in traced.buffers]


def runtime_scalars(traced) -> list:
    return [float(v) if dt is DType.F32 else int(v) for v, dt in zip(traced.scalars, traced.graph.scalars)]
