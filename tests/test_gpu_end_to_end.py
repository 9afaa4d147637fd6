"""The whole stack on a GPU: flex_attention with each kernel backend (and auto)
against dense float64 attention straight from the mods, forward and backward,
for every standard variant. Skipped without CUDA; run on the device."""
import pytest
import torch

from flex_fa4 import AuxRequest, create_block_mask, explain, flex_attention
from flex_fa4.backends import BACKENDS, decide

from dense_reference import dense_attention, poison_free_memory, rel_err
from test_reference import VARIANTS, make_variant

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _backends():
    if not torch.cuda.is_available():
        return []
    names = ["triton", "auto"]
    if torch.cuda.get_device_capability()[0] == 9:
        names.insert(0, "fa4")
    return names


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_backward_against_float64(variant, backend, seed):
    rnd = torch.Generator().manual_seed(seed)
    B, Hq, Hkv, Q, KV, D = 2, 4, 2, 1000, 1537, 128
    score_mod, mask_mod = make_variant(variant, Hq, Q, KV, rnd)
    dev = "cuda"
    # captured tensors live on the GPU like the inputs
    score_mod, mask_mod = _to_device(score_mod, dev), _to_device(mask_mod, dev)
    q = torch.randn(B, Hq, Q, D, generator=rnd).to(dev, torch.bfloat16).requires_grad_()
    k = torch.randn(B, Hkv, KV, D, generator=rnd).to(dev, torch.bfloat16).requires_grad_()
    v = torch.randn(B, Hkv, KV, D, generator=rnd).to(dev, torch.bfloat16).requires_grad_()
    bm = create_block_mask(mask_mod, None, None, Q, KV, device=dev) if mask_mod else None
    out, aux = flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, enable_gqa=True,
                              return_aux=AuxRequest(lse=True), backend=backend)
    ref_out, ref_lse, _ = dense_attention(q, k, v, score_mod, mask_mod)
    assert rel_err(out, ref_out) < 1e-2, f"out seed={seed}"
    assert rel_err(aux.lse, ref_lse) < 1e-3, f"lse seed={seed}"
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), dout)
    want = torch.autograd.grad(ref_out, (q, k, v), dout.double())
    for name, g, w in zip("qkv", got, want):
        assert rel_err(g, w) < 2e-2, f"d{name} seed={seed}"


def _to_device(mod, dev):
    """Re-create a variant's closure with its captured tensors on `dev`."""
    if mod is None or not getattr(mod, "__closure__", None):
        return mod
    import types

    def move(value):
        if isinstance(value, torch.Tensor):
            return value.to(dev)
        if isinstance(value, types.FunctionType):
            return _to_device(value, dev)
        if isinstance(value, tuple) and all(callable(x) for x in value):
            return tuple(_to_device(x, dev) for x in value)
        return value

    cells = tuple(types.CellType(move(c.cell_contents)) for c in mod.__closure__)
    return types.FunctionType(mod.__code__, mod.__globals__, mod.__name__, mod.__defaults__, cells)


def test_auto_picks_a_kernel_backend(seed):
    q = torch.randn(1, 2, 256, 128, device="cuda", dtype=torch.bfloat16)
    chosen, considered = decide(_call(q), "auto")
    expect = "fa4" if torch.cuda.get_device_capability()[0] == 9 else "triton"
    assert chosen is BACKENDS[expect], explain(q, q, q)


def _call(q):
    from flex_fa4.api import _build_call

    return _build_call(q, q, q, None, None, None, False, False, False, None)


@pytest.mark.skipif("fa4" not in _backends(), reason="needs an sm90 (H100/H200) GPU")
def test_fa4_repeats_reuse_one_launch_plan(seed):
    """Repeated calls run the ForwardPlan of the first (Note [launch plan] in
    cute_kernels/interface.py) on fresh inputs, and see a captured tensor's in-place update."""
    from flex_fa4.mods import causal_mask, generate_alibi_bias

    B, H, S, D = 2, 4, 700, 128
    slopes = torch.rand(H, device="cuda")
    score_mod = generate_alibi_bias(slopes=slopes)
    bm = create_block_mask(causal_mask, None, None, S, S, device="cuda")
    plans = set()
    for step in range(3):
        q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        poison_free_memory()
        out = flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, backend="fa4")
        ref = dense_attention(q, k, v, score_mod, causal_mask)[0]
        assert rel_err(out, ref) < 1e-2, f"step {step} seed={seed}"
        (template, backend), = bm._call_cache.values()
        assert backend.name == "fa4"
        plans.add(id(template.prepared["fa4"]))
        slopes.mul_(1.5).add_(0.1)
    assert len(plans) == 1
