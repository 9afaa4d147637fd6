"""Every bad input gets an error that names the problem."""
import logging

import pytest
import torch

import flex_fa4
from flex_fa4 import AuxRequest, create_block_mask, explain, flex_attention
from flex_fa4.mods import causal_mask


def qkv(B=1, Hq=2, Hkv=2, Q=16, KV=16, D=8, Dv=8, dtype=torch.float32):
    return torch.randn(B, Hq, Q, D, dtype=dtype), torch.randn(B, Hkv, KV, D, dtype=dtype), torch.randn(B, Hkv, KV, Dv, dtype=dtype)


@pytest.mark.parametrize("mutate, match", [
    (lambda q, k, v: (q[0], k, v), "query must have 4 dims"),
    (lambda q, k, v: (q, k[..., 0], v), "key must have 4 dims"),
    (lambda q, k, v: (q, torch.cat([k, k]), torch.cat([v, v])), "batch sizes differ"),
    (lambda q, k, v: (q, k[..., :4], v), "head dims differ"),
    (lambda q, k, v: (q, k, v[:, :1]), "same number of heads"),
    (lambda q, k, v: (q, k, v[:, :, :5]), "same sequence length"),
    (lambda q, k, v: (q.double(), k, v), "share a dtype"),
    (lambda q, k, v: (q.int(), k.int(), v.int()), "has dtype torch.int32"),
    (lambda q, k, v: (q[:, :, :0], k, v), "empty sequence"),
    (lambda q, k, v: (q, k[:, :, :0], v[:, :, :0]), "empty sequence"),
    (lambda q, k, v: ("q", k, v), "must be a torch.Tensor"),
])
def test_bad_tensors(mutate, match):
    with pytest.raises((ValueError, TypeError), match=match):
        flex_attention(*mutate(*qkv()))


def test_device_mismatch():
    q, k, v = qkv()
    meta = torch.empty_like(k, device="meta")
    with pytest.raises(ValueError, match="one device"):
        flex_attention(q, meta, v)


def test_gqa_errors():
    q, k, v = qkv(Hq=4, Hkv=2)
    with pytest.raises(ValueError, match="enable_gqa=True"):
        flex_attention(q, k, v)
    q, k, v = qkv(Hq=3, Hkv=2)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        flex_attention(q, k, v, enable_gqa=True)


def test_block_mask_mismatches():
    q, k, v = qkv(B=2, Hq=2)
    with pytest.raises(ValueError, match="built for Q_LEN=32"):
        flex_attention(q, k, v, block_mask=create_block_mask(causal_mask, None, None, 32, 16, device="cpu"))
    with pytest.raises(ValueError, match="batch size 3"):
        flex_attention(q, k, v, block_mask=create_block_mask(causal_mask, 3, None, 16, 16, device="cpu"))
    with pytest.raises(ValueError, match="5 heads"):
        flex_attention(q, k, v, block_mask=create_block_mask(causal_mask, None, 5, 16, 16, device="cpu"))
    with pytest.raises(TypeError, match="must be a BlockMask"):
        flex_attention(q, k, v, block_mask=torch.ones(16, 16))


def test_non_callable_mods_and_non_bool_mask():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="score_mod must be callable"):
        flex_attention(q, k, v, score_mod="alibi")
    with pytest.raises(TypeError, match="mask_mod must be callable"):
        create_block_mask(None, 1, 1, 16, 16, device="cpu")
    with pytest.raises(ValueError, match="must return a boolean"):
        create_block_mask(lambda b, h, q_idx, kv_idx: q_idx + kv_idx, 1, 1, 16, 16, device="cpu")


def test_unknown_backend_and_options():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="unknown backend 'cudnn'"):
        flex_attention(q, k, v, backend="cudnn")
    with pytest.raises(ValueError, match="kernel_options\\['BACKEND'\\]"):
        flex_attention(q, k, v, kernel_options={"BACKEND": "NOPE"})
    with pytest.raises(TypeError, match="scale must be"):
        flex_attention(q, k, v, scale="0.1")
    with pytest.raises(ValueError, match="scale must be finite"):
        flex_attention(q, k, v, scale=float("nan"))
    with pytest.raises(ValueError, match="not both"):
        flex_attention(q, k, v, return_lse=True, return_aux=AuxRequest(lse=True))


def test_explicit_backend_that_cannot_serve_raises_with_reason():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="backend 'fa4' cannot serve this call: needs an NVIDIA Hopper GPU"):
        flex_attention(q, k, v, backend="fa4")
    with pytest.raises(ValueError, match="backend 'fa4'"):
        flex_attention(q, k, v, kernel_options={"BACKEND": "FLASH"})


def test_unknown_kernel_options_are_reported(caplog):
    from flex_fa4 import backends

    backends._logged.clear()
    q, k, v = qkv()
    with caplog.at_level(logging.WARNING, logger="flex_fa4"):
        flex_attention(q, k, v, kernel_options={"BLOCK_M": 64, "determinstic": True})
    assert "ignores kernel_options ['BLOCK_M', 'determinstic']" in caplog.text


def test_explain_names_the_choice_and_reasons():
    q, k, v = qkv()
    text = explain(q, k, v, backend="fa4")
    assert "no backend can serve" in text and "Hopper" in text
    assert "'reference'" in explain(q, k, v)


def test_captured_tensor_on_another_device():
    q, k, v = qkv()
    bias = torch.zeros(16, device="meta")
    with pytest.raises(ValueError, match="captures a tensor of shape \\(16,\\) on meta"):
        flex_attention(q, k, v, score_mod=lambda s, b, h, qi, ki: s + bias[qi])


def test_auto_fallback_on_gpu_is_logged(caplog, monkeypatch):
    """When auto passes over a faster backend, the reason is logged (not silent)."""
    from flex_fa4 import backends

    monkeypatch.setattr(backends.BACKENDS["fa4"], "why_not", lambda call: "pretend: no Hopper")
    monkeypatch.setattr(backends.BACKENDS["triton"], "why_not", lambda call: "pretend: no Triton")
    q, k, v = qkv()

    class FakeCuda:
        type = "cuda"

    call = flex_fa4.api._build_call(q, k, v, None, None, None, False, False, False, None)
    monkeypatch.setattr(call, "q", type("Q", (), {"device": FakeCuda()})())
    backends._logged.clear()
    with caplog.at_level(logging.INFO, logger="flex_fa4"):
        chosen = backends.select_backend(call, "auto")
    assert chosen.name == "reference"
    assert "pretend: no Hopper" in caplog.text and "pretend: no Triton" in caplog.text
    assert any(r.levelno == logging.WARNING for r in caplog.records)
