"""Emit `@triton.jit` functions from the IR, for fallback_triton's kernels.

Each graph becomes one function over 2-D tiles:

    fn(score, b, h, q_idx, kv_idx, bufs, sizes, strides, scalars)   # score_mod
    fn(b, h, q_idx, kv_idx, bufs, sizes, strides, scalars)          # mask_mod
    fn(score, grad, b, h, q_idx, kv_idx, bufs, sizes, strides, scalars)  # score_mod_grad

`bufs` is a tuple of the captured tensors (pointers inside the kernel), `sizes`
and `strides` flat tuples of their sizes and strides (see `mod_arguments`), and
`scalars` the captured runtime scalars. A score (and d_score) output is always a
full tile like `score`, even when the mod ignores the score. Kernels take the function as a
`tl.constexpr` argument. The source is written to a file in the cache directory
because Triton reads a function's source with `inspect`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sys
import tempfile
from typing import Any, Sequence

import torch

from .cache_dir import cache_dir
from .emit_base import TextEmitter
from .ir import DType, Graph, Node, Op, depends_on

INPUTS = {
    "score_mod": ("score", "b", "h", "q_idx", "kv_idx"),
    "mask_mod": ("b", "h", "q_idx", "kv_idx"),
    "score_mod_grad": ("score", "grad", "b", "h", "q_idx", "kv_idx"),
}
_TL_TYPES = {DType.F32: "tl.float32", DType.I32: "tl.int32"}

_PRELUDE = '''\
import triton
import triton.language as tl


@triton.jit
def _floordiv(a, b):
    # Python floor division whatever the rounding of `//` (C truncation on the GPU)
    q = a // b
    r = a - q * b
    return tl.where((r != 0) & ((r < 0) != (b < 0)), q - 1, q)


@triton.jit
def _mod(a, b):
    return a - _floordiv(a, b) * b


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)
'''


class TritonEmitter(TextEmitter):
    formats = {
        Op.NEG: "-{0}", Op.ABS: "tl.abs({0})", Op.EXP: "tl.exp({0})", Op.EXP2: "tl.exp2({0})",
        Op.LOG: "tl.log({0})", Op.LOG2: "tl.log2({0})", Op.SQRT: "tl.sqrt({0})", Op.RSQRT: "tl.rsqrt({0})",
        Op.TANH: "_tanh({0})", Op.SIGMOID: "tl.sigmoid({0})", Op.SIN: "tl.sin({0})", Op.COS: "tl.cos({0})",
        Op.ERF: "tl.erf({0})", Op.FLOOR: "tl.floor({0})",
        Op.ADD: "{0} + {1}", Op.SUB: "{0} - {1}", Op.MUL: "{0} * {1}", Op.DIV: "{0} / {1}",
        Op.FLOORDIV: "_floordiv({0}, {1})", Op.MOD: "_mod({0}, {1})",
        Op.MIN: "tl.minimum({0}, {1})", Op.MAX: "tl.maximum({0}, {1})",
        Op.LT: "{0} < {1}", Op.LE: "{0} <= {1}", Op.GT: "{0} > {1}", Op.GE: "{0} >= {1}",
        Op.EQ: "{0} == {1}", Op.NE: "{0} != {1}",
        Op.AND: "{0} & {1}", Op.OR: "{0} | {1}", Op.XOR: "{0} ^ {1}",
        Op.WHERE: "tl.where({0}, {1}, {2})",
    }

    def __init__(self, graph: Graph):
        self.graph = graph
        # flat position of (buffer, dim) in the sizes/strides tuples
        self.dim_slot = {}
        for buf, spec in enumerate(graph.buffers):
            for d in range(spec.ndim):
                self.dim_slot[(buf, d)] = len(self.dim_slot)

    def leaf(self, node: Node) -> str:
        if node.op is Op.INPUT:
            return node.attr
        if node.op is Op.CONST:
            v = node.attr
            if isinstance(v, float) and not math.isfinite(v):
                return f"float('{v}')"
            return repr(v)
        if node.op is Op.SCALAR:
            return f"scalars[{node.attr}]"
        slot = self.dim_slot[tuple(node.attr)]
        return f"sizes[{slot}]" if node.op is Op.BUF_SIZE else f"strides[{slot}]"

    def load(self, node: Node, offset: str) -> str:
        raw = f"tl.load(bufs[{node.attr}] + {offset})"
        if node.dtype is DType.BOOL:
            return f"{raw} != 0"
        return f"{raw}.to({_TL_TYPES[node.dtype]})"

    def cast(self, node: Node, src: Node, x: str) -> str:
        if node.dtype is DType.BOOL:
            return f"{x} != 0"
        return f"{x}.to({_TL_TYPES[node.dtype]})"

    def op_format(self, node: Node, operands: list[Node]) -> str:
        if node.op is Op.NOT:
            return "{0} == 0" if node.dtype is DType.BOOL else "~{0}"
        return super().op_format(node, operands)

    def function(self, name: str) -> str:
        params = ", ".join(INPUTS[self.graph.kind] + ("bufs", "sizes", "strides", "scalars"))
        lines, outs = self.body(self.graph)
        tile_inputs = {"score_mod": ("score",), "score_mod_grad": ("score", "grad")}.get(self.graph.kind, ())
        if tile_inputs and not any(depends_on(self.graph, self.graph.output, x) for x in tile_inputs):
            # a score that ignores `score` (a constant, slopes[h], q_idx.float()) must still be a
            # full tile for the kernel's row reductions
            lines.append(f"{outs[0]} = {outs[0]} + tl.zeros_like(score)")
        ret = outs[0] if len(outs) == 1 else "(" + ", ".join(outs) + ",)"
        body = "\n".join(self.indent + ln for ln in lines + [f"return {ret}"])
        return f"@triton.jit\ndef {name}({params}):\n{body}\n"


_FUNCTIONS: dict[str, Any] = {}


def triton_function(graph: Graph):
    """The `@triton.jit` function for `graph`, generated once per graph key."""
    key = graph.key()
    if key in _FUNCTIONS:
        return _FUNCTIONS[key]
    name = f"{graph.kind}_{key}"
    source = _PRELUDE + "\n\n" + TritonEmitter(graph).function(name)
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    folder = os.path.join(cache_dir(), "triton_mods")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}_{digest}.py")
    if not os.path.exists(path):  # write-then-rename: safe when processes race
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".py")
        with os.fdopen(fd, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(f"flex_fa4_triton_mods.{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    _FUNCTIONS[key] = getattr(module, name)
    return _FUNCTIONS[key]


def mod_arguments(graph: Graph, buffers: Sequence[torch.Tensor], scalars: Sequence[Any]) -> tuple:
    """The runtime arguments (bufs, sizes, strides, scalars) for a generated function."""
    if len(buffers) != len(graph.buffers):
        raise ValueError(f"graph reads {len(graph.buffers)} captured tensors, got {len(buffers)}")
    sizes = tuple(int(s) for t in buffers for s in t.shape)
    strides = tuple(int(s) for t in buffers for s in t.stride())
    scal = tuple(float(v) if dt is DType.F32 else int(v) for v, dt in zip(scalars, graph.scalars))
    # Triton wants non-empty tuples; a dummy entry costs nothing
    return (tuple(buffers) or (None,)), (sizes or (0,)), (strides or (0,)), (scal or (0,))
