"""Public entry points: plain torch tensors in, compiled CuTeDSL kernels out.

q/k/v arrive in torch layout (B, H, S, D) with any strides as long as the last dim is
contiguous and the other strides are 16-byte aligned (TMA); nothing is copied.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch

from . import cache
from .config import SMEM_BYTES_SM90, SUPPORTED_HEAD_DIM_PAIRS, SUPPORTED_HEAD_DIMS, choose_config
from .mods import ModSpec

ARCH = "sm_90a"


def _cutlass():
    import cutlass
    import cutlass.cute as cute

    return cutlass, cute


def _cute_dtype(torch_dtype):
    cutlass, _ = _cutlass()
    table = {
        torch.bfloat16: cutlass.BFloat16, torch.float16: cutlass.Float16,
        torch.float32: cutlass.Float32, torch.int32: cutlass.Int32, torch.int64: cutlass.Int64,
        torch.bool: cutlass.Boolean, torch.int8: cutlass.Int8, torch.uint8: cutlass.Uint8,
        torch.int16: cutlass.Int16, torch.float64: cutlass.Float64,
    }
    return table[torch_dtype]


def _dtype_from_name(name: str):
    return _cute_dtype(getattr(torch, name))


# ----------------------------------------------------------------------------- checks
_CAPABILITY: dict = {}
_NUM_SMS: dict = {}


def _num_sms(device) -> int:
    n = _NUM_SMS.get(device)
    if n is None:
        n = _NUM_SMS[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return n


_TILE_COUNTERS: dict = {}


def _tile_counter(device) -> torch.Tensor:
    """The dynamic scheduler's (next tile, CTAs done) words, zero at every launch.

    The kernel zeroes them when it ends (Note [self-resetting counter] in hopper_fwd.py), so
    one buffer per stream serves every launch on it without a memset kernel (about 3 us
    before each launch, 2% of a 130 us causal S=2048 call). Launches on different streams
    may overlap, so they never share one. Under CUDA-graph capture a fresh buffer is made
    instead: its memset is captured with the kernel, and a buffer kept here must not come
    from the graph's memory pool."""
    if torch.cuda.is_current_stream_capturing():
        return torch.zeros(2, dtype=torch.int32, device=device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (index, torch.cuda.current_stream(index).cuda_stream)
    counter = _TILE_COUNTERS.get(key)
    if counter is None:
        counter = _TILE_COUNTERS[key] = torch.zeros(2, dtype=torch.int32, device=device)
    return counter


# Note [L2 sections]: the K and V bytes of one LPT section (Note [LPT order] in
# hopper_fwd.py). The H100's 50 MB L2 is two partitions, each caching the data of the SMs
# connected to it (NVIDIA's description), so data that every SM reads gets about half of
# it. The DRAM reads bear that out: H100, causal S=8192, B=4 H=16 D=128 (4 MB of K and V
# per head), Nsight Compute, sections of 2 / 4 / 8 / 16 heads read 439 / 450 / 722 / 1260
# MB from DRAM (Q, K and V once: 403 MB; upstream FA4's 8-head sections: 568 MB), kernel
# 1.56 / 1.55 / 1.57 / 1.59 ms; timed interleaved, 4 and 8 heads within 0.1% of each
# other, 16 heads 2-3% slower (BENCHMARKS.md, session 11). So 4 heads: less DRAM traffic
# (energy, under the power cap) at the same measured speed.
L2_BYTES_FOR_KV = 25 << 20


def _l2_heads(k, v) -> int:
    """How many (batch, head) pairs' K and V fit in L2 together, as a power of two
    (Note [L2 sections])."""
    per_head = k.shape[2] * (k.shape[3] + v.shape[3]) * k.element_size()
    n = max(1, L2_BYTES_FOR_KV // max(per_head, 1))
    return 1 << (n.bit_length() - 1)


def _arch_ok() -> tuple[bool, str]:
    forced = os.environ.get("CUTE_DSL_ARCH")
    if torch.cuda.is_available():
        dev = torch.cuda.current_device()
        cap = _CAPABILITY.get(dev)
        if cap is None:
            cap = _CAPABILITY[dev] = torch.cuda.get_device_capability(dev)
        if cap != (9, 0):
            return False, f"the sm90 kernel needs compute capability 9.0, this GPU is {cap[0]}.{cap[1]}"
        return True, ""
    if forced in ("sm_90a", "sm_90"):
        return True, ""
    return False, "no CUDA device (set CUTE_DSL_ARCH=sm_90a to compile only)"


def can_implement(q, k, v, *, block_q: Optional[int] = None, block_kv: Optional[int] = None,
                  has_score_mod: bool = False, has_mask_mod: bool = False,
                  need_max_scores: bool = False) -> tuple[bool, str]:
    ok, why = _arch_ok()
    if not ok:
        return False, why
    if q.dtype not in (torch.float16, torch.bfloat16):
        return False, f"dtype {q.dtype} not supported by the sm90 kernel (float16, bfloat16)"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return False, "q, k and v must share one dtype"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return False, "q, k, v must be 4-d (B, H, S, D)"
    d, dv = q.shape[-1], v.shape[-1]
    if k.shape[-1] != d:
        return False, f"q and k head dims differ ({d} vs {k.shape[-1]})"
    if (d, dv) not in SUPPORTED_HEAD_DIM_PAIRS:
        if d not in SUPPORTED_HEAD_DIMS:
            return False, (f"head dim {d} not supported by the sm90 kernel "
                           f"(supported: {', '.join(map(str, SUPPORTED_HEAD_DIMS))})")
        return False, (f"head dims qk={d}, v={dv} not supported by the sm90 kernel "
                       f"(supported: equal dims, or qk 192 / v 128)")
    if k.shape[0] != q.shape[0] or v.shape[0] != q.shape[0]:
        return False, "batch sizes of q, k, v differ"
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        return False, "k and v shapes disagree"
    if q.shape[1] % k.shape[1] != 0:
        return False, f"q heads ({q.shape[1]}) must be a multiple of kv heads ({k.shape[1]})"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            return False, f"{name} must have a contiguous last dim"
        if any((s * t.element_size()) % 16 for s in t.stride()[:-1]) or t.data_ptr() % 16:
            return False, f"{name} needs 16-byte aligned strides and data pointer (TMA)"
    cfg = choose_config(d, dv, block_q)
    if block_q is not None and block_q % cfg.tile_m:
        return False, f"BlockMask Q block {block_q} must be a multiple of {cfg.tile_m}"
    if block_kv is not None and block_kv % cfg.tile_n:
        return False, f"BlockMask KV block {block_kv} must be a multiple of {cfg.tile_n} (hdim {d})"
    return True, ""


# ---------------------------------------------------------------------- compilation
def _sym():
    _, cute = _cutlass()
    return cute.sym_int()


def _fake(dtype, ndim, static_last=None, contiguous_last=True, align=16, tma=True):
    """A fake tensor with dynamic sizes/strides (optionally static last size, unit last stride).

    tma: promise 16-byte aligned strides (what TMA needs); LSE-like outputs promise nothing."""
    _, cute = _cutlass()
    shape = tuple(_sym() for _ in range(ndim - 1)) + (static_last if static_last else _sym(),)
    div = max(1, 128 // dtype.width) if (contiguous_last and tma) else 1
    strides = tuple(cute.sym_int64(divisibility=div) for _ in range(ndim - 1))
    strides += (1,) if contiguous_last else (cute.sym_int64(),)
    return cute.runtime.make_fake_tensor(dtype, shape, stride=strides,
                                         assumed_align=align if contiguous_last else None)


def _scalar_fake(t: str):
    cutlass, _ = _cutlass()
    return cutlass.Float32(0.0) if t == "f32" else cutlass.Int32(0)


def _compile(dtype, cfg, score_mod, mask_mod, has_sparse, has_full, has_max, ratios=(1, 1),
             options=""):
    if cfg.smem_bytes() > SMEM_BYTES_SM90:
        raise ValueError(f"{cfg} needs {cfg.smem_bytes()} bytes of shared memory; sm90 has "
                         f"{SMEM_BYTES_SM90}")
    cutlass, cute = _cutlass()
    from .hopper_fwd import HopperFlexFwd

    kernel = HopperFlexFwd(dtype, cfg, score_mod, mask_mod, has_sparse, has_full, *ratios)
    q = _fake(dtype, 4, cfg.head_dim)
    k = _fake(dtype, 4, cfg.head_dim)
    v = _fake(dtype, 4, cfg.head_dim_v)
    o = _fake(dtype, 4, cfg.head_dim_v)
    lse = _fake(cutlass.Float32, 3, align=4, tma=False)
    mx = _fake(cutlass.Float32, 3, align=4, tma=False) if has_max else None
    sparse = None
    if has_sparse:
        i32 = cutlass.Int32
        # Note [unit-stride block lists]: the kv index lists are read once per visited
        # tile, so their last stride is static 1 (flash_attn_fwd makes it so); a dynamic
        # one cost a 64-bit multiply chain per list in the mainloop.
        idx = lambda: _fake(i32, 4, contiguous_last=True, align=4, tma=False)
        sparse = (_fake(i32, 3, contiguous_last=False), idx(),
                  _fake(i32, 3, contiguous_last=False) if has_full else None,
                  idx() if has_full else None)
    mods = [m for m in (score_mod, mask_mod) if m is not None]
    aux_t = tuple(_fake(_dtype_from_name(dt), nd, contiguous_last=False)
                  for m in mods for (dt, nd) in m.buffer_specs)
    aux_s = tuple(_scalar_fake(t) for m in mods for t in m.scalar_types)
    stream = cute.runtime.make_fake_stream(use_tvm_ffi_env_stream=True)
    # Empty tuples are not jit arguments: an absent group travels as None.
    counter = _fake(cutlass.Int32, 1, align=4, tma=False) if cfg.dynamic else None
    return cute.compile(kernel, q, k, v, o, lse, mx, cutlass.Float32(1.0), sparse,
                        cutlass.Int32(132), cutlass.Int32(1), counter,
                        aux_t or None, aux_s or None, stream,
                        options=("--enable-tvm-ffi " + options).strip())


def _key(dtype_name, cfg, score_mod, mask_mod, has_sparse, has_full, has_max, ratios=(1, 1)):
    return cache.CompileKey(
        kernel="hopper_flex_fwd", arch=ARCH, dtype=dtype_name, config=cfg,
        score_mod=score_mod.cache_key() if score_mod else None,
        mask_mod=mask_mod.cache_key() if mask_mod else None,
        sparse=(has_sparse, has_full, *ratios), has_max=has_max)


def _ratios(cfg, block_q, block_kv) -> tuple[int, int]:
    """(Q_BS / tile_m, KV_BS / tile_n): compile-time constants of the kernel."""
    if int(block_q) % cfg.tile_m or int(block_kv) % cfg.tile_n:
        raise ValueError(f"BlockMask blocks ({block_q}, {block_kv}) must be multiples of the "
                         f"kernel tile ({cfg.tile_m}, {cfg.tile_n})")
    return int(block_q) // cfg.tile_m, int(block_kv) // cfg.tile_n


def compile_only(arch: str = "sm_90a", dtype=torch.bfloat16, head_dim: int = 128,
                 head_dim_v: Optional[int] = None, score_mod=None, mask_mod=None,
                 block_sparse: bool = True, has_full: bool = True, need_max_scores: bool = False,
                 config=None, options: str = "", block_size: tuple[int, int] = (128, 128)):
    """Compile (no launch, no GPU needed) and return the compiled object.

    score_mod / mask_mod: ModSpec, TracedMod, or None. config: FwdConfig override.
    options: extra cute.compile options (e.g. "--keep-ptx"; bypasses the cache).
    block_size: the BlockMask's (Q_BS, KV_BS) when block_sparse."""
    os.environ.setdefault("CUTE_DSL_ARCH", arch)
    if os.environ["CUTE_DSL_ARCH"] != arch:
        raise RuntimeError(f"CUTE_DSL_ARCH={os.environ['CUTE_DSL_ARCH']} but arch={arch} requested")
    head_dim_v = head_dim if head_dim_v is None else head_dim_v
    score_mod, mask_mod = _as_spec(score_mod, "score"), _as_spec(mask_mod, "mask")
    cfg = config or choose_config(head_dim, head_dim_v, block_size[0] if block_sparse else None)
    ratios = _ratios(cfg, *block_size) if block_sparse else (1, 1)
    build = lambda: _compile(_cute_dtype(dtype), cfg, score_mod, mask_mod, block_sparse,
                             block_sparse and has_full, need_max_scores, ratios, options)
    if options:
        return build()
    key = _key(str(dtype), cfg, score_mod, mask_mod, block_sparse, block_sparse and has_full,
               need_max_scores, ratios)
    return cache.get_or_compile(key, build, for_launch=False)


def _as_spec(mod, kind: str) -> Optional[ModSpec]:
    if mod is None or isinstance(mod, ModSpec):
        return mod
    from .mods import from_traced

    return from_traced(mod, kind)


# ---------------------------------------------------------------------------- launch
_launch_cache: dict = {}  # fast path: hashable call signature -> (compiled fn, config)


def _mod_id(mod):
    if mod is None:
        return None
    if isinstance(mod, ModSpec):
        return mod.cache_key()
    return mod.cache_key  # TracedMod: graph key (covers captured dtypes / ranks)


def _layout(q, k, v) -> tuple:
    return (q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype, q.device)


def _as_tuple(block_sparse):
    """mod_codegen.kernel_args.BlockSparseTensors (duck-typed: no import needed) or a
    tuple -> (kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices, Q_BS, KV_BS)."""
    if block_sparse is not None and hasattr(block_sparse, "kv_num_blocks"):
        bs = block_sparse
        return (bs.kv_num_blocks, bs.kv_indices, bs.full_kv_num_blocks, bs.full_kv_indices,
                bs.block_size_q, bs.block_size_kv)
    return block_sparse


class ForwardPlan:
    """One forward call's launch, prepared once for q, k, v of one layout and run many times.

    Note [launch plan]: a call repeated with new q, k, v of the same shapes, strides and
    dtype needs none of the checks, the config choice, the compile-cache lookup or the
    block-list conversion again. A plan does that work once; a run checks the layout and
    the 16-byte alignment of the data pointers, then allocates the outputs and launches.
    flex_fa4 keeps one plan per call signature (and skips its autograd.Function when no
    gradient is wanted). Host time per flex_attention(backend="fa4") call on the H200
    machine went from 61-100 us to 20-28 us (2026-11-21; upstream FA4's wrapper: 65-73 us),
    against kernels of 86 us (document mask, S=2048) and ~20 us (S=512): such calls had
    been bound by the host, and a timed loop of them measured the host.

    The plan reads the block lists and the mods' captured tensors when it launches, so
    in-place updates of them are seen; lists it had to convert (not int32, or a last
    stride that is not 1) are converted once, here."""

    def __init__(self, q, k, v, *, scale: Optional[float] = None, block_sparse=None,
                 score_mod=None, mask_mod=None, return_max_scores: bool = False, _config=None):
        block_sparse = _as_tuple(block_sparse)
        q_bs = kv_bs = None
        if block_sparse is not None:
            q_bs, kv_bs = block_sparse[4], block_sparse[5]
        ok, why = can_implement(q, k, v, block_q=q_bs, block_kv=kv_bs,
                                has_score_mod=score_mod is not None,
                                has_mask_mod=mask_mod is not None,
                                need_max_scores=return_max_scores)
        if not ok:
            raise ValueError(f"cute_kernels.flash_attn_fwd: {why}")
        B, Hq, Sq, D = q.shape
        Dv = v.shape[-1]
        has_sparse = block_sparse is not None
        has_full = has_sparse and block_sparse[2] is not None
        sig = (q.dtype, D, Dv, _mod_id(score_mod), _mod_id(mask_mod), has_sparse, has_full,
               return_max_scores, _config, q_bs, kv_bs)
        hit = _launch_cache.get(sig)
        self.compile_seconds = 0.0
        if hit is None:
            spec_s, spec_m = _as_spec(score_mod, "score"), _as_spec(mask_mod, "mask")
            cfg = _config or choose_config(D, Dv, q_bs)
            ratios = _ratios(cfg, q_bs, kv_bs) if has_sparse else (1, 1)
            key = _key(str(q.dtype), cfg, spec_s, spec_m, has_sparse, has_full,
                       return_max_scores, ratios)
            fn = cache.get_or_compile(
                key, lambda: _compile(_cute_dtype(q.dtype), cfg, spec_s, spec_m, has_sparse,
                                      has_full, return_max_scores, ratios))
            self.compile_seconds = cache.last_compile_seconds
            hit = _launch_cache[sig] = (fn, cfg)
        self.fn, self.cfg = hit
        self.layout = _layout(q, k, v)
        self.out_shape, self.lse_shape = (B, Hq, Sq, Dv), (B, Hq, Sq)
        self.return_max_scores = return_max_scores
        self.scale = float(1.0 / math.sqrt(D) if scale is None else scale)
        self.sparse = None
        if has_sparse:
            cnt, idx, fcnt, fidx = (t if t is None or t.dtype == torch.int32 else t.to(torch.int32)
                                    for t in block_sparse[:4])
            # Note [unit-stride block lists]
            idx = idx if idx.stride(-1) == 1 else idx.contiguous()
            fidx = fidx if fidx is None or fidx.stride(-1) == 1 else fidx.contiguous()
            self.sparse = (cnt, idx, fcnt if has_full else None, fidx if has_full else None)
        aux_t, aux_s = _runtime_aux(score_mod, mask_mod)
        self.aux_t, self.aux_s = aux_t or None, aux_s or None
        self.num_sms, self.l2_heads = _num_sms(q.device), _l2_heads(k, v)

    def __call__(self, q, k, v, *, layout_known: bool = False):
        """(out (B,Hq,Sq,Dv) q.dtype, lse (B,Hq,Sq) fp32 natural log, max scores or None).

        layout_known: the caller has already matched q, k and v's shapes, strides, dtypes
        and device to those the plan was built for (flex_fa4's call cache keys on them),
        so the check (1.5 us of Python a call) is skipped."""
        if not layout_known and _layout(q, k, v) != self.layout:
            raise ValueError("this ForwardPlan was built for q, k, v of other shapes, strides, "
                             "dtype or device; build a plan for these")
        if (q.data_ptr() | k.data_ptr() | v.data_ptr()) & 15:
            raise ValueError("cute_kernels.flash_attn_fwd: q, k and v need 16-byte aligned data "
                             "pointers (TMA)")
        out = torch.empty(self.out_shape, dtype=q.dtype, device=q.device)
        lse = torch.empty(self.lse_shape, dtype=torch.float32, device=q.device)
        mx = (torch.empty(self.lse_shape, dtype=torch.float32, device=q.device)
              if self.return_max_scores else None)
        counter = _tile_counter(q.device) if self.cfg.dynamic else None
        self.fn(q, k, v, out, lse, mx, self.scale, self.sparse, self.num_sms, self.l2_heads,
                counter, self.aux_t, self.aux_s)
        return out, lse, mx


def flash_attn_fwd(q, k, v, *, scale: Optional[float] = None, block_sparse=None,
                   score_mod=None, mask_mod=None, return_lse: bool = True,
                   return_max_scores: bool = False, _config=None):
    """Returns (out (B,Hq,Sq,Dv) q.dtype, lse (B,Hq,Sq) fp32 natural log, max or None).

    block_sparse: (kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices, Q_BS, KV_BS)
        or a mod_codegen.kernel_args.BlockSparseTensors; leading dims (B' in {1, B},
        H' in {1, Hq}); Q_BS a multiple of 128, KV_BS a multiple of the kv tile (128, or 64
        for head dims > 128).
    score_mod / mask_mod: TracedMod (from mod_codegen.trace) or ModSpec.
    _config: a FwdConfig overriding the heuristic (benchmarks only).
    A caller repeating a call should keep a ForwardPlan instead (Note [launch plan])."""
    plan = ForwardPlan(q, k, v, scale=scale, block_sparse=block_sparse, score_mod=score_mod,
                       mask_mod=mask_mod, return_max_scores=return_max_scores, _config=_config)
    flash_attn_fwd.last_compile_seconds = plan.compile_seconds
    out, lse, mx = plan(q, k, v)
    return out, (lse if return_lse else None), mx


flash_attn_fwd.last_compile_seconds = 0.0


def _runtime_aux(*mods):
    """Captured tensors and scalars of the mods, in the order the kernel expects."""
    tensors, scalars = [], []
    for m in mods:
        if m is None or isinstance(m, ModSpec):
            continue
        from mod_codegen.emit_cute import runtime_buffers, runtime_scalars

        tensors.extend(runtime_buffers(m))
        scalars.extend(runtime_scalars(m))
    return tuple(tensors), tuple(scalars)
