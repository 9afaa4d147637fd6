"""Compile (never launch) the Triton kernels for sm_90 on a machine without a GPU.

Run as a script by tests/test_triton_compile.py, in its own process: it swaps Triton's
active driver for a stand-in that reports an sm_90 target, and turns every launch into
`warmup` (compile only). The interpreter the other CPU tests use never compiles, so
compile-time errors (a rebound constexpr, a type clash between branches) show up only
here or on a GPU. Prints one line per case, `ok` or the innermost error.
"""
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
os.environ["FLEX_FA4_TRITON_AUTOTUNE"] = "0"  # one tile: configs.launch tries the first that fits
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402


class Sm90CompileOnly:
    """Just enough of a driver for JITFunction.run(warmup=True)."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


driver.set_active(Sm90CompileOnly())
_run = triton.runtime.jit.JITFunction.run


def _compile_only(self, *args, grid, warmup, **kwargs):
    return _run(self, *args, grid=grid, warmup=True, **kwargs)


triton.runtime.jit.JITFunction.run = _compile_only

import fallback_triton  # noqa: E402
import fallback_triton.plan as plan  # noqa: E402
from flex_fa4 import create_block_mask, mods  # noqa: E402
from mod_codegen.trace import trace_mask_mod, trace_score_mod  # noqa: E402

plan.check_call = lambda *a: None  # can_implement wants a CUDA tensor; the shapes are fine

S_Q, S_K, H = 200, 136, 2
q_scale = (torch.rand(S_Q) + 0.5).requires_grad_()
kv_bias = torch.randn(H, S_K, requires_grad=True)
temperature = torch.tensor(0.7, requires_grad=True)
slopes = mods.alibi_slopes(H).requires_grad_()
doc = (torch.arange(S_K) // 50).to(torch.int32)
CASES = {
    # three float buffers -> three gradient pairs (q-only, (h, kv), nothing)
    "three buffer gradients": (lambda s, b, h, qi, ki: s * temperature * q_scale[qi] + kv_bias[h, ki],
                               mods.generate_sliding_window(64)),
    "alibi": (mods.generate_alibi_bias(slopes=slopes), mods.causal_mask),
    "softcap + document": (mods.generate_tanh_softcap(20.0), mods.generate_doc_mask(doc)),
    "noop": (None, None),
}


def main(names):
    for name in names:
        score, mask = CASES[name]
        q = torch.randn(1, H, S_Q, 64, dtype=torch.bfloat16)
        k = torch.randn(1, H, S_K, 64, dtype=torch.bfloat16)
        bs = create_block_mask(mask or mods.noop_mask, None, None, S_Q, S_K).as_tensors()
        sm = trace_score_mod(score) if score else None
        mm = trace_mask_mod(mask) if mask else None
        try:
            out, lse, _ = fallback_triton.attention_forward(q, k, k, scale=0.125, block_sparse=bs,
                                                            score_mod=sm, mask_mod=mm, dense=mask is None)
            fallback_triton.attention_backward(q, k, k, q, torch.zeros(1, H, S_Q), q, scale=0.125,
                                               block_sparse=bs, score_mod=sm, mask_mod=mm, dense=mask is None)
            print(f"{name}: ok", flush=True)
        except Exception as e:  # report the innermost cause
            while e.__cause__ or e.__context__:
                e = e.__cause__ or e.__context__
            print(f"{name}: {type(e).__name__}: {str(e)[:500]}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(CASES))
