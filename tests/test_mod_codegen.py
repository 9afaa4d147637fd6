"""mod_codegen: the IR evaluator, the Triton emitter (interpreter) and the
gradient IR each agree with the original Python mod; unsupported constructs
fail with the promised message; re-created closures share a cache key."""
import math

import pytest
import torch

from mod_codegen import UnsupportedModError, evaluate, trace_mask_mod, trace_score_mod
from mod_codegen.grad import score_mod_grad

B, H, Q, KV = 2, 3, 9, 11


def _captured():
    g = torch.Generator().manual_seed(1234)  # captured tables; inputs below are fresh per test
    return {
        "doc": torch.randint(0, 3, (max(Q, KV),), generator=g).sort().values,
        "slopes": torch.rand(H, generator=g, dtype=torch.float64),
        "bias": torch.randn(H, Q + KV, generator=g, dtype=torch.float64),
        "table": torch.randn(B, Q, KV, generator=g, dtype=torch.float64),
        "flags": torch.rand(KV, generator=g) > 0.5,
        "scale0d": torch.tensor(0.7, dtype=torch.float64),
    }


CAP = _captured()


def _helper(x):  # mods may call other Python functions
    return x * 0.5 + 1


SCORE_MODS = {
    "add_sub_mul": lambda s, b, h, q, kv: s * 2 - (q - kv) + b * h,
    "div": lambda s, b, h, q, kv: s / 3.0 + q / (kv + 1),
    "floordiv_mod": lambda s, b, h, q, kv: s + (q - kv) // 3 + (q - 2 * kv) % 4 + (q * 7) // -2,
    "neg_abs": lambda s, b, h, q, kv: -abs(s) + abs(q - kv),
    "where_cmp": lambda s, b, h, q, kv: torch.where((q > kv) | (q == kv - 1), s, s * 0.5),
    "min_max_clamp": lambda s, b, h, q, kv: torch.minimum(s, torch.maximum(s * 0.3, torch.clamp(s, -0.5, 0.8))),
    "exp_log": lambda s, b, h, q, kv: torch.log(torch.exp(s) + 1) + torch.log2(s.abs() + 1) + torch.exp2(-s.abs()),
    "sqrt_rsqrt": lambda s, b, h, q, kv: torch.sqrt(s.abs() + 1) + torch.rsqrt(s * s + 1),
    "tanh_softcap": lambda s, b, h, q, kv: 5.0 * torch.tanh(s / 5.0),
    "sigmoid_sin_cos": lambda s, b, h, q, kv: torch.sigmoid(s) + torch.sin(s) * torch.cos(s + q),
    "erf_floor": lambda s, b, h, q, kv: torch.erf(s) + torch.floor(s * 3),
    "casts": lambda s, b, h, q, kv: s + (s * 4).int().float() + (q - kv).float() * 0.1 + (s > 0).float(),
    "pow": lambda s, b, h, q, kv: s**2 + (s * s + 1) ** 0.5,
    "alibi": lambda s, b, h, q, kv: s + CAP["slopes"][h] * (kv - q),
    "rel_bias": lambda s, b, h, q, kv: s + CAP["bias"][h, q - kv + KV],
    "table": lambda s, b, h, q, kv: s + CAP["table"][b, q, kv],
    "zero_dim_tensor": lambda s, b, h, q, kv: s * CAP["scale0d"],
    "nested_call": lambda s, b, h, q, kv: _helper(s) + _helper(q.float()),
    "inf_const": lambda s, b, h, q, kv: torch.where(q >= kv, s, -math.inf),
}

MASK_MODS = {
    "causal": lambda b, h, q, kv: q >= kv,
    "doc": lambda b, h, q, kv: CAP["doc"][q] == CAP["doc"][kv],
    "bool_ops": lambda b, h, q, kv: ((q > kv) ^ (kv % 2 == 0)) & ~(q == 3) | (b == h),
    "flags": lambda b, h, q, kv: CAP["flags"][kv] | (q < 2),
    "logical": lambda b, h, q, kv: torch.logical_and(q >= kv, torch.logical_not(kv == 0)),
}


def _grids():
    return {
        "b": torch.arange(B).view(-1, 1, 1, 1), "h": torch.arange(H).view(1, -1, 1, 1),
        "q_idx": torch.arange(Q).view(1, 1, -1, 1), "kv_idx": torch.arange(KV).view(1, 1, 1, -1),
    }


def _python_value(mod, kind, score=None):
    g = _grids()
    if kind == "score_mod":
        return mod(score, g["b"], g["h"], g["q_idx"], g["kv_idx"])
    return mod(g["b"], g["h"], g["q_idx"], g["kv_idx"])


@pytest.mark.parametrize("name", sorted(SCORE_MODS))
def test_score_mod_ir_matches_python(name, seed):
    mod = SCORE_MODS[name]
    score = torch.randn(B, H, Q, KV, dtype=torch.float64) * 3
    traced = trace_score_mod(mod)
    (got,) = evaluate(traced.graph, {"score": score, **_grids()}, traced.buffers, traced.scalars, torch.float64)
    ref = _python_value(mod, "score_mod", score).double()
    # .float() in a Python mod rounds to float32; the IR computes "f32" in float64 here
    torch.testing.assert_close(got.expand_as(ref), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MASK_MODS))
def test_mask_mod_ir_matches_python(name, seed):
    mod = MASK_MODS[name]
    traced = trace_mask_mod(mod)
    (got,) = evaluate(traced.graph, _grids(), traced.buffers, traced.scalars)
    ref = _python_value(mod, "mask_mod")
    assert got.dtype == torch.bool
    assert torch.equal(got.expand(B, H, Q, KV), ref.expand(B, H, Q, KV))


def test_and_or_masks_and_standard_variants_trace():
    from flex_fa4 import and_masks, or_masks
    from flex_fa4.mods import causal_mask, generate_doc_mask, generate_prefix_lm_mask, generate_sliding_window

    mods = [
        and_masks(causal_mask, generate_sliding_window(4)),
        or_masks(generate_prefix_lm_mask(3), MASK_MODS["doc"]),
        generate_doc_mask(CAP["doc"]),
    ]
    for mod in mods:
        traced = trace_mask_mod(mod)
        (got,) = evaluate(traced.graph, _grids(), traced.buffers, traced.scalars)
        assert torch.equal(got.expand(B, H, Q, KV), _python_value(mod, "mask_mod").expand(B, H, Q, KV))


# ---- Triton emitter, run by the interpreter inside a small test kernel

def _triton_eval(graph, buffers, scalars, score=None):
    import triton
    import triton.language as tl

    from mod_codegen.emit_triton import mod_arguments, triton_function

    @triton.jit
    def tile_kernel(S, O, b, h, M: tl.constexpr, N: tl.constexpr, bufs, sizes, strides, scal, FN: tl.constexpr,
                    IS_SCORE: tl.constexpr):
        qi = tl.arange(0, M)[:, None]
        ki = tl.arange(0, N)[None, :]
        if IS_SCORE:
            s = tl.load(S + qi * N + ki)
            r = FN(s, b, h, qi, ki, bufs, sizes, strides, scal)
        else:
            r = FN(b, h, qi, ki, bufs, sizes, strides, scal).to(tl.float32)
        tl.store(O + qi * N + ki, r)

    fn = triton_function(graph)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # the interpreter runs CPU tensors
    # buffers in float32 as a kernel would see them
    bufs = [(t.float() if t.is_floating_point() else t).to(dev) for t in buffers]
    out = torch.full((B, H, 16, 16), float("nan"))
    for bi in range(B):
        for hi in range(H):
            s = torch.zeros(16, 16) if score is None else torch.nn.functional.pad(score[bi, hi].float(), (0, 16 - KV, 0, 16 - Q))
            s = s.to(dev)
            o = torch.full((16, 16), float("nan"), device=dev)
            tile_kernel[(1,)](s, o, bi, hi, 16, 16, *mod_arguments(graph, bufs, scalars), FN=fn,
                              IS_SCORE=score is not None)
            out[bi, hi] = o.cpu()
    return out[:, :, :Q, :KV]


@pytest.mark.parametrize("name", sorted(SCORE_MODS))
def test_triton_score_mod_matches_python(name, seed):
    mod = SCORE_MODS[name]
    score = torch.randn(B, H, Q, KV, dtype=torch.float64) * 3
    traced = trace_score_mod(mod)
    got = _triton_eval(traced.graph, traced.buffers, traced.scalars, score)
    ref = _python_value(mod, "score_mod", score).double().expand(B, H, Q, KV)
    if name == "erf_floor":  # floor(s*3) can flip where fp32 and fp64 round s*3 differently
        ref = ref.where((got.double() - ref).abs() < 0.5, got.double())
    torch.testing.assert_close(got.double(), ref, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name", sorted(MASK_MODS))
def test_triton_mask_mod_matches_python(name, seed):
    mod = MASK_MODS[name]
    traced = trace_mask_mod(mod)
    got = _triton_eval(traced.graph, traced.buffers, traced.scalars)
    ref = _python_value(mod, "mask_mod").expand(B, H, Q, KV)
    assert torch.equal(got.bool(), ref)


# ---- gradients

GRAD_MODS = ["add_sub_mul", "div", "neg_abs", "where_cmp", "min_max_clamp", "exp_log", "sqrt_rsqrt", "tanh_softcap",
             "sigmoid_sin_cos", "erf_floor", "pow", "alibi", "rel_bias", "table", "zero_dim_tensor", "nested_call"]


@pytest.mark.parametrize("name", GRAD_MODS)
def test_gradient_ir_matches_autograd(name, seed):
    mod = SCORE_MODS[name]
    score = (torch.randn(B, H, Q, KV, dtype=torch.float64) * 3).requires_grad_()
    upstream = torch.randn(B, H, Q, KV, dtype=torch.float64)
    traced = trace_score_mod(mod)
    leaves = [t.detach().clone().requires_grad_() if t.is_floating_point() else t for t in traced.buffers]
    swapped = dict(zip(map(id, traced.buffers), leaves))
    # autograd on the Python mod, with the captured tensors swapped for leaves
    saved = dict(CAP)
    for k_, t in CAP.items():
        CAP[k_] = swapped.get(id(t), t)
    try:
        ref = _python_value(mod, "score_mod", score).expand(B, H, Q, KV)
        wrt = [score] + [t for t in leaves if t.requires_grad]
        ref_grads = torch.autograd.grad(ref, wrt, upstream, allow_unused=True)
    finally:
        CAP.update(saved)
    grad = score_mod_grad(traced.graph)
    outs = evaluate(grad.graph, {"score": score.detach(), "grad": upstream, **_grids()}, traced.buffers,
                    traced.scalars, torch.float64)
    torch.testing.assert_close(outs[0].expand(B, H, Q, KV), ref_grads[0], rtol=1e-9, atol=1e-9)
    float_bufs = [i for i, t in enumerate(leaves) if t.requires_grad]
    for pos, buf in enumerate(float_bufs):
        acc = torch.zeros(traced.buffers[buf].numel(), dtype=torch.float64)
        for j, target in enumerate(grad.targets):
            if target == buf:
                off, val = outs[1 + 2 * j], outs[2 + 2 * j]
                off, val = torch.broadcast_tensors(off, val)
                acc.index_add_(0, off.reshape(-1).long(), val.reshape(-1))
        expect = ref_grads[1 + pos]
        expect = torch.zeros_like(acc) if expect is None else expect.reshape(-1)
        torch.testing.assert_close(acc, expect, rtol=1e-9, atol=1e-9)


# ---- errors


def test_python_control_flow_is_rejected_with_source_line():
    def branchy(score, b, h, q_idx, kv_idx):
        if q_idx > kv_idx:
            return score
        return score * 2

    with pytest.raises(UnsupportedModError) as e:
        trace_score_mod(branchy)
    msg = str(e.value)
    assert "branchy" in msg and "test_mod_codegen.py" in msg and "if q_idx > kv_idx" in msg and "torch.where" in msg


@pytest.mark.parametrize("bad, what", [
    (lambda s, b, h, q, kv: s + math.exp(s), "Python float"),
    (lambda s, b, h, q, kv: s**3.3, "** 3.3"),
    (lambda s, b, h, q, kv: s + CAP["bias"][h][q:], "Python int"),
    (lambda s, b, h, q, kv: s + CAP["bias"][h], "index every dimension"),
    (lambda s, b, h, q, kv: s + CAP["bias"], "index it"),
    (lambda s, b, h, q, kv: torch.cumsum(s, 0), "cumsum"),
    (lambda s, b, h, q, kv: s.softmax(-1), ".softmax()"),
    (lambda s, b, h, q, kv: s + CAP["slopes"][s], "floating-point tensor index"),
])
def test_unsupported_operations_are_named(bad, what):
    with pytest.raises(UnsupportedModError) as e:
        trace_score_mod(bad)
    assert what in str(e.value) and "test_mod_codegen.py" in str(e.value)


def test_mask_mod_must_return_bool():
    with pytest.raises(UnsupportedModError, match="must return a boolean"):
        trace_mask_mod(lambda b, h, q, kv: q - kv)


def test_non_callable_and_wrong_arity():
    with pytest.raises(TypeError, match="callable"):
        trace_score_mod(3)
    with pytest.raises(TypeError, match="expected 5"):
        trace_score_mod(lambda s, b, h: s)


# ---- caching


def test_recreated_closures_share_the_key_and_the_compiled_function(seed):
    from mod_codegen import emit_triton

    def make(doc_ids, window):
        def mask(b, h, q_idx, kv_idx):
            return (doc_ids[q_idx] == doc_ids[kv_idx]) & (q_idx - kv_idx < window)
        return mask

    first = trace_mask_mod(make(torch.randint(0, 4, (64,)), 8))
    second = trace_mask_mod(make(torch.randint(0, 9, (128,), dtype=torch.int64), 16))
    assert first.cache_key == second.cache_key
    assert first.scalars == [8] and second.scalars == [16]  # the window became a runtime scalar
    assert first.buffers[0] is not second.buffers[0]
    emit_triton._FUNCTIONS.pop(first.cache_key, None)
    before = len(emit_triton._FUNCTIONS)
    f1 = emit_triton.triton_function(first.graph)
    f2 = emit_triton.triton_function(second.graph)
    assert f1 is f2 and len(emit_triton._FUNCTIONS) == before + 1  # one compilation for both
    # a different captured dtype is a different kernel
    third = trace_mask_mod(make(torch.randint(0, 4, (64,), dtype=torch.int32), 8))
    assert third.cache_key != first.cache_key


def test_scalars_inside_composed_mods_stay_runtime_scalars():
    from flex_fa4 import and_masks
    from flex_fa4.mods import causal_mask, generate_prefix_lm_mask, generate_sliding_window

    a = trace_mask_mod(and_masks(causal_mask, generate_sliding_window(64), generate_prefix_lm_mask(5)))
    b = trace_mask_mod(and_masks(causal_mask, generate_sliding_window(1024), generate_prefix_lm_mask(7)))
    assert a.cache_key == b.cache_key and a.scalars == [64, 5] and b.scalars == [1024, 7]


def test_scalar_in_python_control_flow_falls_back_to_a_constant():
    def make(window):
        def mask(b, h, q_idx, kv_idx):
            if window > 0:  # control flow on the captured scalar
                return q_idx - kv_idx < window
            return q_idx >= kv_idx
        return mask

    t = trace_mask_mod(make(4))
    assert t.scalars == [] and "4" in str(t.graph)


def test_graph_is_printable_and_hashable():
    t = trace_score_mod(SCORE_MODS["alibi"])
    text = str(t.graph)
    assert "load" in text and "buf0: float64[1d]" in text
    assert hash(t.graph) == hash(trace_score_mod(SCORE_MODS["alibi"]).graph)


_GLOBAL_BIAS = torch.zeros(4)


def test_trace_cache_reuses_and_invalidates():
    from mod_codegen import trace_cached

    global _GLOBAL_BIAS

    def mod(score, b, h, q_idx, kv_idx):
        return score + _GLOBAL_BIAS[h]

    first = trace_cached(mod, "score_mod")
    assert trace_cached(mod, "score_mod") is first
    _GLOBAL_BIAS = torch.ones(4)  # rebinding the captured global must be seen
    second = trace_cached(mod, "score_mod")
    assert second is not first and second.buffers[0] is _GLOBAL_BIAS

    def make(cap):
        def softcap(score, b, h, q_idx, kv_idx):
            return cap * torch.tanh(score / cap)
        return softcap

    f = make(2.0)
    t1 = trace_cached(f, "score_mod")
    f.__closure__[0].cell_contents = 3.0
    t2 = trace_cached(f, "score_mod")
    assert t1.scalars == [2.0] and t2.scalars == [3.0] and t1.cache_key == t2.cache_key


def test_trace_cache_sees_tensors_behind_captured_objects():
    from types import SimpleNamespace

    from mod_codegen import trace_cached

    cfg = SimpleNamespace(bias=torch.zeros(4))

    def mod(score, b, h, q_idx, kv_idx):
        return score + cfg.bias[h]

    first = trace_cached(mod, "score_mod")
    cfg.bias = torch.ones(4)
    assert trace_cached(mod, "score_mod").buffers[0] is cfg.bias and first.buffers[0] is not cfg.bias
