"""Plain-tensor bundles that flex_fa4 hands to the kernel packages.

They live in the lowest package so that cute_kernels and fallback_triton can
share them without importing flex_fa4 or each other."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class BlockSparseTensors(NamedTuple):
    """A BlockMask's metadata. Leading dims are (B', H') with B' in {1, B} and
    H' in {1, Hq} (1 = broadcast). Indices are int32 block numbers.

    kv_num_blocks [B', H', nQB] / kv_indices [B', H', nQB, nKVB]: partial blocks
    (mask_mod must be applied); full_kv_*: blocks where every pair takes part
    (mask_mod skipped; None if there are none). q_* / full_q_*: the transpose
    ([B', H', nKVB] / [B', H', nKVB, nQB]), for dK/dV. Only the first
    num_blocks entries of each index row are meaningful."""

    kv_num_blocks: torch.Tensor
    kv_indices: torch.Tensor
    full_kv_num_blocks: Optional[torch.Tensor]
    full_kv_indices: Optional[torch.Tensor]
    q_num_blocks: Optional[torch.Tensor]
    q_indices: Optional[torch.Tensor]
    full_q_num_blocks: Optional[torch.Tensor]
    full_q_indices: Optional[torch.Tensor]
    block_size_q: int
    block_size_kv: int
