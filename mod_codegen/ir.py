"""The typed IR that every emitter reads.

A mod is a small DAG over five inputs (score, b, h, q_idx, kv_idx), constants,
captured runtime scalars and loads from captured tensors. Nodes are frozen and
hash-consed by `GraphBuilder`, so equal sub-expressions are stored once and two
traces of the same mod give equal graphs: the graph (plus captured buffers'
dtypes and ranks) *is* the compile-cache key. Values of captured tensors and
scalars are never part of it.

Index arithmetic lives here, not in emitters: `passes.build_load` turns
`buf[i, j]` into `LOAD(buf, flat_offset)` whose offset is already clamped into
range and multiplied by runtime strides, so an emitter only prints `ptr[offset]`.
"""
from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any


class DType(str, enum.Enum):
    """Value types inside a mod. `F32` means "the float compute type": kernels use
    fp32, the reference evaluator may run it in float64."""

    BOOL = "bool"
    I32 = "i32"
    F32 = "f32"


class Op(str, enum.Enum):
    # leaves
    INPUT = "input"  # attr: "score" | "b" | "h" | "q_idx" | "kv_idx" | "grad"
    CONST = "const"  # attr: python value
    SCALAR = "scalar"  # attr: index into the captured runtime scalars
    BUF_SIZE = "buf_size"  # attr: (buffer index, dim)
    BUF_STRIDE = "buf_stride"  # attr: (buffer index, dim)
    # memory
    LOAD = "load"  # attr: buffer index; args: (flat element offset,), clamped into range
    # unary
    NEG = "neg"
    ABS = "abs"
    EXP = "exp"
    EXP2 = "exp2"
    LOG = "log"
    LOG2 = "log2"
    SQRT = "sqrt"
    RSQRT = "rsqrt"
    TANH = "tanh"
    SIGMOID = "sigmoid"
    SIN = "sin"
    COS = "cos"
    ERF = "erf"
    FLOOR = "floor"
    NOT = "not"  # logical not (bool) or bitwise not (i32)
    CAST = "cast"  # attr: target DType
    # binary
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"  # true division, floats only
    FLOORDIV = "floordiv"  # Python semantics (rounds toward -inf)
    MOD = "mod"  # Python semantics (sign of the divisor)
    MIN = "min"
    MAX = "max"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"
    EQ = "eq"
    NE = "ne"
    AND = "and"
    OR = "or"
    XOR = "xor"
    # ternary
    WHERE = "where"


LEAF_OPS = frozenset({Op.INPUT, Op.CONST, Op.SCALAR, Op.BUF_SIZE, Op.BUF_STRIDE})
UNARY_FLOAT_OPS = frozenset(
    {Op.EXP, Op.EXP2, Op.LOG, Op.LOG2, Op.SQRT, Op.RSQRT, Op.TANH, Op.SIGMOID, Op.SIN, Op.COS, Op.ERF, Op.FLOOR}
)
COMPARE_OPS = frozenset({Op.LT, Op.LE, Op.GT, Op.GE, Op.EQ, Op.NE})
LOGIC_OPS = frozenset({Op.AND, Op.OR, Op.XOR})
ARITH_OPS = frozenset({Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.FLOORDIV, Op.MOD, Op.MIN, Op.MAX})

INDEX_INPUTS = ("b", "h", "q_idx", "kv_idx")


@dataclass(frozen=True)
class Node:
    op: Op
    dtype: DType
    args: tuple[int, ...] = ()
    attr: Any = None

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        a = ", ".join(f"%{i}" for i in self.args)
        extra = "" if self.attr is None else f" [{self.attr}]"
        return f"{self.op.value}:{self.dtype.value}({a}){extra}"


@dataclass(frozen=True)
class BufferSpec:
    """What the compiled code needs to know about a captured tensor: only its
    element type and rank (values, sizes and strides are runtime arguments)."""

    dtype: str  # torch dtype name, e.g. "int32", "float32"
    ndim: int

    @property
    def value_dtype(self) -> DType:
        if self.dtype == "bool":
            return DType.BOOL
        if self.dtype.startswith(("float", "bfloat")):
            return DType.F32
        return DType.I32


@dataclass(frozen=True)
class Graph:
    """A finished mod: nodes in topological order, the output node ids, and the
    captured buffers' specs and scalars' types, indexed by the LOAD/SCALAR attrs."""

    nodes: tuple[Node, ...]
    outputs: tuple[int, ...]
    buffers: tuple[BufferSpec, ...] = ()
    scalars: tuple[DType, ...] = ()
    kind: str = "score_mod"  # "score_mod" | "mask_mod" | "score_mod_grad"
    _hash: str = field(default="", compare=False, repr=False)

    @property
    def output(self) -> int:
        return self.outputs[0]

    def key(self) -> str:
        """A stable digest of the structure: the compile-cache key."""
        if not self._hash:
            h = hashlib.sha256(repr((self.kind, self.nodes, self.outputs, self.buffers, self.scalars)).encode())
            object.__setattr__(self, "_hash", h.hexdigest()[:24])
        return self._hash

    def __hash__(self) -> int:
        return hash(self.key())

    def uses_input(self, name: str) -> bool:
        return any(n.op is Op.INPUT and n.attr == name for n in self.nodes)

    def __str__(self) -> str:
        lines = [f"{self.kind} graph {self.key()}"]
        for i, b in enumerate(self.buffers):
            lines.append(f"  buf{i}: {b.dtype}[{b.ndim}d]")
        for i, s in enumerate(self.scalars):
            lines.append(f"  scalar{i}: {s.value}")
        for i, n in enumerate(self.nodes):
            lines.append(f"  %{i} = {n}")
        lines.append("  return " + ", ".join(f"%{o}" for o in self.outputs))
        return "\n".join(lines)

    __repr__ = __str__


class GraphBuilder:
    """Appends nodes with hash-consing (common sub-expressions are shared) and a
    little constant folding, so traces stay small and canonical."""

    def __init__(self, kind: str = "score_mod"):
        self.kind = kind
        self.nodes: list[Node] = []
        self._ids: dict[Node, int] = {}
        self.buffers: list[BufferSpec] = []
        self.scalars: list[DType] = []

    def add(self, op: Op, dtype: DType, args: tuple[int, ...] = (), attr: Any = None) -> int:
        node = Node(op, dtype, tuple(args), attr)
        folded = self._fold(node)
        if folded is not None:
            return folded
        if node in self._ids:
            return self._ids[node]
        self.nodes.append(node)
        self._ids[node] = len(self.nodes) - 1
        return len(self.nodes) - 1

    # -- helpers used by the tracer, passes and gradient builder
    def const(self, value: Any, dtype: DType) -> int:
        if dtype is DType.F32:
            value = float(value)
        elif dtype is DType.I32:
            value = int(value)
        else:
            value = bool(value)
        return self.add(Op.CONST, dtype, (), value)

    def const_value(self, idx: int):
        n = self.nodes[idx]
        return n.attr if n.op is Op.CONST else None

    def cast(self, idx: int, dtype: DType) -> int:
        if self.nodes[idx].dtype is dtype:
            return idx
        return self.add(Op.CAST, dtype, (idx,), dtype)

    def finish(self, outputs: tuple[int, ...]) -> Graph:
        return prune(Graph(tuple(self.nodes), tuple(outputs), tuple(self.buffers), tuple(self.scalars), self.kind))

    def _fold(self, node: Node) -> int | None:
        """Algebraic identities that gradients produce a lot of (x*1, x+0, x*0)."""
        if node.op not in (Op.ADD, Op.SUB, Op.MUL, Op.DIV) or node.dtype is not DType.F32:
            return None
        a, b = node.args

        def is_(idx: int, value: float) -> bool:
            n = self.nodes[idx]
            return n.op is Op.CONST and n.attr == value

        if node.op is Op.ADD and is_(a, 0.0):
            return b
        if node.op in (Op.ADD, Op.SUB) and is_(b, 0.0):
            return a
        if node.op is Op.MUL:
            # x*0 -> 0 is not IEEE-exact for inf/nan x; gradients multiply by an
            # exact zero only where the forward value did not flow.
            if is_(a, 0.0) or is_(b, 0.0):
                return self.const(0.0, DType.F32)
            if is_(a, 1.0):
                return b
        if node.op in (Op.MUL, Op.DIV) and is_(b, 1.0):
            return a
        return None


def prune(graph: Graph) -> Graph:
    """Drop nodes the outputs do not reach and renumber (keeps the key canonical)."""
    live = set()
    stack = list(graph.outputs)
    while stack:
        i = stack.pop()
        if i in live:
            continue
        live.add(i)
        stack.extend(graph.nodes[i].args)
    order = sorted(live)
    remap = {old: new for new, old in enumerate(order)}
    nodes = tuple(
        Node(graph.nodes[i].op, graph.nodes[i].dtype, tuple(remap[a] for a in graph.nodes[i].args), graph.nodes[i].attr)
        for i in order
    )
    return Graph(nodes, tuple(remap[o] for o in graph.outputs), graph.buffers, graph.scalars, graph.kind)


def input_dependence(graph: Graph, input_name: str) -> list[bool]:
    """Per node, whether its value depends on the named input."""
    deps: list[bool] = []
    for n in graph.nodes:
        deps.append((n.op is Op.INPUT and n.attr == input_name) or any(deps[a] for a in n.args))
    return deps


def depends_on(graph: Graph, node: int, input_name: str) -> bool:
    """Whether `node`'s value depends on the named input."""
    return input_dependence(graph, input_name)[node]


def verify(graph: Graph) -> None:
    """Structural checks every pass and emitter may rely on."""
    for i, n in enumerate(graph.nodes):
        for a in n.args:
            if not 0 <= a < i:
                raise AssertionError(f"node %{i} uses %{a}, which is not defined before it")
        if n.op in LEAF_OPS and n.args:
            raise AssertionError(f"leaf node %{i} has arguments")
        if n.op is Op.LOAD:
            if not 0 <= n.attr < len(graph.buffers):
                raise AssertionError(f"node %{i} loads unknown buffer {n.attr}")
            if n.dtype is not graph.buffers[n.attr].value_dtype:
                raise AssertionError(f"node %{i} has the wrong dtype for its buffer")
        if n.op is Op.SCALAR and not 0 <= n.attr < len(graph.scalars):
            raise AssertionError(f"node %{i} reads unknown scalar {n.attr}")
        if n.op in COMPARE_OPS and n.dtype is not DType.BOOL:
            raise AssertionError(f"comparison %{i} must be bool")
        if n.op in ARITH_OPS | COMPARE_OPS | LOGIC_OPS and len({graph.nodes[a].dtype for a in n.args}) != 1:
            raise AssertionError(f"node %{i} mixes operand types; the builder must insert casts")
    for o in graph.outputs:
        if not 0 <= o < len(graph.nodes):
            raise AssertionError(f"output %{o} does not exist")
