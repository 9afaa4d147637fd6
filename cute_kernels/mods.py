"""The hook interface between generated (or hand-written) mods and the kernels.

A mod reaches a kernel as a `ModSpec`: a trace-time Python function that builds CuTeDSL
code for ONE element, plus what the compile cache must know about it. The kernel calls
it per accumulator element with that element's (q_idx, kv_idx) from the MMA partition
of an identity tensor, so the function is inlined into the kernel body.

    score fn(score: Float32, b, h, q_idx, kv_idx: Int32, bufs: tuple[cute.Tensor],
             scalars: tuple[Float32 | Int32], kv_base: Int32 = None, kv_off: int = 0) -> Float32
    mask  fn(b, h, q_idx, kv_idx, bufs, scalars, kv_base=None, kv_off=0) -> Boolean
                                                               (False = masked out)

kv_base / kv_off: kv_idx == kv_base + kv_off with kv_off a compile-time int; a function
may use them for cheaper index comparisons (see apply_mods.py) or ignore them.

`bufs` / `scalars` are this mod's captured tensors and scalars, passed as kernel
arguments, so new values never recompile. `mod_codegen.emit_cute` builds ModSpecs from
traced mods; the hand-written ones below serve the kernel tests and the dense paths.
This module does not import cutlass (the device-side appliers live in apply_mods.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ModSpec:
    kind: str  # "score" | "mask"
    fn: Callable = None
    buffer_specs: tuple = ()  # (torch dtype name, ndim) per captured tensor, in order
    scalar_types: tuple = ()  # "f32" | "i32" per captured scalar, in order
    key: str = ""  # structural identity for the compile cache (never values)
    source: str = ""  # generated source, kept for debugging

    @property
    def num_buffers(self) -> int:
        return len(self.buffer_specs)

    def cache_key(self) -> tuple:
        return (self.kind, self.key, self.buffer_specs, self.scalar_types)


def from_traced(traced, kind: str) -> ModSpec:
    """ModSpec for a mod_codegen TracedMod (kind: "score" or "mask"), via emit_cute."""
    from mod_codegen.emit_cute import cute_function
    from mod_codegen.ir import DType

    graph = traced.graph
    expect = "score_mod" if kind == "score" else "mask_mod"
    if graph.kind != expect:
        raise ValueError(f"expected a {expect}, got a {graph.kind}")
    fn, source = cute_function(graph)
    # bool captured tensors travel as uint8 (emit_cute.runtime_buffers)
    buffer_specs = tuple(("uint8" if b.dtype == "bool" else b.dtype, b.ndim) for b in graph.buffers)
    scalar_types = tuple("f32" if s is DType.F32 else "i32" for s in graph.scalars)
    return ModSpec(kind, fn, buffer_specs, scalar_types, key=graph.key(), source=source)


def _causal(b, h, q_idx, kv_idx, bufs, scalars, kv_base=None, kv_off=0):
    if kv_base is None:
        return q_idx >= kv_idx
    return q_idx - kv_base >= kv_off


CAUSAL_MASK = ModSpec("mask", _causal, key="builtin:causal")
