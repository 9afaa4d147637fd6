"""Repeated flex_attention calls (Note [call cache] in flex_fa4/call_cache.py) and the
Triton AttentionPlan they reuse: a repeat must give the same answers as a first call
on fresh inputs, see in-place updates of captured tensors, notice anything that
changes the call, and keep no step's tensors alive. On CPU the kernels run in
Triton's interpreter; on a GPU the repeats go through the fast relaunch
(fallback_triton/launch.py)."""
import gc
import os
import weakref

import pytest
import torch

import fallback_triton
from flex_fa4 import create_block_mask, flex_attention
from flex_fa4.mods import causal_mask, generate_alibi_bias

from dense_reference import dense_attention, rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
TOL = 1e-2 if DTYPE == torch.bfloat16 else 1e-4
pytestmark = pytest.mark.skipif(DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs a GPU or TRITON_INTERPRET=1")
S, D = 96, 32


def _qkv(requires_grad=False, H=2):
    return [torch.randn(1, H, S, D, device=DEVICE, dtype=DTYPE, requires_grad=requires_grad) for _ in range(3)]


def _entries(bm):
    return getattr(bm, "_call_cache", {})


def test_repeats_reuse_one_plan_and_stay_correct(seed):
    bm = create_block_mask(causal_mask, None, None, S, S, device=DEVICE, BLOCK_SIZE=32)
    plans = set()
    for step in range(3):  # fresh inputs every step
        q, k, v = _qkv(requires_grad=True)
        out = flex_attention(q, k, v, block_mask=bm, backend="triton")
        ref = dense_attention(q, k, v, None, causal_mask)[0]
        assert rel_err(out, ref) < TOL, f"step {step} seed={seed}"
        dout = torch.randn_like(out)
        got = torch.autograd.grad(out, (q, k, v), dout)
        want = torch.autograd.grad(ref, (q, k, v), dout.double())
        for name, g, w in zip(("dq", "dk", "dv"), got, want):
            assert rel_err(g, w) < 10 * TOL, f"{name} step {step} seed={seed}"
        (template, backend), = _entries(bm).values()
        assert backend.name == "triton" and template.q is None
        plans.add(id(template.prepared["triton"]))
    assert len(plans) == 1


def test_a_changed_call_is_not_served_from_the_cache(seed):
    bm = create_block_mask(causal_mask, None, None, S, S, device=DEVICE, BLOCK_SIZE=32)
    q, k, v = _qkv()
    flex_attention(q, k, v, block_mask=bm, backend="triton")
    # another layout of the same values: (B, S, H, D) storage seen as (B, H, S, D)
    qt, kt, vt = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    out = flex_attention(qt, kt, vt, block_mask=bm, backend="triton")
    assert rel_err(out, dense_attention(q, k, v, None, causal_mask)[0]) < TOL, f"seed={seed}"
    flex_attention(q, k, v, block_mask=bm, backend="triton", scale=0.3)  # another scale
    flex_attention(q.requires_grad_(), k, v, block_mask=bm, backend="triton")  # now needs a backward
    assert len(_entries(bm)) == 4
    with pytest.raises(ValueError, match="enable_gqa"):  # checks still run for a new signature
        flex_attention(q, k[:, :1], v[:, :1], block_mask=bm, backend="triton")


def test_in_place_update_of_a_captured_tensor_is_seen(seed):
    """An optimizer step updates a learned bias in place between calls."""
    slopes = torch.rand(2, device=DEVICE)
    score_mod = generate_alibi_bias(slopes=slopes)
    bm = create_block_mask(causal_mask, None, None, S, S, device=DEVICE, BLOCK_SIZE=32)
    q, k, v = _qkv()
    flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, backend="triton")
    slopes.mul_(3.0).add_(0.5)
    out = flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, backend="triton")
    assert len(_entries(bm)) == 1  # the same traced mod: served from the cache
    assert rel_err(out, dense_attention(q, k, v, score_mod, causal_mask)[0]) < TOL, f"seed={seed}"


def test_a_changed_captured_scalar_is_a_new_call(seed):
    bm = create_block_mask(causal_mask, None, None, S, S, device=DEVICE, BLOCK_SIZE=32)
    q, k, v = _qkv()
    for temperature in (0.5, 2.0):
        def score_mod(s, b, h, qi, ki):
            return s * temperature
        out = flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, backend="triton")
        assert rel_err(out, dense_attention(q, k, v, score_mod, causal_mask)[0]) < TOL, f"seed={seed}"


def test_the_cache_keeps_no_inputs_alive(seed):
    bm = create_block_mask(causal_mask, None, None, S, S, device=DEVICE, BLOCK_SIZE=32)
    q, k, v = _qkv(requires_grad=True)
    out = flex_attention(q, k, v, block_mask=bm, backend="triton")
    out.sum().backward()
    refs = [weakref.ref(t) for t in (q, k, v, out)]
    del q, k, v, out
    gc.collect()
    assert all(r() is None for r in refs)
    assert len(_entries(bm)) == 1


def test_no_block_mask_calls_are_cached_too(seed):
    q, k, v = _qkv()
    for _ in range(2):
        q, k, v = _qkv()
        out = flex_attention(q, k, v, backend="triton")
        assert rel_err(out, dense_attention(q, k, v)[0]) < TOL, f"seed={seed}"


def test_a_plan_refuses_tensors_of_another_layout(seed):
    q, k, v = _qkv()
    bs = create_block_mask(causal_mask, None, None, S, S, device=DEVICE, BLOCK_SIZE=32).as_tensors()
    plan = fallback_triton.AttentionPlan(q, k, v, scale=D ** -0.5, block_sparse=bs, score_mod=None, mask_mod=None)
    plan.forward(q, k, v)
    with pytest.raises(ValueError, match="other shapes, strides"):
        plan.forward(q[:, :1], k[:, :1], v[:, :1])


def test_a_misaligned_input_gets_its_own_kernel(seed):
    """Triton specializes on 16-byte alignment: a repeat whose q starts 2 bytes into
    its storage must not reuse the kernel compiled for an aligned q."""
    bm = create_block_mask(causal_mask, None, None, S, S, device=DEVICE, BLOCK_SIZE=32)
    for offset in (0, 1, 0):
        q, k, v = _qkv()
        storage = torch.randn(q.numel() + 1, device=DEVICE, dtype=DTYPE)
        q = storage[offset:offset + q.numel()].view(q.shape)
        out = flex_attention(q, k, v, block_mask=bm, backend="triton")
        assert rel_err(out, dense_attention(q, k, v, None, causal_mask)[0]) < TOL, f"offset {offset} seed={seed}"
    assert len(_entries(bm)) == 1


def test_only_calls_that_need_gradients_go_through_autograd(seed, monkeypatch):
    """A call that needs no gradient (plain inference, or under torch.no_grad) runs the
    backend directly, without the autograd.Function's host time; one that needs them
    still gets the Function and a working backward."""
    from flex_fa4 import autograd as kernel_autograd

    applied = []
    real_apply = kernel_autograd._KernelAttention.apply
    monkeypatch.setattr(kernel_autograd._KernelAttention, "apply",
                        lambda *args: (applied.append(True), real_apply(*args))[1])
    bm = create_block_mask(causal_mask, None, None, S, S, device=DEVICE, BLOCK_SIZE=32)
    q, k, v = _qkv(requires_grad=True)
    want = dense_attention(q, k, v, None, causal_mask)[0]
    with torch.no_grad():
        out = flex_attention(q, k, v, block_mask=bm, backend="triton")
    plain = flex_attention(*(t.detach() for t in (q, k, v)), block_mask=bm, backend="triton")
    assert not applied and out.grad_fn is None and plain.grad_fn is None
    assert rel_err(out, want) < TOL and rel_err(plain, want) < TOL, f"seed={seed}"
    trained = flex_attention(q, k, v, block_mask=bm, backend="triton")
    assert applied == [True] and trained.grad_fn is not None
    dq, = torch.autograd.grad(trained, (q,), torch.ones_like(trained))
    assert rel_err(dq, torch.autograd.grad(want, (q,), torch.ones_like(want))[0]) < 10 * TOL, f"seed={seed}"
