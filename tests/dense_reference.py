"""Dense float64 attention computed straight from the Python mods (not through
the IR): the ground truth every test compares against. Mods are called once on
broadcast index grids, as torch ops broadcast."""
from __future__ import annotations

import torch


def index_grid(B, H, Sq, Skv, device="cpu"):
    ar = lambda n: torch.arange(n, device=device)  # noqa: E731
    return ar(B).view(-1, 1, 1, 1), ar(H).view(1, -1, 1, 1), ar(Sq).view(1, 1, -1, 1), ar(Skv).view(1, 1, 1, -1)


def dense_mask(mask_mod, B, H, Sq, Skv, device="cpu"):
    b, h, q, kv = index_grid(B, H, Sq, Skv, device)
    if mask_mod is None:
        return torch.ones(B, H, Sq, Skv, dtype=torch.bool, device=device)
    return torch.as_tensor(mask_mod(b, h, q, kv)).expand(B, H, Sq, Skv)


def dense_attention(q, k, v, score_mod=None, mask_mod=None, scale=None):
    """(out, lse, max_scores) in float64. Fully masked rows: out 0, lse -inf."""
    q, k, v = q.double(), k.double(), v.double()
    B, Hq, Sq, D = q.shape
    Hkv, Skv = k.shape[1], k.shape[2]
    k = k.repeat_interleave(Hq // Hkv, dim=1)
    v = v.repeat_interleave(Hq // Hkv, dim=1)
    scale = D ** -0.5 if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    b, h, qi, kvi = index_grid(B, Hq, Sq, Skv, q.device)
    if score_mod is not None:
        s = score_mod(s, b, h, qi, kvi).double()
    keep = dense_mask(mask_mod, B, Hq, Sq, Skv, q.device)
    s = s.masked_fill(~keep, float("-inf"))
    empty = ~keep.any(-1, keepdim=True)
    lse = torch.logsumexp(s.masked_fill(empty, 0.0), -1, keepdim=True)
    p = torch.exp(s - lse)
    out = p @ v
    return out, lse.squeeze(-1).masked_fill(empty.squeeze(-1), float("-inf")), s.amax(-1)


def rel_err(x, ref):
    """||x - ref|| / ||ref|| over finite reference entries (NaN in x fails)."""
    x, ref = x.double(), ref.double()
    if torch.isnan(x).any():
        return float("inf")
    fin = torch.isfinite(ref)
    if not torch.equal(torch.isfinite(x), fin) or not torch.equal(x[~fin], ref[~fin]):
        return float("inf")  # non-finite entries (-inf LSE of empty rows) must match exactly
    d = (x[fin] - ref[fin]).norm()
    n = ref[fin].norm()
    return (d / n).item() if n > 0 else d.item()


def poison_free_memory(device="cuda"):
    """Fill the CUDA caching allocator's free memory with NaN before a kernel's outputs are
    allocated, so an output element the kernel never writes shows up as NaN against the
    reference instead of passing with stale values."""
    junk = torch.full((64 << 20,), float("nan"), device=device)
    del junk
