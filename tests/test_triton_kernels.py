"""fallback_triton against a float64 dense reference computed straight from the Python mods.

On the CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set here before
triton is imported), on small odd shapes. Tests marked gpu run real sizes on CUDA.
"""
import os

if not __import__("torch").cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
os.environ["FLEX_FA4_TRITON_POISON"] = "1"  # NaN-fill outputs before the kernels write them

import math
from typing import Callable, Optional

import pytest
import torch

from mod_codegen.kernel_args import BlockSparseTensors
from mod_codegen.trace import trace_mask_mod, trace_score_mod

import fallback_triton

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}


# --------------------------------------------------------------------------- mods

def causal(b, h, q, k):
    return q >= k


def sliding_window(window: int) -> Callable:
    def sliding_window_mask(b, h, q, k):
        return (q >= k) & (q - k < window)
    return sliding_window_mask


def late_start(first: int) -> Callable:
    """Causal, with the first `first` query rows masked out entirely."""
    def late_start_mask(b, h, q, k):
        return (q >= k) & (q >= first)
    return late_start_mask


def document(doc_ids: torch.Tensor) -> Callable:
    """doc_ids (B, S): causal within a document."""
    def document_mask(b, h, q, k):
        return (doc_ids[b, q] == doc_ids[b, k]) & (q >= k)
    return document_mask


def prefix_lm(prefix: int) -> Callable:
    def prefix_lm_mask(b, h, q, k):
        return (k < prefix) | (q >= k)
    return prefix_lm_mask


def alibi(slopes: torch.Tensor) -> Callable:
    def alibi_bias(score, b, h, q, k):
        return score + slopes[h] * (k - q)
    return alibi_bias


def relative_bias(table: torch.Tensor, seq_k: int) -> Callable:
    """table (H, Sq + Skv - 1): a learned bias per head and offset q - k."""
    def relative_position_bias(score, b, h, q, k):
        return score + table[h, q - k + seq_k - 1]
    return relative_position_bias


def softcap(cap: float) -> Callable:
    def tanh_softcap(score, b, h, q, k):
        return torch.tanh(score / cap) * cap
    return tanh_softcap


# --------------------------------------------------------------------------- helpers

def block_sparse_from_mask(mask_fn: Optional[Callable], B: int, H: int, Sq: int, Skv: int,
                           block_q: int, block_kv: int, with_q_lists: bool = True,
                           batch_dep: bool = False, head_dep: bool = False, demote: float = 0.0) -> BlockSparseTensors:
    """Evaluate the mask densely and classify (block_q x block_kv) blocks: empty,
    partial or full (positions past the lengths do not count). `demote` moves that
    fraction of full blocks to the partial lists (always valid: a partial block only
    gets the mask applied), so both lists of a row are in use."""
    nqb, nkb = math.ceil(Sq / block_q), math.ceil(Skv / block_kv)
    Bm, Hm = (B if batch_dep else 1), (H if head_dep else 1)
    b = torch.arange(Bm, device=DEVICE)[:, None, None, None]
    h = torch.arange(Hm, device=DEVICE)[None, :, None, None]
    qi = torch.arange(nqb * block_q, device=DEVICE)[None, None, :, None]
    ki = torch.arange(nkb * block_kv, device=DEVICE)[None, None, None, :]
    inside = (qi < Sq) & (ki < Skv)
    if mask_fn is None:
        dense = inside.expand(Bm, Hm, -1, -1)
    else:
        dense = mask_fn(b, h, qi.clamp(max=Sq - 1), ki.clamp(max=Skv - 1)).expand(Bm, Hm, -1, -1) & inside
    blocks = dense.reshape(Bm, Hm, nqb, block_q, nkb, block_kv)
    inside_b = inside.expand(Bm, Hm, -1, -1).reshape(Bm, Hm, nqb, block_q, nkb, block_kv)
    any_ = blocks.any(5).any(3)
    all_ = (blocks | ~inside_b).all(5).all(3)
    full = any_ & all_ if mask_fn is not None else any_
    if demote:
        full = full & (torch.rand(full.shape, device=full.device) >= demote)
    partial = any_ & ~full

    def lists(sel: torch.Tensor):
        num = sel.sum(-1).to(torch.int32)
        # a random order inside each list: the kernels must not depend on it
        keys = torch.rand(sel.shape, device=sel.device) + (~sel).float() * 2
        idx = torch.argsort(keys, dim=-1).to(torch.int32)
        return num.to(DEVICE), idx.to(DEVICE)

    kv_num, kv_idx = lists(partial)
    f_num, f_idx = lists(full)
    q_num = q_idx = fq_num = fq_idx = None
    if with_q_lists:
        q_num, q_idx = lists(partial.transpose(-1, -2))
        fq_num, fq_idx = lists(full.transpose(-1, -2))
    has_full = bool(full.any())
    return BlockSparseTensors(kv_num, kv_idx, f_num if has_full else None, f_idx if has_full else None,
                              q_num, q_idx, fq_num if has_full else None, fq_idx if has_full else None,
                              block_q, block_kv)


def reference(q, k, v, scale, score_fn, mask_fn):
    """float64 dense attention from the Python mods: (out, lse, max_scores)."""
    B, Hq, Sq, _ = q.shape
    Hkv, Skv = k.shape[1], k.shape[2]
    kk = k.repeat_interleave(Hq // Hkv, dim=1)
    vv = v.repeat_interleave(Hq // Hkv, dim=1)
    s = q @ kk.transpose(-1, -2) * scale
    b = torch.arange(B, device=q.device)[:, None, None, None]
    h = torch.arange(Hq, device=q.device)[None, :, None, None]
    qi = torch.arange(Sq, device=q.device)[None, None, :, None]
    ki = torch.arange(Skv, device=q.device)[None, None, None, :]
    if score_fn is not None:  # a mod may ignore the score: broadcast it back to the score's shape
        s = torch.broadcast_to(score_fn(s, b, h, qi, ki), s.shape).to(s.dtype)
    if mask_fn is not None:
        s = torch.where(mask_fn(b, h, qi, ki), s, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m).detach()
    e = torch.exp(s - m)
    l = e.sum(-1, keepdim=True)
    out = (e / torch.where(l == 0, torch.ones_like(l), l)) @ vv
    lse = (torch.log(l) + m).squeeze(-1)
    return out, lse, s.amax(-1)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double().cpu(), ref.double().cpu()
    assert not torch.isnan(x).any(), "NaN in kernel output (unwritten or invalid)"
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(x), finite), "infinities differ from the reference"
    x, ref = x[finite], ref[finite]
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def run_case(*, B=1, Hq=2, Hkv=None, Sq=37, Skv=37, D=16, DV=None, dtype=torch.float32,
             block=(32, 32), mask=None, score=None, score_ref=None, buffers=(), backward=True,
             with_q_lists=True, batch_dep=False, head_dep=False, max_scores=True, demote=0.0, dense=False):
    """Compare forward (and backward) with the float64 reference. `score(bufs)` and
    `score_ref(bufs64)` build the score_mod from its captured float buffers."""
    seed = torch.randint(0, 2**31, ()).item()
    torch.manual_seed(seed)
    Hkv = Hkv or Hq
    DV = DV or D
    tol = TOL[dtype]
    try:
        q = torch.randn(B, Hq, Sq, D, device=DEVICE, dtype=dtype)
        k = torch.randn(B, Hkv, Skv, D, device=DEVICE, dtype=dtype)
        v = torch.randn(B, Hkv, Skv, DV, device=DEVICE, dtype=dtype)
        dout = torch.randn(B, Hq, Sq, DV, device=DEVICE, dtype=dtype)
        scale = D ** -0.5
        bufs = [b.to(DEVICE) for b in buffers]
        score_fn = score(*bufs) if score is not None else None
        bs = block_sparse_from_mask(mask, B, Hq, Sq, Skv, *block, with_q_lists=with_q_lists,
                                    batch_dep=batch_dep, head_dep=head_dep, demote=demote)
        traced_s = trace_score_mod(score_fn) if score_fn is not None else None
        traced_m = trace_mask_mod(mask) if mask is not None else None
        out, lse, mx = fallback_triton.attention_forward(
            q, k, v, scale=scale, block_sparse=bs, score_mod=traced_s, mask_mod=traced_m,
            return_max_scores=max_scores, dense=dense)

        q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
        bufs64 = [b.detach().double().requires_grad_() for b in bufs]
        ref_score = (score_ref or score)(*bufs64) if score is not None else None
        r_out, r_lse, r_max = reference(q64, k64, v64, scale, ref_score, mask)
        assert out.dtype == dtype and out.shape == (B, Hq, Sq, DV)
        assert rel_err(out, r_out) < tol, f"out {rel_err(out, r_out)}"
        assert rel_err(lse, r_lse) < tol, f"lse {rel_err(lse, r_lse)}"
        if max_scores:
            assert rel_err(mx, r_max) < tol, f"max_scores {rel_err(mx, r_max)}"
        if not backward:
            return
        dq, dk, dv, dbufs = fallback_triton.attention_backward(
            q, k, v, out, lse, dout, scale=scale, block_sparse=bs, score_mod=traced_s, mask_mod=traced_m)
        grads = torch.autograd.grad(r_out, [q64, k64, v64] + bufs64, dout.double(), allow_unused=True)
        for name, got, want in zip(("dq", "dk", "dv"), (dq, dk, dv), grads[:3]):
            if want is None:  # the output does not depend on it (a score_mod that ignores the score)
                want = torch.zeros_like(got, dtype=torch.float64)
            assert got.shape == want.shape and got.dtype == dtype
            assert rel_err(got, want) < tol, f"{name} {rel_err(got, want)}"
        assert len(dbufs) == (len(traced_s.buffers) if traced_s else 0)
        for j, traced_buf in enumerate(traced_s.buffers if traced_s else []):
            i = next(i for i, b in enumerate(bufs) if b is traced_buf)  # trace order = first use
            want = grads[3 + i]
            assert dbufs[j] is not None and dbufs[j].shape == want.shape
            assert rel_err(dbufs[j], want) < tol * 10, f"dbuf{i} {rel_err(dbufs[j], want)}"
    except AssertionError as e:
        raise AssertionError(f"seed {seed}: {e}") from e


# --------------------------------------------------------------------------- CPU (interpreter) tests

def test_noop_fp32_odd_length():
    run_case(Sq=37, Skv=45, D=16)


def test_noop_mixed_partial_and_full_lists():
    # no mask_mod: the kernels walk both lists in one loop (Note [merged lists])
    run_case(Sq=90, Skv=75, D=16, demote=0.5)


def test_tiny_and_odd_head_dims():
    run_case(Sq=67, Skv=30, D=8, DV=24, mask=causal)


def test_causal_qk_dim_differs_from_v_dim_rect_blocks():
    run_case(Sq=70, Skv=70, D=32, DV=16, block=(32, 64), mask=causal)


def test_sliding_window_gqa():
    run_case(Hq=4, Hkv=2, Sq=90, Skv=77, D=32, mask=sliding_window(20), block=(16, 32), demote=0.5)


def test_document_mask_per_batch_lists():
    doc = torch.tensor([[0] * 20 + [1] * 35 + [2] * 41, [0] * 70 + [1] * 26], device=DEVICE)
    run_case(B=2, Hq=1, Sq=96, Skv=96, mask=document(doc), batch_dep=True, block=(16, 16))


def test_fully_masked_rows_give_zero_and_no_nan():
    run_case(Sq=80, Skv=80, mask=late_start(19), block=(16, 16), with_q_lists=False)


def test_alibi_causal_slope_gradients():
    slopes = torch.rand(3) * 0.5
    run_case(Hq=3, Sq=83, Skv=83, mask=causal, score=alibi, buffers=(slopes,), head_dep=True)


def test_relative_bias_table_gradients_mqa():
    Sq = Skv = 71
    table = torch.randn(2, Sq + Skv - 1)
    run_case(Hq=2, Hkv=1, Sq=Sq, Skv=Skv, D=16,
             score=lambda t: relative_bias(t, Skv), buffers=(table,), mask=prefix_lm(10))


def test_q_bias_kv_bias_and_0d_temperature_gradients():
    # offsets depending on q only, on (h, kv) only, and on nothing (a 0-d tensor);
    # a q-only additive bias would have a zero gradient (softmax is shift-invariant
    # per row), so the q-only buffer scales the score instead
    def biases(qs, kb, temp):
        def q_scale_kv_bias_temperature(score, b, h, q, k):
            return score * temp * qs[q] + kb[h, k]
        return q_scale_kv_bias_temperature

    run_case(Hq=2, Sq=70, Skv=50, D=16, mask=sliding_window(30), score=biases,
             buffers=(torch.rand(70) + 0.5, torch.randn(2, 50), torch.tensor(0.7)))


def test_buffer_gradient_opt_out():
    slopes = torch.rand(2, device=DEVICE)
    q, k, v = (torch.randn(1, 2, 40, 16, device=DEVICE) for _ in range(3))
    bs = block_sparse_from_mask(causal, 1, 2, 40, 40, 16, 16)
    sm, mm = trace_score_mod(alibi(slopes)), trace_mask_mod(causal)
    out, lse, _ = fallback_triton.attention_forward(q, k, v, scale=0.25, block_sparse=bs, score_mod=sm, mask_mod=mm)
    *_, dbufs = fallback_triton.attention_backward(q, k, v, out, lse, out, scale=0.25, block_sparse=bs,
                                                   score_mod=sm, mask_mod=mm, buffer_requires_grad=[False])
    assert dbufs == [None]


@pytest.mark.parametrize("ignore_score", [
    lambda: (lambda score, b, h, q, k: h * 0.5),  # per-head scalar
    lambda: (lambda score, b, h, q, k: 2.0 + 0 * score),  # folds to a constant
])
def test_score_mod_that_ignores_the_score(ignore_score):
    # uniform attention per row; the emitter must broadcast the score to a full tile
    run_case(Sq=40, Skv=33, D=16, mask=causal, score=ignore_score, block=(16, 16))


def test_softcap_causal_head_dim_64():
    run_case(Sq=65, Skv=65, D=64, mask=causal, score=lambda: softcap(30.0), block=(16, 16))


@pytest.mark.parametrize("dtype", [
    pytest.param(torch.bfloat16, marks=pytest.mark.skipif(not GPU, reason="interpreter bf16 dots are wrong")),
    torch.float16,
])
def test_half_precision(dtype):
    run_case(Sq=75, Skv=52, D=32, dtype=dtype, mask=causal)


@pytest.mark.parametrize("Sq", [1, 5])
def test_decode_split_kv(Sq):
    # Sq <= 64 takes the split-KV path; 200 keys make several slices in the interpreter
    run_case(Hq=2, Hkv=1, Sq=Sq, Skv=200, D=16, block=(16, 32), backward=Sq > 1, demote=0.5)


def test_decode_with_mods():
    slopes = torch.rand(2)
    run_case(Sq=3, Skv=150, D=16, block=(16, 16), score=alibi, buffers=(slopes,), mask=prefix_lm(40),
             backward=False)


@pytest.mark.parametrize("Sq,Skv,Hkv", [(37, 45, 2), (70, 33, 1), (3, 150, 1)],
                         ids=["odd", "gqa", "decode-split-kv"])
def test_dense_walk(Sq, Skv, Hkv):
    """Note [dense walk]: every tile visited without reading the lists (here emptied, so a
    list walk would return zeros), forward and backward; tails masked; GQA; a score_mod;
    split-KV decoding."""
    seed = torch.randint(0, 2**31, ()).item()
    torch.manual_seed(seed)
    q = torch.randn(1, 2, Sq, 16, device=DEVICE)
    k, v = (torch.randn(1, Hkv, Skv, 16, device=DEVICE) for _ in range(2))
    slopes = torch.rand(2, device=DEVICE)
    bs = block_sparse_from_mask(None, 1, 2, Sq, Skv, 16, 16)
    bs = bs._replace(**{f: torch.zeros_like(getattr(bs, f)) for f in (
        "kv_num_blocks", "full_kv_num_blocks", "q_num_blocks", "full_q_num_blocks")})
    score = trace_score_mod(alibi(slopes))
    out, lse, _ = fallback_triton.attention_forward(q, k, v, scale=0.25, block_sparse=bs, score_mod=score,
                                                    mask_mod=None, dense=True)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    r_out, r_lse, _ = reference(q64, k64, v64, 0.25, alibi(slopes.double()), None)
    assert rel_err(out, r_out) < 1e-4 and rel_err(lse, r_lse) < 1e-4, f"seed {seed}"
    dout = torch.randn_like(out)
    dq, dk, dv, _ = fallback_triton.attention_backward(q, k, v, out, lse, dout, scale=0.25, block_sparse=bs,
                                                       score_mod=score, mask_mod=None, dense=True)
    want = torch.autograd.grad(r_out, (q64, k64, v64), dout.double())
    for name, got, w in zip(("dq", "dk", "dv"), (dq, dk, dv), want):
        assert rel_err(got, w) < 1e-4, f"seed {seed}: {name} {rel_err(got, w)}"


def test_dense_walk_refuses_a_mask_mod():
    q = torch.randn(1, 1, 32, 16, device=DEVICE)
    bs = block_sparse_from_mask(None, 1, 1, 32, 32, 16, 16)
    with pytest.raises(ValueError, match="dense"):
        fallback_triton.attention_forward(q, q, q, scale=0.25, block_sparse=bs, score_mod=None,
                                          mask_mod=trace_mask_mod(causal), dense=True)


def test_can_implement_reasons():
    q = torch.randn(1, 3, 4, 16, device=DEVICE)
    k = torch.randn(1, 2, 4, 16, device=DEVICE)
    ok, why = fallback_triton.can_implement(q, k, k)
    assert not ok and "multiple" in why
    ok, why = fallback_triton.can_implement(q.to(torch.float64), k, k)
    assert not ok
    big = torch.randn(1, 1, 4, 512, device=DEVICE)
    assert not fallback_triton.can_implement(big, big, big)[0]
    ok, _ = fallback_triton.can_implement(q[:, :2], k, k)
    assert ok


# --------------------------------------------------------------------------- GPU tests (real sizes)

gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")


@gpu
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("S", [1024, 2000])
def test_gpu_causal_bf16(D, S):
    run_case(B=2, Hq=8, Hkv=8, Sq=S, Skv=S, D=D, dtype=torch.bfloat16, mask=causal, block=(128, 128))


@gpu
def test_gpu_alibi_gqa_fp16():
    slopes = torch.rand(8) * 0.1
    run_case(B=2, Hq=8, Hkv=2, Sq=1024, Skv=1024, D=128, dtype=torch.float16, mask=causal,
             score=alibi, buffers=(slopes,), block=(128, 128))


@gpu
def test_gpu_document_softcap_bf16():
    doc = torch.cat([torch.full((256,), i, device=DEVICE) for i in range(8)])[None].expand(2, -1).contiguous()
    run_case(B=2, Hq=8, Sq=2048, Skv=2048, D=64, dtype=torch.bfloat16, mask=document(doc),
             score=lambda: softcap(30.0), block=(128, 128))


@gpu
def test_gpu_relative_bias_fp32():
    S = 1024
    table = torch.randn(8, 2 * S - 1) * 0.1
    run_case(B=2, Hq=8, Sq=S, Skv=S, D=64, dtype=torch.float32, mask=sliding_window(256),
             score=lambda t: relative_bias(t, S), buffers=(table,), block=(128, 128))


@gpu
@pytest.mark.parametrize("D,DV", [(256, 256), (96, 64)])
def test_gpu_head_dims_fp16(D, DV):
    run_case(B=2, Hq=4, Sq=1000, Skv=1000, D=D, DV=DV, dtype=torch.float16, mask=causal,
             score=lambda: softcap(20.0), block=(128, 128))


@gpu
def test_gpu_decode_bf16():
    run_case(B=2, Hq=8, Hkv=2, Sq=7, Skv=8192, D=128, dtype=torch.bfloat16, block=(128, 128), backward=False)
