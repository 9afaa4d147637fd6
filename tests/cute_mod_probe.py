"""Compile (and, on a Hopper/Blackwell GPU, run) each standard mod's generated
CuTeDSL function inside a one-warp test kernel. Run as a script so that
CUTE_DSL_ARCH is set before CuTeDSL is imported:

    python tests/cute_mod_probe.py sm_90a     # prints one line per mod, then 'done'
"""
import os
import sys

os.environ["CUTE_DSL_ARCH"] = sys.argv[1]

import torch  # noqa: E402

import cutlass  # noqa: E402
import cutlass.cute as cute  # noqa: E402
from cutlass import Float32, Int32  # noqa: E402

from flex_fa4.mods import (causal_mask, generate_alibi_bias, generate_doc_mask, generate_prefix_lm_mask,  # noqa: E402
                           generate_relative_bias, generate_sliding_window, generate_tanh_softcap)
from mod_codegen import evaluate, trace_mask_mod, trace_score_mod  # noqa: E402
from mod_codegen.emit_cute import cute_function, runtime_buffers, runtime_scalars  # noqa: E402

_CUTE_TYPES = {"float32": Float32, "int64": cutlass.Int64, "int32": Int32, "bool": cutlass.Uint8}


KV_OFF = 9  # the compile-time column offset of the split form (mod_codegen.affine)


def probe_kernel(traced):
    """A jit function: thread t evaluates the mod at q_idx = t, kv_idx = 3t - 7 (b=0, h=1)
    into out[t], and again in split form (kv_base = kv_idx - KV_OFF) into out[32 + t]."""
    fn, _ = cute_function(traced.graph)
    is_score = traced.kind == "score_mod"

    @cute.kernel
    def kernel(out: cute.Tensor, bufs, scalars):
        tidx, _, _ = cute.arch.thread_idx()
        q_idx = Int32(tidx)
        kv_idx = Int32(tidx) * 3 - 7
        for split in cutlass.range_constexpr(2):
            split_args = (kv_idx - KV_OFF, KV_OFF) if split else ()
            if cutlass.const_expr(is_score):
                out[tidx + 32 * split] = fn(Float32(tidx) * Float32(0.25), Int32(0), Int32(1), q_idx, kv_idx,
                                            bufs, scalars, *split_args)
            else:
                keep = fn(Int32(0), Int32(1), q_idx, kv_idx, bufs, scalars, *split_args)
                out[tidx + 32 * split] = Float32(1.0) if keep else Float32(0.0)

    @cute.jit
    def launch(out: cute.Tensor, bufs, scalars):
        kernel(out, bufs, scalars).launch(grid=[1, 1, 1], block=[32, 1, 1])

    return launch


def expected(traced):
    idx = torch.arange(32)
    inputs = {"b": torch.zeros(32, dtype=torch.long), "h": torch.ones(32, dtype=torch.long), "q_idx": idx,
              "kv_idx": idx * 3 - 7, "score": idx * 0.25}
    (value,) = evaluate(traced.graph, inputs, traced.buffers, traced.scalars)
    return value.float().repeat(2)


def main():
    from cutlass.cute.runtime import from_dlpack, make_fake_tensor

    run_on_gpu = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] in (9, 10) and \
        os.environ.get("FLEX_FA4_PROBE_RUN", "1") == "1"
    doc = torch.arange(64) // 8
    mods = [
        trace_score_mod(generate_alibi_bias(8)), trace_score_mod(generate_tanh_softcap(30.0)),
        trace_score_mod(generate_relative_bias(torch.randn(8, 33))),
        trace_score_mod(lambda s, b, h, q, kv: torch.where((q - kv) % 4 == 0, torch.exp2(s) - s * s, s / 3)),
        trace_mask_mod(causal_mask), trace_mask_mod(generate_doc_mask(doc)),
        trace_mask_mod(generate_sliding_window(5)), trace_mask_mod(generate_prefix_lm_mask(16)),
    ]
    for traced in mods:
        launch = probe_kernel(traced)
        if run_on_gpu:
            bufs = tuple(from_dlpack(t.cuda()) for t in runtime_buffers(traced)) or None
            scal = tuple(Float32(v) if isinstance(v, float) else Int32(v) for v in runtime_scalars(traced)) or None
            out = torch.full((64,), float("nan"), device="cuda")
            launch(from_dlpack(out), bufs, scal)
            torch.cuda.synchronize()
            err = (out.cpu() - expected(traced)).abs().max().item()
            status = "ran" if err < 1e-4 else f"WRONG (max error {err})"
        else:
            bufs = tuple(make_fake_tensor(_CUTE_TYPES[b.dtype], tuple(cute.sym_int() for _ in range(b.ndim)),
                                          stride=tuple(cute.sym_int64() for _ in range(b.ndim)))
                         for b in traced.graph.buffers) or None
            scal = tuple(Float32(0.0) if d.value == "f32" else Int32(0) for d in traced.graph.scalars) or None
            out = make_fake_tensor(Float32, (64,), stride=(1,))
            compiled = cute.compile(launch, out, bufs, scal, options="--keep-cubin")
            size = len(compiled.artifacts.CUBIN or b"")
            status = f"cubin {size} bytes" if size else "NO CUBIN"
        print(f"{traced.name}: {status}", flush=True)
    print("done")


if __name__ == "__main__":
    main()
