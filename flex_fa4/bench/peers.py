"""Peer runners: the libraries flex_fa4 is compared with, each skipped with the reason
when it cannot run here or cannot express the variant.

  torch_flex        torch.compile(torch flex_attention): Inductor's Triton kernels on CUDA
                    (C++ on CPU, forward only, slow to compile)
  torch_flex_eager  torch flex_attention uncompiled (dense math; CPU reference point)
  torch_flex_flash  torch flex_attention compiled with kernel_options={"BACKEND": "FLASH"}
                    (needs flash-attn-4)
  fa4_upstream      flash_attn.cute.flash_attn_func, (B, S, H, D) layout; noop / causal /
                    sliding window only
  sdpa_cudnn, sdpa_flash   F.scaled_dot_product_attention pinned to one kernel with
                    torch.nn.attention.sdpa_kernel; noop and causal only
"""
from __future__ import annotations

import functools
import warnings

import torch

from .backends import Case, Prepared, Runner, Skip, build_mask_ms, register
from .variants import Mods


def _needs_cuda(case: Case, who: str) -> None:
    if case.device.type != "cuda":
        raise Skip(f"{who}: needs a CUDA GPU")


def _import_flash_cute():
    # CuTeDSL warns at every compile that flash_attn's AuxData is no JitArgument: noise here
    warnings.filterwarnings("ignore", message=".*cannot be converted to a JitArgument")
    try:
        from flash_attn.cute import flash_attn_func
    except Exception as e:  # ImportError, or the CuTeDSL runtime failing to load
        raise Skip(f"flash_attn.cute is not importable ({type(e).__name__}: {e}); "
                   "install flash-attn-4 (the device bundle carries it)") from None
    return flash_attn_func


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    """One compiled flex_attention for the whole sweep. dynamic=False: a new shape gets
    its own static kernel, as in training, not a slower dynamic-shape one."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=None)
def _raise_recompile_limits() -> None:
    """Every (variant, shape) recompiles flex_attention and create_block_mask; past
    dynamo's default limit it would silently fall back to eager mid-sweep."""
    import torch._dynamo

    for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                 "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, max(getattr(torch._dynamo.config, knob), 1024))


@functools.lru_cache(maxsize=None)
def _compiled_create_block_mask():
    """torch.compile(create_block_mask), as torch recommends for long sequences: the
    eager build materializes the dense B x H x S x S mask."""
    from torch.nn.attention.flex_attention import create_block_mask

    return torch.compile(create_block_mask)


def _torch_flex(name: str, compiled: bool, kernel_options=None, about: str = "") -> Runner:
    def prepare(case: Case, mods: Mods) -> Prepared:
        from torch.nn.attention import flex_attention as tf

        if case.mode != "fwd" and case.device.type == "cpu":
            raise Skip("torch flex_attention has no backward on CPU")
        if kernel_options is not None:
            _needs_cuda(case, name)
            _import_flash_cute()
        _raise_recompile_limits()
        mask_ms, block_mask = None, None
        if mods.mask_mod is not None:
            build = _compiled_create_block_mask() if case.device.type == "cuda" else tf.create_block_mask
            mask_ms, block_mask = build_mask_ms(lambda: build(
                mods.mask_mod, case.B, case.H, case.S, case.S, device=case.device), case.device)
        op = _compiled_flex() if compiled else tf.flex_attention
        if not compiled:  # its "use torch.compile" warning is the point of this peer
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")

        def fn(q, k, v):
            return op(q, k, v, score_mod=mods.score_mod, block_mask=block_mask, kernel_options=kernel_options)

        return Prepared(fn, mask_ms)

    return Runner(name, prepare, about=about)


def _bshd(t: torch.Tensor) -> torch.Tensor:
    """(B, H, S, D) -> a contiguous (B, S, H, D) leaf with the same requires_grad."""
    return t.detach().transpose(1, 2).contiguous().requires_grad_(t.requires_grad)


def _fa4_upstream(case: Case, mods: Mods) -> Prepared:
    native = mods.native
    if native is None:
        raise Skip("upstream FA4 runs noop, causal and sliding window only")
    _needs_cuda(case, "upstream FA4")
    flash_attn_func = _import_flash_cute()
    # our window keeps q - window < kv <= q, i.e. window - 1 keys to the left
    window = (native.window - 1, 0) if native.window is not None else (None, None)

    def fn(q, k, v):
        out = flash_attn_func(q, k, v, causal=native.causal, window_size=window)
        return out[0] if isinstance(out, tuple) else out

    return Prepared(fn, to_native=_bshd, from_native=lambda t: t.transpose(1, 2))


def _sdpa(name: str, backend_attr: str) -> Runner:
    def prepare(case: Case, mods: Mods) -> Prepared:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if mods.native is None or mods.native.window is not None:
            raise Skip("SDPA runs noop and causal only")
        _needs_cuda(case, "SDPA's fused kernels")
        backend = getattr(SDPBackend, backend_attr)
        is_causal = mods.native.causal

        def fn(q, k, v):
            with sdpa_kernel(backend):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal)

        return Prepared(fn)

    return Runner(name, prepare, about=f"SDPA with SDPBackend.{backend_attr}")


PEERS = (
    _torch_flex("torch_flex", compiled=True, about="torch.compile(torch flex_attention)"),
    _torch_flex("torch_flex_eager", compiled=False, about="torch flex_attention, not compiled"),
    _torch_flex("torch_flex_flash", compiled=True, kernel_options={"BACKEND": "FLASH"},
                about='torch flex_attention, kernel_options={"BACKEND": "FLASH"}'),
    Runner("fa4_upstream", _fa4_upstream, about="flash_attn.cute.flash_attn_func"),
    _sdpa("sdpa_cudnn", "CUDNN_ATTENTION"),
    _sdpa("sdpa_flash", "FLASH_ATTENTION"),
)
for _runner in PEERS:
    register(_runner)
