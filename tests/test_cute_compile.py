"""Compile-only checks of the sm90 CuTeDSL forward (no GPU needed): every standard
variant is traced, emitted through mod_codegen.emit_cute and compiled to a cubin with
CUTE_DSL_ARCH=sm_90a. About 2-3 s per compile on a CPU.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")
os.environ.setdefault("FLEX_FA4_DISK_CACHE", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

cutlass = pytest.importorskip("cutlass")


# ------------------------------------------------------------------ variants
# Factories return (score_mod, mask_mod) plain Python mods (flex signatures); captured
# values are closure cells so the tracer turns them into runtime scalars / buffers.
def causal_variant():
    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    return None, causal


def sliding_window_variant(window=1024):
    def sliding_window(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx <= window)

    return None, sliding_window


def document_variant(doc_ids):
    def document_causal(b, h, q_idx, kv_idx):
        return (doc_ids[q_idx] == doc_ids[kv_idx]) & (q_idx >= kv_idx)

    return None, document_causal


def alibi_variant(slopes):
    def alibi(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx)

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    return alibi, causal


def softcap_variant(cap=30.0):
    def tanh_softcap(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    return tanh_softcap, causal


def variants(device="cpu", S=4096, H=16):
    doc = torch.repeat_interleave(torch.arange(8, dtype=torch.int32), S // 8).to(device)
    slopes = torch.exp2(-torch.arange(1, H + 1, dtype=torch.float32) * 8.0 / H).to(device)
    return {
        "none": (None, None),
        "causal": causal_variant(),
        "sliding_window": sliding_window_variant(1024),
        "document": document_variant(doc),
        "alibi": alibi_variant(slopes),
        "softcap": softcap_variant(30.0),
    }


def traced(score_fn, mask_fn):
    from mod_codegen import trace_mask_mod, trace_score_mod

    return (trace_score_mod(score_fn) if score_fn else None,
            trace_mask_mod(mask_fn) if mask_fn else None)


# -------------------------------------------------------------------- tests
CASES = [(name, 128) for name in variants()] + [
    (name, d) for d in (64, 256) for name in ("none", "causal", "document", "softcap")
]


@pytest.mark.parametrize("name,head_dim", CASES, ids=[f"{n}-d{d}" for n, d in CASES])
def test_compiles(name, head_dim):
    import cute_kernels as ck

    s, m = traced(*variants()[name])
    compiled = ck.compile_only(arch="sm_90a", dtype=torch.bfloat16, head_dim=head_dim,
                               score_mod=s, mask_mod=m, block_sparse=m is not None)
    assert compiled is not None


def test_dense_fp16_qk192_v128_with_max_scores():
    import cute_kernels as ck

    assert ck.compile_only(dtype=torch.float16, head_dim=192, head_dim_v=128,
                           block_sparse=False, need_max_scores=True) is not None


def test_captured_scalar_is_not_in_the_key():
    """Two softcap values trace to one graph key: the second call would not recompile."""
    a, _ = traced(*softcap_variant(30.0))
    b, _ = traced(*softcap_variant(20.0))
    assert a.cache_key == b.cache_key and a.scalars != b.scalars


def test_emitted_source_is_plain_selects():
    from cute_kernels.mods import from_traced

    s, m = traced(*variants()["document"])
    spec = from_traced(m, "mask")
    body = spec.source.split("def mask_mod_")[-1]
    # no Python control flow on runtime values; the one allowed `if` picks the split form
    # (mod_codegen.affine) at trace time
    body = body.replace(" if kv_base is not None else ", " or ")
    assert " if " not in body
    assert spec.buffer_specs == (("int32", 1),)


def test_head_dim_64_takes_three_warpgroups_where_the_mask_allows():
    """192-row tiles (three consumer WGs) at hdim 64 without a BlockMask or with a Q block
    that is a multiple of 192; 128-row tiles for the usual 128-row blocks."""
    from cute_kernels.config import choose_config

    assert choose_config(64, 64).tile_m == 192 and choose_config(64, 64).num_consumer_wgs == 3
    assert choose_config(64, 64, 384).tile_m == 192
    assert choose_config(64, 64, 128).tile_m == 128
    assert choose_config(128, 128).tile_m == 128


def test_can_implement_reasons():
    import cute_kernels as ck

    q = torch.empty(1, 2, 16, 80, dtype=torch.bfloat16)
    ok, why = ck.can_implement(q, q, q, block_q=128, block_kv=128, has_score_mod=False,
                               has_mask_mod=False, need_max_scores=False)
    assert not ok and ("head dim 80" in why or "CUDA" in why or "capability" in why)


# ------------------------------------------------- register-pressure regression check
PTXAS_SCRIPT = r"""
import dataclasses, os, sys, torch
sys.path.insert(0, {root!r})
import cute_kernels as ck
from cute_kernels.config import choose_config
sparse = {sparse!r}
cfg = dataclasses.replace(choose_config({d}, {d}, 128 if sparse else None), **{override!r})
ck.compile_only(head_dim={d}, mask_mod=ck.CAUSAL_MASK if sparse else None, block_sparse=sparse,
                config=cfg, options="--keep-ptx")
"""


def _ptxas():
    import shutil

    return shutil.which("ptxas") or (
        "/usr/local/cuda/bin/ptxas" if os.path.exists("/usr/local/cuda/bin/ptxas") else None)


# round-robin persistent CTAs; one CTA per tile; sO in sQ's buffer (the hdim-256 default); the
# hdim-128 default without Note [cross-tile overlap]
STATIC = {"persistent": True, "dynamic": False, "tile_overlap": False}
ONE_CTA = {"persistent": False, "dynamic": False, "tile_overlap": False}
ALIASED_O = {"separate_o": False, "num_stages": 3, "q_stages": 1, "tile_overlap": False}
NO_OVERLAP = {"tile_overlap": False}
EAGER = {"lazy_rescale": False}  # Note [lazy rescale] off: the O rescale every step


@pytest.mark.skipif(_ptxas() is None, reason="needs ptxas")
@pytest.mark.parametrize("d,override,sparse", [
    (64, {}, True), (64, {}, False), (128, {}, True), (256, {}, True), (128, STATIC, True),
    (256, STATIC, True), (128, ONE_CTA, True), (128, ALIASED_O, True), (128, {}, False),
    (128, NO_OVERLAP, True), (128, EAGER, True), (128, EAGER, False)],
    ids=["d64", "d64-dense-3wg", "d128", "d256", "d128-static", "d256-static", "d128-one-cta",
         "d128-aliased-o", "d128-dense", "d128-no-overlap", "d128-eager", "d128-dense-eager"])
def test_no_wgmma_serialization(d, override, sparse, tmp_path):
    """ptxas must not serialize the wgmmas: for lack of registers (warning C7512), which
    cost 25% at hdim 128 once (see Note [single tile] in hopper_fwd.py), or because other
    instructions write accumulators while a wgmma is in flight (C7515, Note [cross-tile
    overlap])."""
    import glob
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, CUTE_DSL_ARCH="sm_90a", CUTE_DSL_DUMP_DIR=str(tmp_path),
               FLEX_FA4_DISK_CACHE="0")
    p = subprocess.run([sys.executable, "-c", PTXAS_SCRIPT.format(root=root, d=d, override=override,
                                                                  sparse=sparse)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    ptx = glob.glob(str(tmp_path / "**" / "*__call__*.ptx"), recursive=True)
    assert ptx, os.listdir(tmp_path)
    out = subprocess.run([_ptxas(), "-arch=sm_90a", "-v", ptx[0], "-o", str(tmp_path / "k.cubin")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "serialized" not in out.stderr, out.stderr[-2000:]  # C7512, C7515
    assert "0 bytes spill stores" in out.stderr, out.stderr[-2000:]


def test_config_that_overflows_shared_memory_is_refused():
    """A FwdConfig override larger than sm90's shared memory fails at compile time with the
    sizes named, not at launch."""
    import dataclasses

    import cute_kernels as ck
    from cute_kernels.config import choose_config

    cfg = dataclasses.replace(choose_config(128, 128), num_stages=3)  # own sO + 3 stages
    with pytest.raises(ValueError, match="bytes of shared memory"):
        ck.compile_only(head_dim=128, config=cfg)


@pytest.mark.parametrize("override", [dict(persistent=False, dynamic=False), dict(q_stages=1),
                                      dict(tile_m=192)], ids=["one-cta", "one-q-buffer", "3wg"])
def test_tile_overlap_outside_its_shape_is_refused(override):
    """Note [cross-tile overlap] needs the dynamic schedule, the Q ring and two warpgroups;
    any other config asking for it is refused by name."""
    import dataclasses

    from cute_kernels.config import choose_config

    cfg = choose_config(128, 128, 128)
    assert cfg.tile_overlap  # the hdim-128 BlockMask default
    with pytest.raises(ValueError, match="tile_overlap"):
        dataclasses.replace(cfg, **override)


def _kernel_sass_tool():
    from scripts import load_script

    return load_script("tools/kernel_sass.py")


@pytest.mark.skipif(_kernel_sass_tool().nvdisasm_path() is None, reason="needs Triton's nvdisasm")
def test_kernel_sass_tool_finds_the_kv_step_loop(tmp_path):
    """tools/kernel_sass.py (the SASS view kernel work relies on, NOTES.md) still finds the
    dense KV-step loop: one QK^T and one P V (8 wgmmas each at hdim 128) and a score
    tile's exponentials (64 per thread, plus the row-scale ones)."""
    import re
    import subprocess

    from scripts import ROOT

    tool = os.path.join(ROOT, "tools", "kernel_sass.py")
    run = subprocess.run([sys.executable, tool, "noop", "--segments", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    steps = run.stdout.split("basic blocks of the KV-step loop:")[1]
    counts = lambda op: sum(int(n) for n in re.findall(rf"\b{op}:(\d+)", steps))  # noqa: E731
    assert counts("HGMMA") == 16 and 64 <= counts("MUFU") <= 72, run.stdout
