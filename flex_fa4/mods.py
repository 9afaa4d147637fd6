"""Ready-made score_mod / mask_mod generators for the standard attention variants.

Each is a plain function a user could have written; factories return closures
whose `__name__` says what they are (`sliding_window_1024`). Captured Python
numbers (window, prefix length, softcap) become runtime kernel scalars, so a new
value does not recompile; captured tensors (doc ids, slopes, bias tables) become
kernel arguments.
"""
from __future__ import annotations

import math

import torch

from .block_mask import and_masks, noop_mask

__all__ = [
    "noop_mask", "causal_mask", "generate_sliding_window", "generate_doc_mask", "doc_ids_from_offsets",
    "generate_prefix_lm_mask", "alibi_slopes", "generate_alibi_bias", "generate_tanh_softcap",
    "generate_relative_bias",
]


def causal_mask(b, h, q_idx, kv_idx):
    """Each query sees itself and earlier keys."""
    return q_idx >= kv_idx


def generate_sliding_window(window: int, causal: bool = True):
    """Keys within `window` positions of the query (before it, if causal)."""

    def sliding_window(b, h, q_idx, kv_idx):
        near = q_idx - kv_idx < window
        if causal:
            return near & (q_idx >= kv_idx)
        return near & (kv_idx - q_idx < window)

    sliding_window.__name__ = f"sliding_window_{window}" + ("" if causal else "_bidirectional")
    return sliding_window


def doc_ids_from_offsets(offsets: torch.Tensor, total_len: int | None = None) -> torch.Tensor:
    """Per-token document ids from sequence start offsets ([0, 100, 250, ...] or
    cumulative lengths with the total last), as int32."""
    offsets = torch.as_tensor(offsets)
    total = int(offsets[-1]) if total_len is None else total_len
    lengths = torch.diff(offsets, append=offsets.new_tensor([total])) if total_len is not None else torch.diff(offsets)
    starts = offsets if total_len is not None else offsets[:-1]
    if (lengths < 0).any() or int(starts[0]) != 0:
        raise ValueError("offsets must start at 0 and be non-decreasing")
    return torch.repeat_interleave(torch.arange(len(lengths), device=offsets.device, dtype=torch.int32), lengths)


def generate_doc_mask(doc_ids: torch.Tensor, inner=causal_mask):
    """Sample packing: a query sees only keys of its own document, combined with
    `inner` (causal by default; None for bidirectional within a document).
    `doc_ids` is [S] (shared by the batch) or [B, S]."""
    if doc_ids.dim() == 1:
        def same_doc(b, h, q_idx, kv_idx):
            return doc_ids[q_idx] == doc_ids[kv_idx]
    elif doc_ids.dim() == 2:
        def same_doc(b, h, q_idx, kv_idx):
            return doc_ids[b, q_idx] == doc_ids[b, kv_idx]
    else:
        raise ValueError(f"doc_ids must be [S] or [B, S], got shape {tuple(doc_ids.shape)}")
    mask = same_doc if inner is None else and_masks(same_doc, inner)
    mask.__name__ = "document" + ("" if inner is None else f"_{getattr(inner, '__name__', 'mask')}")
    return mask


def generate_prefix_lm_mask(prefix_len: int):
    """Bidirectional attention over the first `prefix_len` tokens, causal after."""

    def prefix_lm(b, h, q_idx, kv_idx):
        return (kv_idx < prefix_len) | (q_idx >= kv_idx)

    prefix_lm.__name__ = f"prefix_lm_{prefix_len}"
    return prefix_lm


def alibi_slopes(num_heads: int, device=None) -> torch.Tensor:
    """The ALiBi paper's geometric head slopes (exact for powers of two, the
    paper's interleaving otherwise)."""
    def powers(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        s = powers(num_heads)
    else:
        closest = 2 ** math.floor(math.log2(num_heads))
        s = powers(closest) + powers(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(s, dtype=torch.float32, device=device)


def generate_alibi_bias(num_heads: int | None = None, slopes: torch.Tensor | None = None, device=None):
    """ALiBi: add slope[h] * (kv_idx - q_idx) to the score. The slopes tensor is
    captured (and gets a gradient if it requires one); build it on the device the
    queries live on (`device=`), as every captured tensor must be."""
    if slopes is None:
        if num_heads is None:
            raise ValueError("give num_heads or slopes")
        slopes = alibi_slopes(num_heads, device=device)

    def alibi(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx)

    alibi.__name__ = "alibi"
    return alibi


def generate_tanh_softcap(cap: float):
    """Gemma-2 style logit soft-capping: cap * tanh(score / cap)."""

    def softcap(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    softcap.__name__ = f"tanh_softcap_{cap:g}"
    return softcap


def generate_relative_bias(table: torch.Tensor, max_distance: int | None = None):
    """Learned relative-position bias: table[h, clamp(q_idx - kv_idx) + max_distance],
    table of shape [H, 2 * max_distance + 1]."""
    if table.dim() != 2:
        raise ValueError(f"relative bias table must be [H, 2*max_distance+1], got {tuple(table.shape)}")
    dist = (table.shape[1] - 1) // 2 if max_distance is None else max_distance

    def relative_bias(score, b, h, q_idx, kv_idx):
        rel = torch.clamp(q_idx - kv_idx, -dist, dist) + dist
        return score + table[h, rel]

    relative_bias.__name__ = "relative_bias"
    return relative_bias
