"""CuTeDSL attention kernels for flex_fa4 (Hopper sm90a forward).

Plain torch tensors in; no dependency on flex_fa4 or fallback_triton.
"""
from .interface import ForwardPlan, can_implement, compile_only, flash_attn_fwd
from .mods import CAUSAL_MASK, ModSpec

__all__ = ["can_implement", "compile_only", "flash_attn_fwd", "ForwardPlan", "ModSpec", "CAUSAL_MASK"]
