"""The reference backend against dense float64 attention computed straight from
the mods: random shapes, variants, GQA, head dims, and gradients."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flex_fa4 import AuxRequest, and_masks, create_block_mask, flex_attention
from flex_fa4.mods import (causal_mask, generate_alibi_bias, generate_doc_mask, generate_prefix_lm_mask,
                           generate_relative_bias, generate_sliding_window, generate_tanh_softcap)

from dense_reference import dense_attention, rel_err


def make_variant(name, H, Q, KV, rnd):
    """(score_mod, mask_mod) for a standard variant or a combination."""
    doc = torch.sort(torch.randint(0, 3, (max(Q, KV),), generator=rnd)).values
    slopes = torch.rand(H, generator=rnd)
    table = torch.randn(H, 2 * 16 + 1, generator=rnd)
    window = int(torch.randint(1, 50, (1,), generator=rnd))
    return {
        "noop": (None, None),
        "causal": (None, causal_mask),
        "sliding_window": (None, generate_sliding_window(window)),
        "document_causal": (None, generate_doc_mask(doc)),
        "prefix_lm": (None, generate_prefix_lm_mask(int(torch.randint(0, Q + 1, (1,), generator=rnd)))),
        "alibi_causal": (generate_alibi_bias(slopes=slopes), causal_mask),
        "softcap_causal": (generate_tanh_softcap(float(torch.rand((), generator=rnd)) * 5 + 1), causal_mask),
        "relative_bias": (generate_relative_bias(table), None),
        "softcap_doc_window": (generate_tanh_softcap(3.0), and_masks(generate_doc_mask(doc, inner=None),
                                                                     generate_sliding_window(window))),
    }[name]


VARIANTS = ["noop", "causal", "sliding_window", "document_causal", "prefix_lm", "alibi_causal", "softcap_causal",
            "relative_bias", "softcap_doc_window"]


def _inputs(B, Hq, Hkv, Q, KV, D, Dv, dtype, rnd, requires_grad=False):
    q = torch.randn(B, Hq, Q, D, generator=rnd).to(dtype)
    k = torch.randn(B, Hkv, KV, D, generator=rnd).to(dtype)
    v = torch.randn(B, Hkv, KV, Dv, generator=rnd).to(dtype)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    variant=st.sampled_from(VARIANTS), B=st.integers(1, 2), Hkv=st.integers(1, 2), group=st.sampled_from([1, 2, 3]),
    Q=st.integers(1, 200), KV=st.integers(1, 200), D=st.sampled_from([16, 32, 64, 80, 128, 256]),
    Dv=st.sampled_from([16, 48, 64]), block=st.sampled_from([16, 32, 128, (32, 64)]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), seed=st.integers(0, 2**31 - 1),
)
def test_forward_matches_dense_float64(variant, B, Hkv, group, Q, KV, D, Dv, block, dtype, seed):
    rnd = torch.Generator().manual_seed(seed)
    Hq = Hkv * group
    score_mod, mask_mod = make_variant(variant, Hq, Q, KV, rnd)
    q, k, v = _inputs(B, Hq, Hkv, Q, KV, D, Dv, dtype, rnd)
    bm = create_block_mask(mask_mod, None, None, Q, KV, device="cpu", BLOCK_SIZE=block) if mask_mod else None
    out, aux = flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, enable_gqa=group > 1,
                              return_aux=AuxRequest(lse=True, max_scores=True), backend="reference")
    ref_out, ref_lse, ref_max = dense_attention(q, k, v, score_mod, mask_mod)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert out.dtype == dtype and out.shape == (B, Hq, Q, Dv)
    assert rel_err(out, ref_out) < tol, f"seed={seed}"
    assert rel_err(aux.lse, ref_lse) < 1e-4, f"seed={seed}"
    assert rel_err(aux.max_scores, ref_max) < 1e-4, f"seed={seed}"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(variant=st.sampled_from(VARIANTS), Q=st.integers(1, 150), KV=st.integers(1, 150),
       group=st.sampled_from([1, 2]), D=st.sampled_from([16, 32]), Dv=st.sampled_from([16, 24]),
       seed=st.integers(0, 2**31 - 1))
def test_gradients_match_autograd_on_dense_float64(variant, Q, KV, group, D, Dv, seed):
    rnd = torch.Generator().manual_seed(seed)
    B, Hkv = 2, 2
    Hq = Hkv * group
    score_mod, mask_mod = make_variant(variant, Hq, Q, KV, rnd)
    q, k, v = _inputs(B, Hq, Hkv, Q, KV, D, Dv, torch.float64, rnd, requires_grad=True)
    bm = create_block_mask(mask_mod, None, None, Q, KV, device="cpu", BLOCK_SIZE=32) if mask_mod else None
    dout = torch.randn(B, Hq, Q, Dv, generator=rnd, dtype=torch.float64)
    out = flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, enable_gqa=group > 1, backend="reference")
    got = torch.autograd.grad(out, (q, k, v), dout)
    ref = dense_attention(q, k, v, score_mod, mask_mod)[0]
    want = torch.autograd.grad(ref, (q, k, v), dout)
    for name, g, w in zip("qkv", got, want):
        assert not torch.isnan(g).any(), f"NaN in d{name}, seed={seed}"
        # 1e-6, not 1e-12: a float32 captured tensor (ALiBi slopes) rounds in the Python mod
        assert rel_err(g, w) < 1e-6, f"d{name} seed={seed}"


def test_captured_buffer_gradients(seed):
    B, H, Q, KV, D = 2, 4, 70, 90, 16
    q, k, v = (torch.randn(B, H, n, D, dtype=torch.float64, requires_grad=True) for n in (Q, KV, KV))
    slopes = torch.rand(H, dtype=torch.float64, requires_grad=True)
    table = torch.randn(H, 33, dtype=torch.float64, requires_grad=True)

    def both(score, b, h, q_idx, kv_idx):
        return generate_relative_bias(table)(generate_alibi_bias(slopes=slopes)(score, b, h, q_idx, kv_idx),
                                             b, h, q_idx, kv_idx)

    bm = create_block_mask(causal_mask, None, None, Q, KV, device="cpu", BLOCK_SIZE=32)
    out = flex_attention(q, k, v, score_mod=both, block_mask=bm, backend="reference")
    got = torch.autograd.grad(out.square().sum(), (slopes, table))
    ref = dense_attention(q, k, v, both, causal_mask)[0]
    want = torch.autograd.grad(ref.square().sum(), (slopes, table))
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-8


def test_fully_masked_rows_give_zero_and_minus_inf(seed):
    q, k, v = (torch.randn(1, 2, 40, 16, requires_grad=True) for _ in range(3))
    late = lambda b, h, q_idx, kv_idx: (kv_idx > 25) & (q_idx > 10)  # noqa: E731  rows 0..10 see nothing
    bm = create_block_mask(late, None, None, 40, 40, device="cpu", BLOCK_SIZE=16)
    out, lse = flex_attention(q, k, v, block_mask=bm, return_lse=True, backend="reference")
    assert torch.all(out[:, :, :11] == 0) and torch.all(lse[:, :, :11] == float("-inf"))
    assert torch.isfinite(lse[:, :, 11:]).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert torch.all(q.grad[:, :, :11] == 0)


def test_scale_and_return_conventions(seed):
    q, k, v = (torch.randn(1, 1, 20, 8, dtype=torch.float64) for _ in range(3))
    out = flex_attention(q, k, v, scale=0.3, backend="reference")
    assert rel_err(out, dense_attention(q, k, v, scale=0.3)[0]) < 1e-12
    out2, lse = flex_attention(q, k, v, return_lse=True)
    assert lse.shape == (1, 1, 20)
    out3, aux = flex_attention(q, k, v, return_aux=AuxRequest(lse=False, max_scores=True))
    assert aux.lse is None and aux.max_scores.shape == (1, 1, 20)


def test_accepts_a_block_mask_built_by_torch(seed):
    """Code that keeps torch's create_block_mask and switches only flex_attention works."""
    from torch.nn.attention.flex_attention import create_block_mask as torch_cbm

    q, k, v = (torch.randn(2, 2, 150, 16, dtype=torch.float64) for _ in range(3))
    mask = generate_sliding_window(33)
    out = flex_attention(q, k, v, block_mask=torch_cbm(mask, None, None, 150, 150, device="cpu", BLOCK_SIZE=32),
                         backend="reference")
    assert rel_err(out, dense_attention(q, k, v, None, mask)[0]) < 1e-12


def test_matches_torch_flex_attention(seed):
    """Same numbers as PyTorch's own flex_attention (eager, CPU) for a mod combination."""
    from torch.nn.attention.flex_attention import create_block_mask as torch_cbm
    from torch.nn.attention.flex_attention import flex_attention as torch_flex

    B, Hq, Hkv, Q, KV, D = 2, 4, 2, 130, 150, 32
    slopes = torch.rand(Hq)
    q, k, v = torch.randn(B, Hq, Q, D), torch.randn(B, Hkv, KV, D), torch.randn(B, Hkv, KV, D)
    mask = generate_sliding_window(40)
    mod = generate_alibi_bias(slopes=slopes)
    ours = flex_attention(q, k, v, score_mod=mod, enable_gqa=True, backend="reference",
                          block_mask=create_block_mask(mask, None, None, Q, KV, device="cpu", BLOCK_SIZE=64))
    theirs = torch_flex(q, k, v, score_mod=mod, enable_gqa=True,
                        block_mask=torch_cbm(mask, None, None, Q, KV, device="cpu", BLOCK_SIZE=64))
    assert rel_err(ours, theirs) < 1e-5
