"""Affine index forms: the analysis behind per-row comparisons in tiled kernels.

A tiled kernel evaluates a mod at every element of a thread's register fragment. Within
one fragment the key index is `kv_idx = kv_base + kv_off`: `kv_base` is a run-time value
(the tile's first column plus the thread's column offset), `kv_off` a compile-time
constant (the element's column within every thread's pattern). An integer comparison
whose sides are affine in kv_idx,

    q_idx - kv_idx <= W     ==     q_idx - W - kv_base  <=  kv_off

then has a left side that is the same for a whole row and a right side that is an
immediate: one compare per element, as FlashAttention's hand-written causal and window
masks do. A cast of such an expression to float splits the same way,

    float(kv_idx - q_idx)   ==     float(kv_base - q_idx) + float(kv_off)

so an int-to-float conversion (a quarter-rate instruction on Hopper, like exp2) runs once
per row instead of once per element.

The compiler cannot do this itself: moving a constant across an int32 comparison is only
valid if nothing wraps, and the kernels' integer adds carry no no-wrap flags. The rewrite
assumes what index arithmetic guarantees in practice: every affine combination stays
inside int32 (coefficients and constants are bounded below, so that needs indices under
about 2^20 times smaller than int32), and the float split is exact while the values stay
below 2^24 (16.7M tokens; past that the cast itself rounds).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .ir import COMPARE_OPS, DType, Graph, Op, input_dependence

# Coefficients and constants beyond these are treated as non-affine, so the rewrite
# never touches hash-like arithmetic whose int32 wrap-around is the point.
MAX_COEF = 1 << 10
MAX_CONST = 1 << 30


@dataclass(frozen=True)
class Affine:
    """kv * kv_idx + const + sum(coef * node) over kv-independent int32 nodes."""

    kv: int = 0
    const: int = 0
    terms: tuple[tuple[int, int], ...] = ()  # (node id, coefficient), sorted, no zeros

    def plus(self, other: "Affine", sign: int = 1) -> Optional["Affine"]:
        terms = dict(self.terms)
        for node, coef in other.terms:
            terms[node] = terms.get(node, 0) + sign * coef
        return _bounded(self.kv + sign * other.kv, self.const + sign * other.const, terms)

    def scaled(self, factor: int) -> Optional["Affine"]:
        return _bounded(self.kv * factor, self.const * factor,
                        {n: c * factor for n, c in self.terms})


def _bounded(kv: int, const: int, terms: dict) -> Optional[Affine]:
    coefs = [kv, *terms.values()]
    if any(abs(c) > MAX_COEF for c in coefs) or abs(const) > MAX_CONST:
        return None
    return Affine(kv, const, tuple(sorted((n, c) for n, c in terms.items() if c)))


@dataclass(frozen=True)
class KvSplit:
    """How to print one node in split form (see the module docstring).

    kind "compare": `row cmp imm`, with row = sum(coef * node) + kv * kv_base and
    imm = -(kv * kv_off + const). kind "cast": `float(row) + float(kv * kv_off + const)`.
    """

    kind: str
    op: Op  # the comparison (kind "compare") or Op.CAST
    form: Affine


def kv_splits(graph: Graph) -> dict[int, KvSplit]:
    """The nodes of `graph` that have a split form: integer comparisons and int-to-float
    casts whose value depends on kv_idx only through an affine expression."""
    forms: dict[int, Optional[Affine]] = {}
    kv_dependent = input_dependence(graph, "kv_idx")
    splits: dict[int, KvSplit] = {}
    for i, n in enumerate(graph.nodes):
        forms[i] = _affine_form(graph, i, forms, kv_dependent) if n.dtype is DType.I32 else None
        if n.op in COMPARE_OPS and graph.nodes[n.args[0]].dtype is DType.I32:
            a, b = (forms[x] for x in n.args)
            diff = a.plus(b, -1) if a is not None and b is not None else None
            if diff is not None and diff.kv:
                splits[i] = KvSplit("compare", n.op, diff)
        elif n.op is Op.CAST and n.dtype is DType.F32:
            form = forms[n.args[0]]
            if form is not None and form.kv:
                splits[i] = KvSplit("cast", Op.CAST, form)
    return splits


def _affine_form(graph: Graph, i: int, forms: dict, kv_dependent: list) -> Optional[Affine]:
    n = graph.nodes[i]
    if n.op is Op.INPUT and n.attr == "kv_idx":
        return Affine(kv=1)
    if n.op is Op.CONST:
        return _bounded(0, int(n.attr), {})
    args = [forms[a] for a in n.args]
    form = None
    if n.op in (Op.ADD, Op.SUB) and None not in args:
        form = args[0].plus(args[1], 1 if n.op is Op.ADD else -1)
    elif n.op is Op.NEG and None not in args:
        form = args[0].scaled(-1)
    elif n.op is Op.MUL and None not in args:
        a, b = args
        if not a.kv and not a.terms:
            form = b.scaled(a.const)
        elif not b.kv and not b.terms:
            form = a.scaled(b.const)
    if form is None and not kv_dependent[i]:
        form = Affine(terms=((i, 1),))  # an opaque run-time value, the same for a whole row
    return form
