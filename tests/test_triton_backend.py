"""flex_attention(backend="triton") end to end through the flex_fa4 front end:
autograd, captured-buffer gradients, GQA, aux outputs. On CPU the kernels run
in Triton's interpreter (float32, small shapes)."""
import os

import pytest
import torch

from flex_fa4 import AuxRequest, create_block_mask, flex_attention
from flex_fa4.mods import generate_alibi_bias, generate_doc_mask, generate_sliding_window

from dense_reference import dense_attention, rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs a GPU or TRITON_INTERPRET=1")


def test_triton_backend_forward_backward_with_buffer_grads(seed):
    B, Hq, Hkv, Q, KV, D = 1, 4, 2, 70, 90, 32
    q = torch.randn(B, Hq, Q, D, device=DEVICE, requires_grad=True)
    k = torch.randn(B, Hkv, KV, D, device=DEVICE, requires_grad=True)
    v = torch.randn(B, Hkv, KV, D, device=DEVICE, requires_grad=True)
    slopes = torch.rand(Hq, device=DEVICE, requires_grad=True)
    score_mod = generate_alibi_bias(slopes=slopes)
    mask_mod = generate_sliding_window(40)
    bm = create_block_mask(mask_mod, None, None, Q, KV, device=DEVICE, BLOCK_SIZE=32)
    out, aux = flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, enable_gqa=True,
                              return_aux=AuxRequest(lse=True, max_scores=True), backend="triton")
    ref, ref_lse, ref_max = dense_attention(q, k, v, score_mod, mask_mod)
    assert rel_err(out, ref) < 1e-4 and rel_err(aux.lse, ref_lse) < 1e-4 and rel_err(aux.max_scores, ref_max) < 1e-4
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v, slopes), dout)
    want = torch.autograd.grad(ref, (q, k, v, slopes), dout.double())
    for name, g, w in zip(("dq", "dk", "dv", "dslopes"), got, want):
        assert rel_err(g, w) < 1e-3, f"{name} seed={seed}"


def test_triton_backend_document_mask(seed):
    Q = 100
    doc = torch.repeat_interleave(torch.arange(3), torch.tensor([30, 45, 25])).to(DEVICE)
    q, k, v = (torch.randn(2, 2, Q, 16, device=DEVICE) for _ in range(3))
    mask_mod = generate_doc_mask(doc)
    out = flex_attention(q, k, v, block_mask=create_block_mask(mask_mod, None, None, Q, Q, device=DEVICE,
                                                               BLOCK_SIZE=32), backend="triton")
    assert rel_err(out, dense_attention(q, k, v, None, mask_mod)[0]) < 1e-4


def test_gradient_through_lse_is_refused_not_dropped(seed):
    q, k, v = (torch.randn(1, 1, 40, 16, device=DEVICE, requires_grad=True) for _ in range(3))
    out, lse = flex_attention(q, k, v, return_lse=True, backend="triton")
    with pytest.raises(NotImplementedError, match="through the returned LSE"):
        (out.sum() + lse.sum()).backward()
    out, lse = flex_attention(q, k, v, return_lse=True, backend="triton")
    (out.sum() + lse.detach().sum()).backward()  # a detached LSE is fine
    assert torch.isfinite(q.grad).all()


def test_broadcast_buffer_gradient_is_not_double_counted(seed):
    """A captured tensor that is an expand() view gets each alias's gradient once."""
    B, H, Q, D = 2, 2, 48, 16
    base = torch.rand(H, device=DEVICE, requires_grad=True)
    bias = base[None].expand(B, H)  # stride 0 over the batch

    def slope(score, b, h, q_idx, kv_idx):
        return score + bias[b, h] * (kv_idx - q_idx) * 0.1

    q, k, v = (torch.randn(B, H, Q, D, device=DEVICE) for _ in range(3))
    out = flex_attention(q, k, v, score_mod=slope, backend="triton")
    ref = dense_attention(q, k, v, slope)[0]
    dout = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, base, dout)
    (want,) = torch.autograd.grad(ref, base, dout.double())
    assert rel_err(got, want) < 1e-3, f"seed={seed}"


def test_in_place_change_before_backward_is_detected(seed):
    q, k, v = (torch.randn(1, 1, 32, 16, device=DEVICE, requires_grad=True) for _ in range(3))
    k2 = k * 1.0
    out = flex_attention(q, k2, v, backend="triton")
    k2.mul_(5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
