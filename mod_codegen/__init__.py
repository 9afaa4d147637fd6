"""mod_codegen: trace score_mod / mask_mod into a typed IR and emit code from it.

    traced = trace_score_mod(fn)        # IR + the runtime values it reads
    traced.graph                        # printable, hashable IR (ir.Graph)
    evaluate(traced.graph, ...)         # torch evaluator (emit_torch)
    score_mod_grad(traced.graph)        # d mod / d score and d mod / d buffers, as IR
    triton_mods(...)                    # @triton.jit functions (emit_triton)
    cute_function(graph)                # CuTeDSL functions (emit_cute), with the per-row
                                        # split forms of affine.kv_splits
"""
from .ir import BufferSpec, DType, Graph, Node, Op, verify
from .trace import TracedMod, UnsupportedModError, trace_cached, trace_mask_mod, trace_score_mod
from .emit_torch import evaluate, index_grids

__all__ = [
    "BufferSpec", "DType", "Graph", "Node", "Op", "verify",
    "TracedMod", "UnsupportedModError", "trace_cached", "trace_mask_mod", "trace_score_mod",
    "evaluate", "index_grids",
]
