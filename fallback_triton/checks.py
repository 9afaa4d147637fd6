"""What the Triton kernels can run: checked once per plan, with errors that say what to change."""
from __future__ import annotations

from typing import Optional

import torch

from mod_codegen.kernel_args import BlockSparseTensors

from .configs import MIN_TILE
from .problem import interpreting

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def can_implement(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_q: Optional[int] = None,
                  block_kv: Optional[int] = None, scale: Optional[float] = None) -> tuple[bool, str]:
    """(True, "") if these inputs (and, when given, BlockMask block sizes and scale)
    can run here, else (False, what to change)."""
    for name, size in (("BLOCK_SIZE[0]", block_q), ("BLOCK_SIZE[1]", block_kv)):
        if size is not None and (size <= 0 or size % MIN_TILE):
            return False, f"BlockMask {name} = {size} must be a positive multiple of {MIN_TILE}"
    if scale is not None and not scale > 0:  # row maxima are taken before scaling (Note [scale folded into exp2])
        return False, f"scale must be positive, got {scale}; fold a sign into a score_mod instead"
    if q.device.type == "cuda":
        pass
    elif q.device.type == "cpu":
        if not interpreting():
            return False, "CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before importing triton"
    else:
        return False, f"device {q.device.type} is not supported (CUDA, or CPU with TRITON_INTERPRET=1)"
    if not (q.device == k.device == v.device):
        return False, "q, k and v must be on one device"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return False, "q, k, v must be 4-D: (B, H, S, D)"
    if q.dtype not in SUPPORTED_DTYPES:
        return False, f"dtype {q.dtype} is not supported (float16, bfloat16, float32)"
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        # seen with triton 3.6: tl.dot on bf16 tiles returns garbage in the interpreter
        return False, "bfloat16 needs a GPU (Triton's CPU interpreter computes bf16 dots wrongly); use float16/32"
    if not (q.dtype == k.dtype == v.dtype):
        return False, f"q, k, v must share one dtype (got {q.dtype}, {k.dtype}, {v.dtype})"
    if q.shape[0] != k.shape[0] or k.shape[0] != v.shape[0]:
        return False, "q, k, v must have the same batch size"
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        return False, "k and v must have the same number of heads and length"
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        return False, f"query heads ({q.shape[1]}) must be a multiple of kv heads ({k.shape[1]})"
    if q.shape[3] != k.shape[3]:
        return False, f"q and k head dims differ ({q.shape[3]} vs {k.shape[3]})"
    for name, d in (("qk", q.shape[3]), ("v", v.shape[3])):
        if not 1 <= d <= MAX_HEAD_DIM:
            return False, f"{name} head dim {d} is outside 1..{MAX_HEAD_DIM}"
    return True, ""


def check_call(q, k, v, scale: float, block_sparse: BlockSparseTensors) -> None:
    """Raise ValueError naming the problem if this call cannot run here."""
    ok, why = can_implement(q, k, v, block_q=int(block_sparse.block_size_q),
                            block_kv=int(block_sparse.block_size_kv), scale=scale)
    if not ok:
        raise ValueError(f"fallback_triton cannot run this call: {why}")
