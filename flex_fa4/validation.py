"""Checks on a flex_attention call, each with an error that names the problem
and, where there is one, the fix. Run once per call, before any backend."""
from __future__ import annotations

import math

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, enable_gqa: bool) -> None:
    for name, t in (("query", q), ("key", k), ("value", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have 4 dims (batch, heads, seq_len, head_dim); got shape {tuple(t.shape)}")
        if t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name} has dtype {t.dtype}; supported: float16, bfloat16, float32, float64")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"query, key and value must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"query, key and value must be on one device; got {q.device}, {k.device}, {v.device}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"batch sizes differ: query {q.shape[0]}, key {k.shape[0]}, value {v.shape[0]}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"key and value must have the same number of heads; got {k.shape[1]} and {v.shape[1]}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"key and value must have the same sequence length; got {k.shape[2]} and {v.shape[2]}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"query and key head dims differ: {q.shape[-1]} vs {k.shape[-1]}")
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise ValueError(f"empty sequence: query length {q.shape[2]}, key/value length {k.shape[2]}")
    if min(q.shape[0], q.shape[1], k.shape[1], q.shape[-1], v.shape[-1]) == 0:
        raise ValueError(f"empty batch, head or head_dim: query {tuple(q.shape)}, value {tuple(v.shape)}")
    hq, hkv = q.shape[1], k.shape[1]
    if hq != hkv:
        if hq % hkv != 0:
            raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv})")
        if not enable_gqa:
            raise ValueError(
                f"query has {hq} heads but key/value have {hkv}; grouped-query attention needs enable_gqa=True"
            )


def as_block_mask(block_mask):
    """A flex_fa4 BlockMask; torch's own BlockMask (same fields, same meaning) is
    converted once (and remembered on it), so code that builds masks with torch's
    create_block_mask keeps working."""
    from .block_mask import BlockMask

    if isinstance(block_mask, BlockMask):
        return block_mask
    converted = getattr(block_mask, "_flex_fa4_block_mask", None)
    if converted is not None:
        return converted
    if all(hasattr(block_mask, f) for f in ("kv_num_blocks", "kv_indices", "BLOCK_SIZE", "seq_lengths")):
        converted = BlockMask.from_kv_blocks(
            block_mask.kv_num_blocks, block_mask.kv_indices, getattr(block_mask, "full_kv_num_blocks", None),
            getattr(block_mask, "full_kv_indices", None), BLOCK_SIZE=tuple(block_mask.BLOCK_SIZE),
            mask_mod=getattr(block_mask, "mask_mod", None), seq_lengths=tuple(block_mask.seq_lengths))
        try:
            block_mask._flex_fa4_block_mask = converted
        except AttributeError:
            pass
        return converted
    raise TypeError(
        f"block_mask must be a BlockMask (from flex_fa4.create_block_mask or torch's), got {type(block_mask).__name__}"
    )


def check_block_mask(block_mask, q: torch.Tensor, k: torch.Tensor) -> None:
    B, Hq, Sq = q.shape[:3]
    Skv = k.shape[2]
    if block_mask.seq_lengths != (Sq, Skv):
        raise ValueError(
            f"block_mask was built for Q_LEN={block_mask.seq_lengths[0]}, KV_LEN={block_mask.seq_lengths[1]} "
            f"but query/key have lengths {Sq} and {Skv}; rebuild it with create_block_mask"
        )
    mb, mh = block_mask.kv_num_blocks.shape[:2]
    if mb not in (1, B):
        raise ValueError(f"block_mask has batch size {mb}; expected {B} (or build it with B=None to broadcast)")
    if mh not in (1, Hq):
        raise ValueError(f"block_mask has {mh} heads; expected {Hq} query heads (or build it with H=None)")
    if block_mask.kv_num_blocks.device != q.device:
        raise ValueError(f"block_mask is on {block_mask.kv_num_blocks.device} but query is on {q.device}; "
                         "use block_mask.to(query.device)")


def check_scale(scale) -> None:
    if scale is None:
        return
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a Python number or None, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
