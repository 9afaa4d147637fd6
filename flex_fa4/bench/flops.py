"""FLOP convention and the unmasked fraction it scales by.

fwd FLOPs = 4 * B * H * Sq * Skv * D * f, f = fraction of (q, kv) pairs the mask keeps
(two matmuls, QK^T and PV, 2 FLOPs per multiply-add); bwd = 2.5 x fwd (five matmuls);
fwd+bwd = 3.5 x fwd. f is counted exactly from the mask, so masked-out work never
counts: a kernel that skips it is not credited with FLOPs it did not do, and one that
computes and discards it is not flattered.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

BWD_FACTOR = 2.5
MODE_FACTOR = {"fwd": 1.0, "bwd": BWD_FACTOR, "fwdbwd": 1.0 + BWD_FACTOR}

CONVENTION = (
    "FLOPs: fwd = 4*B*H*Sq*Skv*D*f, f = fraction of (q,kv) pairs the mask keeps (counted exactly "
    "from the mask_mod); bwd = 2.5 x fwd; fwd+bwd = 3.5 x fwd. TFLOP/s = FLOPs / median time."
)


def attention_flops(B: int, H: int, Sq: int, Skv: int, D: int, fraction: float, mode: str) -> float:
    return 4.0 * B * H * Sq * Skv * D * fraction * MODE_FACTOR[mode]


def unmasked_fraction(mask_mod: Optional[Callable], B: int, H: int, Sq: int, Skv: int,
                      device="cpu", max_elems: int = 1 << 26) -> float:
    """Exact fraction of pairs `mask_mod` keeps, evaluated on broadcast index tensors
    ([B,1,1,1], [1,H,1,1], [1,1,R,1], [1,1,1,Skv]) in chunks of query rows. A mask that
    ignores b or h comes back without those dims and is counted once for all of them."""
    if mask_mod is None:
        return 1.0
    b = torch.arange(B, device=device).view(-1, 1, 1, 1)
    h = torch.arange(H, device=device).view(1, -1, 1, 1)
    kv = torch.arange(Skv, device=device).view(1, 1, 1, -1)

    def count(q0: int, q1: int) -> int:
        q = torch.arange(q0, q1, device=device).view(1, 1, -1, 1)
        m = torch.as_tensor(mask_mod(b, h, q, kv), device=device)
        full = torch.broadcast_shapes(m.shape, (B, H, q1 - q0, Skv))
        return int(m.sum()) * (_numel(full) // max(1, m.numel()))

    probe = torch.as_tensor(mask_mod(b, h, torch.zeros(1, 1, 1, 1, dtype=torch.long, device=device), kv))
    per_row = max(1, _numel(probe.shape))
    rows = max(1, max_elems // per_row)
    kept = sum(count(q0, min(Sq, q0 + rows)) for q0 in range(0, Sq, rows))
    return kept / (B * H * Sq * Skv)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
