"""flex_fa4: flexible attention with fused FlashAttention-4-style kernels.

A drop-in for torch.nn.attention.flex_attention: write a variant as
score_mod / mask_mod, and flex_fa4 traces them into IR and runs them inside a
fused kernel (CuTeDSL on Hopper, Triton on other GPUs, PyTorch on the CPU).
"""
from .backends import BackendUnavailableError
from .api import AuxOutput, AuxRequest, available_backends, explain, flex_attention
from .block_mask import BlockMask, and_masks, create_block_mask, noop_mask, or_masks
from . import mods

__all__ = [
    "flex_attention", "create_block_mask", "BlockMask", "and_masks", "or_masks", "noop_mask",
    "AuxRequest", "AuxOutput", "explain", "available_backends", "mods", "BackendUnavailableError",
]
__version__ = "0.1.0"
