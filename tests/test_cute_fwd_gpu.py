"""Numerics of the sm90 CuTeDSL forward against a float64 reference computed straight
from the mods. Needs an H100/H200; run as a script for a summary table and timings:

    python tests/test_cute_fwd_gpu.py [--bench]
"""
from __future__ import annotations

import math
import os
import random
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dense_reference import poison_free_memory  # noqa: E402

ON_H100 = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
gpu = pytest.mark.skipif(not ON_H100, reason="needs an sm90 (H100/H200) GPU")


# ------------------------------------------------------------------ test mods
# Each test mod: (name, ModSpec-builder for the kernel, torch function for the reference).
def _mods():
    from cute_kernels.mods import CAUSAL_MASK, ModSpec

    def causal_t(b, h, q, kv):
        return q >= kv

    def tail_rows_kernel(b, h, q, kv, bufs, scalars, kv_base=None, kv_off=0):
        # rows < 64 fully masked, otherwise causal
        return (q >= 64) & (q >= kv)

    def tail_rows_t(b, h, q, kv):
        return (q >= 64) & (q >= kv)

    def empty_tiles_kernel(b, h, q, kv, bufs, scalars, kv_base=None, kv_off=0):
        # rows < 300 fully masked: the first two 128-row q-tiles visit no KV block at all
        return (q >= 300) & (q >= kv)

    def empty_tiles_t(b, h, q, kv):
        return (q >= 300) & (q >= kv)

    def head_window_kernel(b, h, q, kv, bufs, scalars, kv_base=None, kv_off=0):
        # a different window per (b, h): exercises non-broadcast BlockMask tables
        return (q >= kv) & (q - kv < 100 * (h + 1) + 50 * b)

    def head_window_t(b, h, q, kv):
        return (q >= kv) & (q - kv < 100 * (h + 1) + 50 * b)

    def batch_window_kernel(b, h, q, kv, bufs, scalars, kv_base=None, kv_off=0):
        # a window per batch, the same for every head: a (B, 1, ...) BlockMask
        return (q >= kv) & (q - kv < 100 + 150 * b)

    def batch_window_t(b, h, q, kv):
        return (q >= kv) & (q - kv < 100 + 150 * b)

    def only_head_window_kernel(b, h, q, kv, bufs, scalars, kv_base=None, kv_off=0):
        # a window per head, the same for every batch: a (1, H, ...) BlockMask
        return (q >= kv) & (q - kv < 100 * (h + 1))

    def only_head_window_t(b, h, q, kv):
        return (q >= kv) & (q - kv < 100 * (h + 1))

    def window_kernel(b, h, q, kv, bufs, scalars, kv_base=None, kv_off=0):
        return (q >= kv) & (q - kv < 300)

    def window_t(b, h, q, kv):
        return (q >= kv) & (q - kv < 300)

    return {
        "none": (None, None),
        "causal": (CAUSAL_MASK, causal_t),
        "empty_rows": (ModSpec("mask", tail_rows_kernel, key="test:empty_rows"), tail_rows_t),
        "empty_tiles": (ModSpec("mask", empty_tiles_kernel, key="test:empty_tiles"),
                        empty_tiles_t),
        "window300": (ModSpec("mask", window_kernel, key="test:window300"), window_t),
        "head_window": (ModSpec("mask", head_window_kernel, key="test:head_window"), head_window_t),
        "batch_window": (ModSpec("mask", batch_window_kernel, key="test:batch_window"),
                         batch_window_t),
        "only_head_window": (ModSpec("mask", only_head_window_kernel, key="test:only_head_window"),
                             only_head_window_t),
    }


def reference(q, k, v, scale, mask_t=None, score_t=None):
    """float64 dense attention: softmax(mod(qk*scale)) masked; empty rows -> 0, lse -inf."""
    B, Hq, Sq, D = q.shape
    Hkv = k.shape[1]
    rep = Hq // Hkv
    qd, kd, vd = q.double(), k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1)
    s = torch.einsum("bhqd,bhkd->bhqk", qd, kd) * scale
    b = torch.arange(B, device=q.device).view(B, 1, 1, 1)
    h = torch.arange(Hq, device=q.device).view(1, Hq, 1, 1)
    qi = torch.arange(Sq, device=q.device).view(1, 1, Sq, 1)
    ki = torch.arange(k.shape[2], device=q.device).view(1, 1, 1, -1)
    if score_t is not None:
        s = score_t(s, b, h, qi, ki)
    if mask_t is not None:
        s = s.masked_fill(~mask_t(b, h, qi, ki).expand_as(s), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.unsqueeze(-1))
    p = torch.nan_to_num(p, nan=0.0)
    out = torch.einsum("bhqk,bhkd->bhqd", p, vd)
    return out, lse, s.amax(dim=-1)


def block_mask_tensors(mask_t, B, H, Sq, Skv, q_bs, kv_bs, device, per_bh=False):
    """(kv_num_blocks, kv_indices, full_num, full_indices) like flex's BlockMask: shapes
    (1, 1, ...) (broadcast) unless per_bh, then from mask_t(b, h, ...): True or "bh" gives
    (B, H, ...), "b" (B, 1, ...) and "h" (1, H, ...)."""
    if per_bh:
        per = "bh" if per_bh is True else per_bh
        rows = [[block_mask_tensors(lambda b_, h_, q, k: mask_t(torch.tensor(b, device=device),
                                                                 torch.tensor(h, device=device), q, k),
                                    1, 1, Sq, Skv, q_bs, kv_bs, device)
                 for h in range(H if "h" in per else 1)] for b in range(B if "b" in per else 1)]
        return tuple(torch.cat([torch.cat([r[i] for r in row], dim=1) for row in rows], dim=0)
                     for i in range(4))
    nq, nk = math.ceil(Sq / q_bs), math.ceil(Skv / kv_bs)
    qi = torch.arange(nq * q_bs, device=device).view(-1, 1)
    ki = torch.arange(nk * kv_bs, device=device).view(1, -1)
    zero = torch.zeros((), dtype=torch.long, device=device)
    if mask_t is None:
        dense = torch.ones(nq * q_bs, nk * kv_bs, dtype=torch.bool, device=device)
    else:
        dense = mask_t(zero, zero, qi, ki).expand(nq * q_bs, nk * kv_bs)
    blocks = dense.view(nq, q_bs, nk, kv_bs).permute(0, 2, 1, 3).reshape(nq, nk, -1)
    anyb, allb = blocks.any(-1), blocks.all(-1)
    partial, full = anyb & ~allb, allb

    def pack(sel):
        num = sel.sum(-1).to(torch.int32)
        order = torch.argsort((~sel).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return num.view(1, 1, nq), order.view(1, 1, nq, nk)

    pn, pi = pack(partial)
    fn, fi = pack(full)
    return pn, pi, fn, fi


CASES = [
    # name, B, Hq, Hkv, Sq, Skv, D, Dv, dtype, mod, sparse (q_bs, kv_bs) or None
    ("noop d128", 2, 4, 4, 1000, 1537, 128, 128, torch.bfloat16, "none", None),
    ("noop d64", 2, 4, 4, 1000, 1537, 64, 64, torch.bfloat16, "none", None),
    ("noop d96", 1, 4, 4, 1000, 1537, 96, 96, torch.bfloat16, "none", None),
    ("noop d192", 1, 4, 4, 1000, 1537, 192, 192, torch.bfloat16, "none", None),
    ("noop d256", 1, 4, 4, 1000, 1537, 256, 256, torch.bfloat16, "none", None),
    ("noop d192/128", 1, 4, 4, 1000, 1537, 192, 128, torch.bfloat16, "none", None),
    ("noop fp16 d128", 1, 4, 4, 777, 1029, 128, 128, torch.float16, "none", None),
    ("gqa 8/2 d128", 2, 8, 2, 1000, 1537, 128, 128, torch.bfloat16, "none", None),
    ("causal dense d128", 1, 4, 4, 1000, 1537, 128, 128, torch.bfloat16, "causal", None),
    ("causal sparse d128", 2, 4, 4, 1000, 1537, 128, 128, torch.bfloat16, "causal", (128, 128)),
    ("causal sparse d64", 1, 4, 4, 1000, 1537, 64, 64, torch.bfloat16, "causal", (128, 128)),
    ("causal sparse d256 (tile 64)", 1, 4, 4, 1000, 1537, 256, 256, torch.bfloat16, "causal", (128, 128)),
    ("causal sparse d192 (tile 64)", 1, 4, 4, 1000, 1537, 192, 192, torch.bfloat16, "causal", (128, 128)),
    ("causal sparse 256x256 d128", 1, 4, 4, 1000, 1537, 128, 128, torch.bfloat16, "causal", (256, 256)),
    ("window sparse gqa d128", 2, 8, 2, 1000, 1537, 128, 128, torch.bfloat16, "window300", (128, 128)),
    ("window sparse d256", 1, 4, 4, 1000, 1537, 256, 256, torch.bfloat16, "window300", (128, 128)),
    ("empty rows sparse d128", 1, 4, 4, 1000, 1537, 128, 128, torch.bfloat16, "empty_rows", (128, 128)),
    ("empty rows dense d64", 1, 4, 4, 500, 700, 64, 64, torch.float16, "empty_rows", None),
    ("empty q-tiles sparse d128", 2, 4, 4, 1000, 1537, 128, 128, torch.bfloat16, "empty_tiles",
     (128, 128)),
    ("per-(b,h) blockmask gqa d128", 2, 4, 2, 1000, 1537, 128, 128, torch.bfloat16,
     "head_window", (128, 128, "per_bh")),
    ("per-(b,h) blockmask d256 tile64", 2, 2, 2, 700, 900, 256, 256, torch.bfloat16,
     "head_window", (128, 128, "per_bh")),
    ("per-batch blockmask d128", 2, 4, 4, 1000, 1537, 128, 128, torch.bfloat16,
     "batch_window", (128, 128, "per_b")),
    ("per-head blockmask gqa d128", 2, 4, 2, 1000, 1537, 128, 128, torch.bfloat16,
     "only_head_window", (128, 128, "per_h")),
]


def _cfg(D, Dv, block_q=None, **override):
    import dataclasses

    from cute_kernels.config import choose_config

    if not override:
        return None
    cfg = choose_config(D, Dv, block_q)
    # Note [cross-tile overlap] needs the dynamic schedule and two Q buffers: keep the
    # default's choice only where the override leaves both
    override.setdefault("tile_overlap", cfg.tile_overlap and override.get("dynamic", cfg.dynamic)
                        and override.get("q_stages", cfg.q_stages) == 2)
    return dataclasses.replace(cfg, **override)


def run_case(case, seed=None, key_growth=None, **cfg_override):
    """key_growth "to_start" / "to_end": keys' norms grow up to 8x toward KV position 0 /
    the last one, so row maxima keep rising over the visited tiles (random keys of one
    norm set nearly every row max in the first tile)."""
    import cute_kernels as ck

    name, B, Hq, Hkv, Sq, Skv, D, Dv, dtype, mod, sp = case
    seed = random.randrange(1 << 30) if seed is None else seed
    torch.manual_seed(seed)
    dev = "cuda"
    q = torch.randn(B, Hq, Sq, D, device=dev, dtype=dtype)
    k = torch.randn(B, Hkv, Skv, D, device=dev, dtype=dtype)
    if key_growth is not None:
        ramp = torch.linspace(8.0, 1.0, Skv, device=dev) if key_growth == "to_start" \
            else torch.linspace(1.0, 8.0, Skv, device=dev)
        k = (k.float() * ramp[:, None]).to(dtype)
    v = torch.randn(B, Hkv, Skv, Dv, device=dev, dtype=dtype)
    spec, mask_t = _mods()[mod]
    scale = 1.0 / math.sqrt(D)
    block_sparse = None
    if sp is not None:
        per = next((x[len("per_"):] for x in sp[2:]), False)  # "bh", "b", "h" or none
        block_sparse = (*block_mask_tensors(mask_t, B, Hq, Sq, Skv, sp[0], sp[1], dev,
                                            per_bh=per), sp[0], sp[1])
    poison_free_memory(dev)
    out, lse, mx = ck.flash_attn_fwd(q, k, v, scale=scale, block_sparse=block_sparse,
                                     mask_mod=spec, return_max_scores=True,
                                     _config=_cfg(D, Dv, sp[0] if sp else None, **cfg_override))
    torch.cuda.synchronize()
    ref, ref_lse, ref_max = reference(q, k, v, scale, mask_t)
    err = ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    fin = torch.isfinite(ref_lse)
    lse_err = (lse.double()[fin] - ref_lse[fin]).abs().max().item() if fin.any() else 0.0
    inf_ok = bool(torch.all(torch.isneginf(lse[~fin]))) and bool(torch.all(out.double()[~fin] == 0))
    max_err = (mx.double()[fin] - ref_max[fin]).abs().max().item() if fin.any() else 0.0
    nan = bool(torch.isnan(out).any())
    ok = err < 1e-2 and lse_err < 1e-2 and inf_ok and not nan and max_err < 2e-2
    return dict(name=name, seed=seed, err=err, lse_err=lse_err, max_err=max_err, inf_ok=inf_ok,
                nan=nan, ok=ok, compile_s=ck.flash_attn_fwd.last_compile_seconds)


@gpu
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fwd_matches_float64_reference(case):
    r = run_case(case)
    assert r["ok"], f"seed={r['seed']}: {r}"


# The default at hdim 128 / 256 is persistent CTAs with the dynamic tile scheduler; the other two
# schedules (static round-robin persistent, one CTA per tile) on the cases that stress
# them: several tiles per CTA, empty tiles, tails, GQA, tile_n 64.
PERSISTENT_CASES = [c for c in CASES if c[0] in (
    "noop d128", "noop d256", "noop fp16 d128", "gqa 8/2 d128", "causal sparse d128",
    "causal sparse d256 (tile 64)", "window sparse gqa d128", "empty rows sparse d128",
    "empty rows dense d64", "empty q-tiles sparse d128", "per-(b,h) blockmask gqa d128",
    "per-batch blockmask d128")]


@gpu
@pytest.mark.parametrize("case", PERSISTENT_CASES, ids=[c[0] for c in PERSISTENT_CASES])
def test_static_persistent_matches_float64_reference(case):
    r = run_case(case, persistent=True, dynamic=False)
    assert r["ok"], f"seed={r['seed']}: {r}"


@gpu
@pytest.mark.parametrize("case", PERSISTENT_CASES, ids=[c[0] for c in PERSISTENT_CASES])
def test_one_cta_per_tile_matches_float64_reference(case):
    r = run_case(case, persistent=False, dynamic=False)
    assert r["ok"], f"seed={r['seed']}: {r}"


# Both places for the epilogue's O tile (Note [own sO] in hopper_fwd.py): its own buffer, with
# two Q buffers (the default at hdim 128, Note [Q ring]) or one, and aliasing sQ (the default
# at hdim 256, where both do not fit), under both schedules that differ in when Q is released;
# the Q ring with and without Note [cross-tile overlap] (its default: with a BlockMask only).
O_BUFFER_CASES = [c for c in PERSISTENT_CASES if c[0] in (
    "noop d128", "gqa 8/2 d128", "causal sparse d128", "empty rows sparse d128",
    "empty rows dense d64", "empty q-tiles sparse d128")]


_BUFFERS = {"own-sO-Q-ring": dict(separate_o=True, q_stages=2),
            "own-sO": dict(separate_o=True, q_stages=1),
            "sO-aliases-sQ": dict(separate_o=False, q_stages=1)}
# (id, config override); cross-tile overlap needs the dynamic schedule and the Q ring
O_BUFFER_CONFIGS = [
    *[(f"dynamic-{k}", dict(b, persistent=True, dynamic=True, tile_overlap=False))
      for k, b in _BUFFERS.items()],
    ("dynamic-own-sO-Q-ring-overlap", dict(_BUFFERS["own-sO-Q-ring"], persistent=True,
                                           dynamic=True, tile_overlap=True)),
    *[(f"one-cta-{k}", dict(b, persistent=False, dynamic=False, tile_overlap=False))
      for k, b in _BUFFERS.items()],
]


# the overlap only where it is the default: hdim 128
_O_BUFFER_PAIRS = [(cfg_id, cfg, case) for cfg_id, cfg in O_BUFFER_CONFIGS
                   for case in O_BUFFER_CASES if not cfg["tile_overlap"] or case[6] == 128]


@gpu
@pytest.mark.parametrize("config,case", [(cfg, case) for _, cfg, case in _O_BUFFER_PAIRS],
                         ids=[f"{i}-{case[0]}" for i, _, case in _O_BUFFER_PAIRS])
def test_o_buffer_matches_float64_reference(config, case):
    r = run_case(case, num_stages=2, **config)
    assert r["ok"], f"seed={r['seed']}: {r}"


# Note [lazy rescale] (cute_kernels/softmax.py): rows whose max rises by less than the
# threshold keep a stale exponent shift, rows that rise by more move it; with and without.
RISING_MAX_CASES = [c for c in CASES if c[0] in (
    "noop d128", "noop d64", "noop fp16 d128", "causal sparse d128", "window sparse gqa d128",
    "empty q-tiles sparse d128")]


@gpu
@pytest.mark.parametrize("lazy", [True, False], ids=["lazy", "eager"])
@pytest.mark.parametrize("growth", ["to_start", "to_end"])
@pytest.mark.parametrize("case", RISING_MAX_CASES, ids=[c[0] for c in RISING_MAX_CASES])
def test_rising_row_max_matches_reference(case, growth, lazy):
    r = run_case(case, key_growth=growth, lazy_rescale=lazy)
    assert r["ok"], f"seed={r['seed']}: {r}"


TRACED_CASES = [
    # name, variant, B, Hq, Hkv, Sq, Skv, D, sparse blocks or None
    ("traced causal d128", "causal", 2, 4, 4, 1000, 1537, 128, (128, 128)),
    ("traced sliding d128 gqa", "sliding_window", 2, 4, 2, 1000, 1537, 128, (128, 128)),
    ("traced document d128", "document", 2, 4, 4, 1000, 1537, 128, (128, 128)),
    ("traced document d256", "document", 1, 4, 4, 1000, 1537, 256, (128, 128)),
    ("traced alibi+causal d128", "alibi", 2, 4, 4, 1000, 1537, 128, (128, 128)),
    ("traced softcap+causal d64", "softcap", 1, 4, 4, 1000, 1537, 64, (128, 128)),
    ("traced softcap dense d128", "softcap_dense", 1, 4, 4, 1000, 1537, 128, None),
]


def _variant(name, H, device="cuda"):
    from test_cute_compile import softcap_variant, variants

    if name == "softcap_dense":
        return softcap_variant(30.0)[0], None
    return variants(device=device, S=2048, H=H)[name]


def run_traced_case(case, seed=None, score_fn=None, mask_fn=None):
    import cute_kernels as ck
    from test_cute_compile import traced

    name, var, B, Hq, Hkv, Sq, Skv, D, sp = case
    seed = random.randrange(1 << 30) if seed is None else seed
    torch.manual_seed(seed)
    if score_fn is None and mask_fn is None:
        score_fn, mask_fn = _variant(var, Hq)
    ts, tm = traced(score_fn, mask_fn)
    q = torch.randn(B, Hq, Sq, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, Hkv, Skv, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, Hkv, Skv, D, device="cuda", dtype=torch.bfloat16)
    bs = None
    if sp is not None:
        bs = (*block_mask_tensors(mask_fn, B, Hq, Sq, Skv, sp[0], sp[1], "cuda"), sp[0], sp[1])
    poison_free_memory()
    out, lse, _ = ck.flash_attn_fwd(q, k, v, scale=D ** -0.5, block_sparse=bs, score_mod=ts,
                                    mask_mod=tm)
    torch.cuda.synchronize()
    ref, ref_lse, _ = reference(q, k, v, D ** -0.5, mask_fn, score_fn)
    err = ((out.double() - ref).norm() / ref.norm()).item()
    fin = torch.isfinite(ref_lse)
    lse_err = (lse.double()[fin] - ref_lse[fin]).abs().max().item()
    ok = err < 1e-2 and lse_err < 1e-2 and not bool(torch.isnan(out).any())
    return dict(name=name, seed=seed, err=err, lse_err=lse_err, max_err=0.0, ok=ok,
                compile_s=ck.flash_attn_fwd.last_compile_seconds)


@gpu
@pytest.mark.parametrize("case", TRACED_CASES, ids=[c[0] for c in TRACED_CASES])
def test_traced_mods_match_reference(case):
    r = run_traced_case(case)
    assert r["ok"], f"seed={r['seed']}: {r}"


@gpu
def test_a_plan_refuses_other_layouts_and_misaligned_inputs(seed):
    """A ForwardPlan runs q, k, v of the layout it was built for, with 16-byte aligned
    data (TMA); anything else gets an error that names the problem, not a bad launch."""
    import cute_kernels as ck

    q, k, v = (torch.randn(1, 2, 256, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    plan = ck.ForwardPlan(q, k, v, scale=0.1)
    ref, ref_lse, _ = reference(q, k, v, 0.1)
    poison_free_memory()
    out, lse, _ = plan(q, k, v)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-2, f"seed={seed}"
    with pytest.raises(ValueError, match="other shapes, strides"):
        plan(q[:, :1], k[:, :1], v[:, :1])
    storage = torch.randn(q.numel() + 1, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="16-byte aligned"):
        plan(storage[1:].view(q.shape), k, v)


@gpu
def test_new_scalar_value_does_not_recompile():
    from test_cute_compile import softcap_variant

    case = ("softcap", "softcap_dense", 1, 2, 2, 300, 500, 128, None)
    run_traced_case(case, score_fn=softcap_variant(30.0)[0])
    r = run_traced_case(case, score_fn=softcap_variant(5.0)[0])
    assert r["ok"] and r["compile_s"] == 0.0, r


def call_overhead_us(n=200):
    import cute_kernels as ck

    q = torch.randn(1, 1, 128, 128, device="cuda", dtype=torch.bfloat16)
    ck.flash_attn_fwd(q, q, q, scale=0.1)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        ck.flash_attn_fwd(q, q, q, scale=0.1)
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


def bench_inputs(mask_fn, B, H, S, D):
    """Random bf16 (q, k, v), the 128x128 block-sparse tensors of mask_fn (None without
    one) and the fraction of unmasked pairs, for timing a (B, H, S, D) case."""
    q = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16)
    k, v = torch.randn_like(q), torch.randn_like(q)
    bs, density = None, 1.0
    if mask_fn is not None:
        bs = (*block_mask_tensors(mask_fn, B, H, S, S, 128, 128, "cuda"), 128, 128)
        idx = torch.arange(S, device="cuda")
        zero = torch.zeros((), dtype=torch.long, device="cuda")
        density = mask_fn(zero, zero, idx.view(-1, 1), idx.view(1, -1)).float().mean().item()
    return q, k, v, bs, density


def bench(label, D=128, variant="none", S=8192, B=4, H=16, iters=50, **cfg_override):
    """Forward TFLOP/s counted on unmasked (q, kv) pairs, like the peers table."""
    import cute_kernels as ck
    from test_cute_compile import traced, variants

    full_mask = variant == "noop_blockmask"  # what flex passes for noop: every block full
    score_fn, mask_fn = variants(device="cuda", S=S, H=H)["none" if full_mask else variant]
    ts, tm = traced(score_fn, mask_fn)
    if full_mask:
        mask_fn = lambda b, h, q_idx, kv_idx: q_idx >= 0  # noqa: E731
    q, k, v, bs, density = bench_inputs(mask_fn, B, H, S, D)
    cfg = _cfg(D, D, 128 if bs is not None else None, **cfg_override)
    f = lambda: ck.flash_attn_fwd(q, k, v, scale=D ** -0.5, block_sparse=bs, score_mod=ts,
                                  mask_mod=tm, _config=cfg)
    f()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        f()
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / iters
    flops = 4 * B * H * S * S * D * density
    return ms, flops / ms / 1e9


BENCHES = [
    ("noop d128", dict(D=128)),
    ("causal d128", dict(D=128, variant="causal")),
    ("noop d128 via all-full BlockMask", dict(D=128, variant="noop_blockmask")),
    ("noop d128 2 stages", dict(D=128, num_stages=2)),
    ("causal d128 2 stages", dict(D=128, variant="causal", num_stages=2)),
    ("noop d128 no pingpong", dict(D=128, pingpong=False)),
    ("causal d128 no LPT", dict(D=128, variant="causal", lpt=False)),
    ("causal d128 no pingpong", dict(D=128, variant="causal", pingpong=False)),
    ("sliding window 1024 d128", dict(D=128, variant="sliding_window")),

    ("document+causal (8 docs) d128", dict(D=128, variant="document")),
    ("alibi+causal d128", dict(D=128, variant="alibi")),
    ("softcap+causal d128", dict(D=128, variant="softcap")),
    ("sliding window 1024 d128 no pingpong", dict(D=128, variant="sliding_window", pingpong=False)),
    ("document+causal d128 no pingpong", dict(D=128, variant="document", pingpong=False)),
    ("noop d64", dict(D=64)),
    ("noop d64 no pingpong", dict(D=64, pingpong=False)),
    ("causal d64", dict(D=64, variant="causal")),
    ("noop d256", dict(D=256)),
    ("causal d256", dict(D=256, variant="causal")),
    ("noop d128 S=2048", dict(D=128, S=2048)),
    ("noop d128 S=2048 via all-full BlockMask", dict(D=128, S=2048, variant="noop_blockmask")),
    ("causal d128 S=2048", dict(D=128, S=2048, variant="causal")),
    ("causal d256 persistent", dict(D=256, variant="causal", persistent=True, dynamic=False)),
    ("noop d256 S=2048", dict(D=256, S=2048)),
    ("noop d256 S=2048 persistent", dict(D=256, S=2048, persistent=True, dynamic=False)),
    ("causal d256 S=2048", dict(D=256, S=2048, variant="causal")),
    ("causal d256 S=2048 persistent", dict(D=256, S=2048, variant="causal", persistent=True, dynamic=False)),
]


if __name__ == "__main__":
    rows = []
    if "--bench-only" in sys.argv:
        sys.argv.append("--bench")
        CASES, TRACED_CASES, PERSISTENT_CASES = [], [], []
    for c in CASES + [("persistent " + c[0],) + c[1:] for c in PERSISTENT_CASES]:
        try:
            r = run_case(c, **(dict(persistent=True, dynamic=False) if c[0].startswith("persistent ") else {}))
        except Exception as e:  # keep going: one table for all cases
            r = dict(name=c[0], ok=False, err=float("nan"), lse_err=float("nan"),
                     max_err=float("nan"), seed=-1, compile_s=0, error=repr(e)[:300])
        rows.append(r)
        print(r, flush=True)
    for c in TRACED_CASES:
        try:
            r = run_traced_case(c)
        except Exception as e:
            r = dict(name=c[0], ok=False, err=float("nan"), lse_err=float("nan"),
                     max_err=float("nan"), seed=-1, compile_s=0, error=repr(e)[:300])
        rows.append(r)
        print(r, flush=True)
    try:
        test_new_scalar_value_does_not_recompile()
        print("scalar change without recompile: OK")
    except Exception as e:
        print("scalar change test FAILED", repr(e)[:300])
    print(f"host overhead per call (tiny problem): {call_overhead_us():.1f} us")
    if "--bench" in sys.argv:
        only = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--only=")]
        for label, kw in BENCHES:
            if only and not any(o in label for o in only):
                continue
            try:
                ms, tf = bench(label, **kw)
                print(f"BENCH {label:34s} B=4 H=16 S={kw.get('S', 8192)} bf16: {ms:7.3f} ms "
                      f"{tf:6.1f} TFLOP/s", flush=True)
            except Exception as e:
                print(f"BENCH {label} failed: {e!r}"[:400], flush=True)
    print("\n%-32s %5s %10s %10s %10s %6s" % ("case", "ok", "rel_err", "lse_err", "max_err", "comp_s"))
    for r in rows:
        print("%-32s %5s %10.2e %10.2e %10.2e %6.1f %s" % (
            r["name"], r["ok"], r["err"], r["lse_err"], r["max_err"], r["compile_s"],
            r.get("error", "")))


@gpu
def test_accepts_kernel_args_blocksparse_namedtuple():
    """flex_fa4 hands a mod_codegen.kernel_args.BlockSparseTensors; same result as the tuple."""
    import cute_kernels as ck
    from mod_codegen.kernel_args import BlockSparseTensors

    spec, mask_t = _mods()["causal"]
    q = torch.randn(1, 2, 300, 128, device="cuda", dtype=torch.bfloat16)
    tabs = block_mask_tensors(mask_t, 1, 2, 300, 300, 128, 128, "cuda")
    a = ck.flash_attn_fwd(q, q, q, scale=0.1, block_sparse=(*tabs, 128, 128), mask_mod=spec)[0]
    nt = BlockSparseTensors(*tabs, None, None, None, None, 128, 128)
    b = ck.flash_attn_fwd(q, q, q, scale=0.1, block_sparse=nt, mask_mod=spec)[0]
    assert torch.equal(a, b)


@gpu
def test_block_lists_with_a_strided_last_dim():
    """Note [unit-stride block lists]: the kernel reads the kv index lists with a static unit
    stride, so flash_attn_fwd copies lists whose last stride is not 1; the result must match
    the contiguous lists and the float64 reference."""
    import cute_kernels as ck

    seed = random.randrange(1 << 30)
    torch.manual_seed(seed)
    spec, mask_t = _mods()["causal"]
    q = torch.randn(2, 2, 700, 128, device="cuda", dtype=torch.bfloat16)
    k, v = torch.randn_like(q), torch.randn_like(q)
    cnt, idx, fcnt, fidx = block_mask_tensors(mask_t, 2, 2, 700, 700, 128, 128, "cuda")
    strided = [torch.stack([t, torch.full_like(t, 10**6)], dim=-1)[..., 0] for t in (idx, fidx)]
    assert strided[0].stride(-1) == 2

    def run(lists):
        poison_free_memory()
        return ck.flash_attn_fwd(q, k, v, block_sparse=(cnt, lists[0], fcnt, lists[1], 128, 128),
                                 mask_mod=spec)[0]

    a, b = run((idx, fidx)), run(strided)
    assert torch.equal(a, b), f"seed={seed}"
    ref = reference(q, k, v, 128 ** -0.5, mask_t)[0]
    err = ((b.double() - ref).norm() / ref.norm()).item()
    assert err < 1e-2, f"seed={seed}: {err}"


@gpu
@pytest.mark.parametrize("D", [64, 128])
def test_nan_scores_reach_the_output(D):
    """A row whose scores are NaN is not an empty row: like the float64 reference, its
    output and LSE are NaN, while every other row stays exact (an earlier kernel returned
    0 / -inf for such rows)."""
    import cute_kernels as ck

    seed = random.randrange(1 << 30)
    torch.manual_seed(seed)
    q = torch.randn(1, 2, 300, D, device="cuda", dtype=torch.bfloat16)
    k, v = torch.randn_like(q), torch.randn_like(q)
    q[0, 1, 7] = float("nan")
    out, lse, _ = ck.flash_attn_fwd(q, k, v, scale=D ** -0.5)
    ref, _, _ = reference(q, k, v, D ** -0.5)
    assert torch.isnan(out[0, 1, 7]).all() and torch.isnan(lse[0, 1, 7]), f"seed={seed}"
    ok = torch.ones(out.shape[:3], dtype=torch.bool, device="cuda")
    ok[0, 1, 7] = False
    err = ((out.double() - ref)[ok].norm() / ref[ok].norm()).item()
    assert err < 1e-2, f"seed={seed}: {err}"


# Head dim 64 without a BlockMask runs three consumer warpgroups (tile_m 192, the default,
# covered by the CASES above) with the dynamic scheduler; these are the other shapes of it.
D64_SHAPES = {
    "3wg-tile_n64": dict(tile_m=192, tile_n=64),
    "3wg-one-cta": dict(tile_m=192, persistent=False, dynamic=False),
    "2wg": dict(tile_m=128, consumer_regs=240, producer_regs=24, persistent=False, dynamic=False),
}
GQA_D64 = ("gqa 8/2 d64", 2, 8, 2, 1000, 1537, 64, 64, torch.bfloat16, "none", None)


@gpu
@pytest.mark.parametrize("case", [c for c in CASES if c[0] in ("noop d64", "empty rows dense d64")]
                         + [GQA_D64], ids=lambda c: c[0])
@pytest.mark.parametrize("shape", ["default"] + list(D64_SHAPES))
def test_head_dim_64_warpgroup_shapes(case, shape):
    """Three consumer warpgroups (round-robin pingpong over three named barriers) and two,
    both schedules."""
    r = run_case(case, **D64_SHAPES.get(shape, {}))
    assert r["ok"], f"seed={r['seed']}: {r}"


@gpu
def test_lpt_sections_with_a_remainder(monkeypatch):
    """Note [LPT order]: (batch, head) pairs in L2-sized sections; here 6 pairs in sections
    of 4, so the last section holds 2 and every tile must still be visited exactly once."""
    import cute_kernels.interface as itf

    case = ("causal sparse b2h3", 2, 3, 3, 1000, 1000, 128, 128, torch.bfloat16, "causal", (128, 128))
    per_head = 1000 * 256 * 2
    monkeypatch.setattr(itf, "L2_BYTES_FOR_KV", 4 * per_head + 1)
    assert itf._l2_heads(torch.empty(1, 1, 1000, 128, dtype=torch.bfloat16),
                         torch.empty(1, 1, 1000, 128, dtype=torch.bfloat16)) == 4
    r = run_case(case)
    assert r["ok"], f"seed={r['seed']}: {r}"


@gpu
def test_tile_counter_is_left_at_zero():
    """Note [self-resetting counter]: launches on one stream share the dynamic scheduler's
    counter, so every launch must leave it at zero (a stale count skips tiles, which the
    poisoned outputs of the next case would show)."""
    from cute_kernels import interface

    cases = [c for c in PERSISTENT_CASES if c[0] in ("causal sparse d128", "noop d128", "gqa 8/2 d128")]
    for case in cases * 2:
        r = run_case(case)
        assert r["ok"], f"seed={r['seed']}: {r}"
    torch.cuda.synchronize()
    assert interface._TILE_COUNTERS, "no launch used the dynamic scheduler"
    for key, counter in interface._TILE_COUNTERS.items():
        assert counter.tolist() == [0, 0], (key, counter)
