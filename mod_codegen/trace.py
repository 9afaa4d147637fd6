"""Trace a user's score_mod / mask_mod once into the IR.

The mod is called with `Sym` stand-ins for score, b, h, q_idx and kv_idx. Python
operators and the torch functions mods use (through `__torch_function__`) append
nodes to a `GraphBuilder`; indexing a captured tensor with a Sym records a load.
Captured Python scalars in the mod's closure (a window size, a softcap value)
are swapped for runtime scalar leaves, so a new value reuses the compiled code.
Anything else fails loudly with the mod's name and source line.
"""
from __future__ import annotations

import inspect
import linecache
import logging
import math
import os
import sys
import types
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .ir import DType, Graph, GraphBuilder, Op, verify
from .passes import build_load

log = logging.getLogger("flex_fa4.codegen")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


class UnsupportedModError(ValueError):
    """A mod uses something the IR cannot express. The message names the
    operation, the mod and the mod's source line."""


def _user_frame() -> str:
    """file:line and source of the innermost frame outside this package and torch."""
    frame = sys._getframe(1)
    while frame is not None:
        fname = os.path.abspath(frame.f_code.co_filename)
        if not (fname.startswith(_PACKAGE_DIR) or fname.startswith(_TORCH_DIR)):
            src = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
            return f"{frame.f_code.co_filename}:{frame.f_lineno}: `{src}`"
        frame = frame.f_back
    return "<unknown location>"


class _Tracer:
    def __init__(self, kind: str, mod_name: str):
        self.builder = GraphBuilder(kind)
        self.mod_name = mod_name
        self.buffer_values: list[torch.Tensor] = []
        self._buffer_ids: dict[int, int] = {}
        self.scalar_values: list[Any] = []

    def fail(self, what: str) -> UnsupportedModError:
        return UnsupportedModError(f"{self.builder.kind} '{self.mod_name}' uses {what} at {_user_frame()}")

    def buffer(self, t: torch.Tensor) -> int:
        from .ir import BufferSpec

        key = id(t)
        if key not in self._buffer_ids:
            if t.is_complex():
                raise self.fail(f"a captured complex tensor ({t.dtype})")
            self._buffer_ids[key] = len(self.buffer_values)
            self.buffer_values.append(t)
            self.builder.buffers.append(BufferSpec(str(t.dtype).removeprefix("torch."), t.dim()))
        return self._buffer_ids[key]

    def scalar(self, value: Any) -> "Sym":
        dtype = DType.F32 if isinstance(value, float) else DType.I32
        self.builder.scalars.append(dtype)
        self.scalar_values.append(value)
        return Sym(self, self.builder.add(Op.SCALAR, dtype, (), len(self.builder.scalars) - 1))


_PROMOTE_ORDER = {DType.BOOL: 0, DType.I32: 1, DType.F32: 2}


class Sym:
    """A traced value. Behaves like a 0-d tensor inside a mod."""

    __slots__ = ("tracer", "node")

    def __init__(self, tracer: _Tracer, node: int):
        self.tracer = tracer
        self.node = node

    @property
    def dtype(self) -> torch.dtype:
        return {DType.BOOL: torch.bool, DType.I32: torch.int32, DType.F32: torch.float32}[self._dt]

    @property
    def _dt(self) -> DType:
        return self.tracer.builder.nodes[self.node].dtype

    # -- Python control flow and conversions cannot be traced
    def __bool__(self):
        raise self.tracer.fail(
            "Python control flow on a traced value (`if`, `and`/`or`/`not`, builtin min/max); "
            "use torch.where, & | ~, torch.minimum/maximum instead"
        )

    def __index__(self):
        raise self.tracer.fail("a traced value as a Python int (slicing, range, list index)")

    __int__ = __index__

    def __float__(self):
        raise self.tracer.fail("a traced value as a Python float (math.* functions); use torch.* instead")

    def __len__(self):  # torch's indexing probes len(); a plain TypeError is the cheap, expected answer
        raise TypeError("a traced mod value is a scalar and has no len()")

    def __iter__(self):
        raise TypeError("a traced mod value is a scalar and cannot be iterated")

    def __getitem__(self, item):
        raise self.tracer.fail("indexing a traced value (it is a scalar)")

    def __repr__(self):
        return f"Sym(%{self.node}: {self._dt.value})"

    # -- operators
    def __add__(self, o): return _binary(Op.ADD, self, o)
    def __radd__(self, o): return _binary(Op.ADD, o, self)
    def __sub__(self, o): return _binary(Op.SUB, self, o)
    def __rsub__(self, o): return _binary(Op.SUB, o, self)
    def __mul__(self, o): return _binary(Op.MUL, self, o)
    def __rmul__(self, o): return _binary(Op.MUL, o, self)
    def __truediv__(self, o): return _binary(Op.DIV, self, o)
    def __rtruediv__(self, o): return _binary(Op.DIV, o, self)
    def __floordiv__(self, o): return _binary(Op.FLOORDIV, self, o)
    def __rfloordiv__(self, o): return _binary(Op.FLOORDIV, o, self)
    def __mod__(self, o): return _binary(Op.MOD, self, o)
    def __rmod__(self, o): return _binary(Op.MOD, o, self)
    def __lt__(self, o): return _binary(Op.LT, self, o)
    def __le__(self, o): return _binary(Op.LE, self, o)
    def __gt__(self, o): return _binary(Op.GT, self, o)
    def __ge__(self, o): return _binary(Op.GE, self, o)
    def __eq__(self, o): return _binary(Op.EQ, self, o)  # type: ignore[override]
    def __ne__(self, o): return _binary(Op.NE, self, o)  # type: ignore[override]
    def __and__(self, o): return _binary(Op.AND, self, o)
    def __rand__(self, o): return _binary(Op.AND, o, self)
    def __or__(self, o): return _binary(Op.OR, self, o)
    def __ror__(self, o): return _binary(Op.OR, o, self)
    def __xor__(self, o): return _binary(Op.XOR, self, o)
    def __rxor__(self, o): return _binary(Op.XOR, o, self)
    def __neg__(self): return _unary(Op.NEG, self)
    def __pos__(self): return self
    def __abs__(self): return _unary(Op.ABS, self)
    def __invert__(self): return _unary(Op.NOT, self)

    def __pow__(self, o):
        return _pow(self, o)

    __hash__ = object.__hash__

    # -- tensor-like methods
    def __getattr__(self, name):
        if name in _METHODS:
            fn = _METHODS[name]
            return lambda *a, **k: fn(self, *a, **k)
        raise self.tracer.fail(f"the tensor method `.{name}()`, which the IR does not support")

    @classmethod
    def __torch_function__(cls, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        tracer = next(a.tracer for a in _flatten((args, kwargs)) if isinstance(a, Sym))
        if name == "__getitem__":
            return _index_buffer(tracer, args[0], args[1])
        name = _TORCH_ALIASES.get(name, name)
        if name not in _FUNCTIONS:
            raise tracer.fail(f"`{name}`, which the IR does not support (supported: {', '.join(sorted(_FUNCTIONS))})")
        # a Tensor dunder like Tensor.__radd__(t, sym): put the traced operand's partner first
        return _FUNCTIONS[name](*args, **kwargs)


def _flatten(x):
    if isinstance(x, (list, tuple)):
        for y in x:
            yield from _flatten(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _flatten(y)
    else:
        yield x


def _tracer_of(*xs) -> _Tracer:
    for x in xs:
        if isinstance(x, Sym):
            return x.tracer
    raise TypeError("no traced operand")


def _lift(tracer: _Tracer, x, like: DType | None = None) -> tuple[int, bool]:
    """Node id for an operand, plus whether it is a weakly typed Python constant."""
    if isinstance(x, Sym):
        return x.node, False
    if isinstance(x, bool):
        return tracer.builder.const(x, DType.BOOL), True
    if isinstance(x, int):
        return tracer.builder.const(x, DType.F32 if like is DType.F32 else DType.I32), True
    if isinstance(x, float):
        return tracer.builder.const(x, DType.F32), True
    if isinstance(x, torch.Tensor):
        if x.dim() == 0:  # a captured 0-d tensor is a one-element buffer
            return build_load(tracer.builder, tracer.buffer(x), []), False
        raise tracer.fail(f"a captured tensor of shape {tuple(x.shape)} in arithmetic; index it (e.g. t[q_idx])")
    raise tracer.fail(f"an operand of type {type(x).__name__}")


def _promote(a: DType, b: DType) -> DType:
    return a if _PROMOTE_ORDER[a] >= _PROMOTE_ORDER[b] else b


def _operands(x, y) -> tuple[_Tracer, int, int]:
    tracer = _tracer_of(x, y)
    dx = x._dt if isinstance(x, Sym) else None
    dy = y._dt if isinstance(y, Sym) else None
    nx, _ = _lift(tracer, x, dy)
    ny, _ = _lift(tracer, y, dx)
    return tracer, nx, ny


def _binary(op: Op, x, y) -> Sym:
    tracer, nx, ny = _operands(x, y)
    b = tracer.builder
    tx, ty = b.nodes[nx].dtype, b.nodes[ny].dtype
    if op in (Op.AND, Op.OR, Op.XOR):
        if DType.F32 in (tx, ty):
            raise tracer.fail(f"`{op.value}` on a floating-point value")
        dt = DType.BOOL if tx is ty is DType.BOOL else DType.I32
        return Sym(tracer, b.add(op, dt, (b.cast(nx, dt), b.cast(ny, dt))))
    if op is Op.DIV:
        return Sym(tracer, b.add(op, DType.F32, (b.cast(nx, DType.F32), b.cast(ny, DType.F32))))
    dt = _promote(tx, ty)
    if dt is DType.BOOL:  # arithmetic and ordering on bools happen on ints, as in torch
        dt = DType.BOOL if op in (Op.EQ, Op.NE) else DType.I32
    out = DType.BOOL if op in (Op.LT, Op.LE, Op.GT, Op.GE, Op.EQ, Op.NE) else dt
    return Sym(tracer, b.add(op, out, (b.cast(nx, dt), b.cast(ny, dt))))


def _unary(op: Op, x) -> Sym:
    tracer = _tracer_of(x)
    b = tracer.builder
    dt = x._dt
    if op is Op.NOT:
        if dt is DType.F32:
            raise tracer.fail("`~` on a floating-point value")
        return Sym(tracer, b.add(op, dt, (x.node,)))
    if op in (Op.NEG, Op.ABS):
        if dt is DType.BOOL:
            raise tracer.fail(f"`{op.value}` on a boolean")
        return Sym(tracer, b.add(op, dt, (x.node,)))
    return Sym(tracer, b.add(op, DType.F32, (b.cast(x.node, DType.F32),)))


def _float_fn(op: Op):
    def fn(x, *, out=None):
        if not isinstance(x, Sym):
            raise TypeError(f"{op.value} expects a traced value")
        return _unary(op, x)

    return fn


def _where(cond, x, y) -> Sym:
    tracer = _tracer_of(cond, x, y)
    b = tracer.builder
    nc, _ = _lift(tracer, cond)
    nc = b.cast(nc, DType.BOOL)
    dx = x._dt if isinstance(x, Sym) else None
    dy = y._dt if isinstance(y, Sym) else None
    nx, _ = _lift(tracer, x, dy)
    ny, _ = _lift(tracer, y, dx)
    dt = _promote(b.nodes[nx].dtype, b.nodes[ny].dtype)
    return Sym(tracer, b.add(Op.WHERE, dt, (nc, b.cast(nx, dt), b.cast(ny, dt))))


def _clamp(x, min=None, max=None):
    if min is not None:
        x = _binary(Op.MAX, x, min)
    if max is not None:
        x = _binary(Op.MIN, x, max)
    return x


def _pow(x, e):
    if isinstance(e, (int, float)) and float(e) == int(e) and 0 <= int(e) <= 4:
        result = x * 0 + 1 if int(e) == 0 else x
        for _ in range(int(e) - 1):
            result = result * x
        return result
    if e == 0.5:
        return _unary(Op.SQRT, x)
    if e == -0.5:
        return _unary(Op.RSQRT, x)
    raise _tracer_of(x).fail(f"`** {e!r}` (only constant exponents 0..4, 0.5 and -0.5 are supported)")


_TORCH_DTYPES = {
    torch.float32: DType.F32, torch.float64: DType.F32, torch.float16: DType.F32, torch.bfloat16: DType.F32,
    torch.int32: DType.I32, torch.int64: DType.I32, torch.int16: DType.I32, torch.int8: DType.I32,
    torch.uint8: DType.I32, torch.bool: DType.BOOL,
}


def _to(x, dtype=None, *args, **kwargs):
    dtype = kwargs.get("dtype", dtype)
    if isinstance(dtype, torch.device) or dtype is None:
        return x  # .to(device) is a no-op inside a kernel
    if dtype not in _TORCH_DTYPES:
        raise x.tracer.fail(f"a cast to {dtype}")
    target = _TORCH_DTYPES[dtype]
    b = x.tracer.builder
    if target is DType.BOOL:
        zero = b.const(0, x._dt) if x._dt is not DType.BOOL else None
        return x if zero is None else Sym(x.tracer, b.add(Op.NE, DType.BOOL, (x.node, zero)))
    return Sym(x.tracer, b.cast(x.node, target))


def _full_like(x, value, dtype=None, **kwargs):
    dt = _TORCH_DTYPES[dtype] if dtype is not None else x._dt
    return Sym(x.tracer, x.tracer.builder.const(value, dt))


def _new_full(x, size=(), value=None, dtype=None, **kwargs):
    if tuple(size) not in ((), (1,)):
        raise x.tracer.fail(f"a new tensor of shape {tuple(size)} (only scalars are supported)")
    return _full_like(x, value, dtype)


def _reduce(op: Op):
    def fn(x, y=None, *, out=None):
        return _binary(op, x, y)

    return fn


_FUNCTIONS: dict[str, Callable] = {
    "where": _where,
    "exp": _float_fn(Op.EXP), "exp2": _float_fn(Op.EXP2), "log": _float_fn(Op.LOG), "log2": _float_fn(Op.LOG2),
    "sqrt": _float_fn(Op.SQRT), "rsqrt": _float_fn(Op.RSQRT), "tanh": _float_fn(Op.TANH),
    "sigmoid": _float_fn(Op.SIGMOID), "sin": _float_fn(Op.SIN), "cos": _float_fn(Op.COS),
    "erf": _float_fn(Op.ERF), "floor": _float_fn(Op.FLOOR),
    "abs": lambda x: _unary(Op.ABS, x), "neg": lambda x: _unary(Op.NEG, x),
    "minimum": _reduce(Op.MIN), "maximum": _reduce(Op.MAX), "clamp": _clamp,
    "logical_and": _reduce(Op.AND), "logical_or": _reduce(Op.OR), "logical_xor": _reduce(Op.XOR),
    "logical_not": lambda x: _unary(Op.NOT, _to(x, torch.bool)),
    "bitwise_and": _reduce(Op.AND), "bitwise_or": _reduce(Op.OR), "bitwise_xor": _reduce(Op.XOR),
    "bitwise_not": lambda x: _unary(Op.NOT, x),
    "add": lambda x, y, alpha=1: _binary(Op.ADD, x, y if alpha == 1 else _binary(Op.MUL, y, alpha)),
    "sub": lambda x, y, alpha=1: _binary(Op.SUB, x, y if alpha == 1 else _binary(Op.MUL, y, alpha)),
    "mul": _reduce(Op.MUL), "div": lambda x, y, rounding_mode=None: _binary(
        {None: Op.DIV, "floor": Op.FLOORDIV}[rounding_mode], x, y),
    "floor_divide": _reduce(Op.FLOORDIV), "remainder": _reduce(Op.MOD),
    "lt": _reduce(Op.LT), "le": _reduce(Op.LE), "gt": _reduce(Op.GT), "ge": _reduce(Op.GE),
    "eq": _reduce(Op.EQ), "ne": _reduce(Op.NE),
    "pow": _pow, "to": _to, "full_like": _full_like,
    "ones_like": lambda x, dtype=None, **k: _full_like(x, 1, dtype),
    "zeros_like": lambda x, dtype=None, **k: _full_like(x, 0, dtype),
}
_TORCH_ALIASES = {
    "clip": "clamp", "special_erf": "erf", "absolute": "abs", "negative": "neg", "true_divide": "div",
    "greater": "gt", "greater_equal": "ge", "less": "lt", "less_equal": "le", "not_equal": "ne",
    "__add__": "add", "__radd__": "add", "__mul__": "mul", "__rmul__": "mul", "__and__": "bitwise_and",
    "__rand__": "bitwise_and", "__or__": "bitwise_or", "__ror__": "bitwise_or", "__xor__": "bitwise_xor",
    "__rxor__": "bitwise_xor", "__lt__": "lt", "__le__": "le", "__gt__": "gt", "__ge__": "ge", "__eq__": "eq",
    "__ne__": "ne", "__truediv__": "div", "__sub__": "sub",
}
_METHODS: dict[str, Callable] = {
    **{k: v for k, v in _FUNCTIONS.items() if k not in ("where", "full_like", "ones_like", "zeros_like")},
    "float": lambda x: _to(x, torch.float32), "int": lambda x: _to(x, torch.int32),
    "long": lambda x: _to(x, torch.int64), "bool": lambda x: _to(x, torch.bool),
    "type": lambda x, dtype: _to(x, dtype),
    "new_ones": lambda x, size=(), dtype=None, **k: _new_full(x, size, 1, dtype),
    "new_zeros": lambda x, size=(), dtype=None, **k: _new_full(x, size, 0, dtype),
    "new_full": lambda x, size, fill_value, dtype=None, **k: _new_full(x, size, fill_value, dtype),
    "clamp_min": lambda x, m: _clamp(x, min=m), "clamp_max": lambda x, m: _clamp(x, max=m),
    "where": lambda x, cond, other: _where(cond, x, other),
}


def _index_buffer(tracer: _Tracer, tensor, index) -> Sym:
    if not isinstance(tensor, torch.Tensor):
        raise tracer.fail(f"indexing a {type(tensor).__name__}")
    items = index if isinstance(index, tuple) else (index,)
    nodes = []
    for it in items:
        if isinstance(it, (Sym, int)) and not isinstance(it, bool):
            nodes.append(_lift(tracer, it)[0])
            if tracer.builder.nodes[nodes[-1]].dtype is DType.F32:
                raise tracer.fail("a floating-point tensor index")
        else:
            raise tracer.fail(f"an index of type {type(it).__name__} (only integer expressions are supported)")
    if len(nodes) != tensor.dim():
        raise tracer.fail(
            f"a captured tensor of shape {tuple(tensor.shape)} indexed with {len(nodes)} indices "
            f"(index every dimension, e.g. t[{', '.join(['i'] * max(tensor.dim(), 1))}])"
        )
    return Sym(tracer, build_load(tracer.builder, tracer.buffer(tensor), nodes))


@dataclass
class TracedMod:
    """A traced mod: the IR plus the runtime values it reads.

    `graph.key()` (which covers captured buffers' dtypes and ranks) is the
    compile-cache key; `buffers` and `scalars` become kernel arguments."""

    graph: Graph
    buffers: list[torch.Tensor] = field(default_factory=list)
    scalars: list[Any] = field(default_factory=list)
    name: str = "mod"
    fn: Callable | None = None

    @property
    def kind(self) -> str:
        return self.graph.kind

    @property
    def cache_key(self) -> str:
        return self.graph.key()

    def float_buffers(self) -> list[int]:
        return [i for i, b in enumerate(self.graph.buffers) if b.value_dtype is DType.F32]

    def __repr__(self):
        return f"TracedMod({self.name}, {self.kind}, key={self.cache_key}, buffers={len(self.buffers)}, scalars={self.scalars})"


def _with_symbolic_scalars(fn: Callable, tracer: _Tracer, depth: int = 0) -> Callable | None:
    """A copy of `fn` whose captured int/float closure cells hold scalar leaves.
    Closures it captures (and_masks' list of mods, a factory's inner mod) are
    copied the same way, so a composed mod keeps its numbers as runtime scalars."""
    if not isinstance(fn, types.FunctionType) or not fn.__closure__ or depth > 8:
        return None

    def swap(value):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return tracer.scalar(value)
        if isinstance(value, types.FunctionType):
            return _with_symbolic_scalars(value, tracer, depth + 1)
        if isinstance(value, (tuple, list)) and value and all(isinstance(v, types.FunctionType) for v in value):
            copies = [_with_symbolic_scalars(v, tracer, depth + 1) for v in value]
            if any(c is not None for c in copies):
                return type(value)(c if c is not None else v for c, v in zip(copies, value))
        return None

    cells = []
    swapped = False
    for cell in fn.__closure__:
        try:
            new = swap(cell.cell_contents)
        except ValueError:  # empty cell
            new = None
        cells.append(cell if new is None else types.CellType(new))
        swapped |= new is not None
    if not swapped:
        return None
    return types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, tuple(cells))


def _arity(fn: Callable) -> int | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind in (p.VAR_POSITIONAL,) for p in params):
        return None
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty)


def _trace(fn: Callable, kind: str, names: tuple[str, ...]) -> TracedMod:
    if not callable(fn):
        raise TypeError(f"{kind} must be callable, got {type(fn).__name__}")
    mod_name = getattr(fn, "__name__", type(fn).__name__)
    n = _arity(fn)
    if n is not None and n != len(names):
        raise TypeError(f"{kind} '{mod_name}' takes {n} positional arguments; expected {len(names)}: ({', '.join(names)})")
    last_error: Exception | None = None
    for symbolic_scalars in (True, False):
        tracer = _Tracer(kind, mod_name)
        target = _with_symbolic_scalars(fn, tracer) if symbolic_scalars else fn
        if target is None:
            if symbolic_scalars:
                continue
            target = fn
        b = tracer.builder
        dtypes = {"score": DType.F32}
        args = [Sym(tracer, b.add(Op.INPUT, dtypes.get(nm, DType.I32), (), nm)) for nm in names]
        try:
            out = target(*args)
        except UnsupportedModError as e:
            if symbolic_scalars:  # e.g. `if window > 0:` on a captured scalar: retry with constants
                log.debug("retracing %s with constant scalars: %s", mod_name, e)
                last_error = e
                continue
            raise
        out_node, _ = _lift(tracer, out) if not isinstance(out, Sym) else (out.node, False)
        out_dtype = b.nodes[out_node].dtype
        if kind == "mask_mod" and out_dtype is not DType.BOOL:
            raise UnsupportedModError(
                f"mask_mod '{mod_name}' must return a boolean, but returns {out_dtype.value}; "
                "compare something (e.g. q_idx >= kv_idx) or add .bool()"
            )
        if kind == "score_mod":
            out_node = b.cast(out_node, DType.F32)
        graph = b.finish((out_node,))
        verify(graph)
        return TracedMod(graph, tracer.buffer_values, tracer.scalar_values, mod_name, fn)
    raise last_error  # pragma: no cover - the constant retry always returns or raises


def trace_score_mod(fn: Callable) -> TracedMod:
    """Trace `score_mod(score, b, h, q_idx, kv_idx) -> score`."""
    return _trace(fn, "score_mod", ("score", "b", "h", "q_idx", "kv_idx"))


def trace_mask_mod(fn: Callable) -> TracedMod:
    """Trace `mask_mod(b, h, q_idx, kv_idx) -> bool`."""
    return _trace(fn, "mask_mod", ("b", "h", "q_idx", "kv_idx"))


# ---- per-function trace cache


def _fingerprint(obj, depth: int = 0):
    """What a traced mod depends on besides its code: identities of captured
    tensors and functions, values of captured numbers, in closures and in the
    globals the code names. Equal fingerprints give equal traces."""
    if depth > 8:
        return None
    if isinstance(obj, torch.Tensor):
        return ("t", id(obj), obj.dtype, obj.dim())
    if isinstance(obj, (bool, int, float, str, type(None))):
        return ("v", type(obj), obj)
    if isinstance(obj, (tuple, list)):
        return ("s", tuple(_fingerprint(v, depth + 1) for v in obj))
    if isinstance(obj, types.FunctionType):
        parts = [id(obj), id(obj.__code__)]
        for cell in obj.__closure__ or ():
            try:
                parts.append(_fingerprint(cell.cell_contents, depth + 1))
            except ValueError:
                parts.append(None)
        g = obj.__globals__
        for name in obj.__code__.co_names:
            if name in g and not isinstance(g[name], types.ModuleType):
                parts.append((name, _fingerprint(g[name], depth + 1)))
        return ("f", tuple(parts))
    if isinstance(obj, (type, types.BuiltinFunctionType)):
        return ("c", id(obj))  # classes and builtins: what they do does not change
    return _UNCACHEABLE  # any other object may hold tensors we cannot see change


_UNCACHEABLE = ("uncacheable",)
_TRACES: "weakref.WeakKeyDictionary[Callable, tuple]" = weakref.WeakKeyDictionary()


def _contains(fp, marker) -> bool:
    if fp == marker:
        return True
    return isinstance(fp, tuple) and any(_contains(x, marker) for x in fp)


def trace_cached(fn: Callable, kind: str) -> TracedMod:
    """`trace_score_mod` / `trace_mask_mod` (by kind), reusing the last trace of
    the same function object while nothing it captures has changed. A trace costs
    ~0.2 ms; a hit costs a few microseconds."""
    tracer_fn = trace_score_mod if kind == "score_mod" else trace_mask_mod
    if not isinstance(fn, types.FunctionType):
        return tracer_fn(fn)
    fp = _fingerprint(fn)
    hit = _TRACES.get(fn)
    if hit is not None and hit[0] == fp:  # only cacheable fingerprints are stored
        return hit[1]
    if _contains(fp, _UNCACHEABLE):  # e.g. a mod reading cfg.bias: retrace every call (~0.2 ms)
        return tracer_fn(fn)
    traced = tracer_fn(fn)
    _TRACES[fn] = (fp, traced)
    return traced
