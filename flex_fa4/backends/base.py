"""The small interface every attention backend implements.

flex_fa4's front end validates the user's call once and packs it into an
`AttentionCall` of plain tensors and traced mods; a backend says whether it can
serve the call (`why_not` returns the reason it cannot, or None) and computes
the forward and, for kernel backends, the backward.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from mod_codegen import TracedMod
from mod_codegen.kernel_args import BlockSparseTensors


@dataclass
class AttentionCall:
    q: torch.Tensor  # (B, Hq, Sq, D)
    k: torch.Tensor  # (B, Hkv, Skv, D)
    v: torch.Tensor  # (B, Hkv, Skv, Dv)
    scale: float
    score_mod: Optional[TracedMod]
    mask_mod: Optional[TracedMod]  # None: no pair is masked inside visited blocks
    block_sparse: BlockSparseTensors
    dense: bool = False  # no block_mask given: every pair takes part (block_sparse lists every block)
    need_lse: bool = False
    need_max_scores: bool = False
    kernel_options: Optional[dict[str, Any]] = None
    # a backend's per-call preparation (e.g. the Triton AttentionPlan), shared by the
    # copies `rebind` makes for repeated calls (Note [call cache] in call_cache.py)
    prepared: dict[str, Any] = field(default_factory=dict)

    def rebind(self, q, k, v) -> "AttentionCall":
        """This call with other q, k, v of the same layout (shares `prepared`)."""
        call = object.__new__(type(self))  # a plain dict copy; copy.copy takes the reduce protocol
        call.__dict__.update(self.__dict__)
        call.q, call.k, call.v = q, k, v
        return call

    def kept(self, name: str, build):
        """`prepared[name]`, built by `build()` on first use and then shared by every
        repeat of this call (Note [call cache])."""
        value = self.prepared.get(name)
        if value is None:
            value = self.prepared[name] = build()
        return value

    @property
    def needs_grad(self) -> bool:
        if not torch.is_grad_enabled():
            return False
        if any(t.requires_grad for t in (self.q, self.k, self.v)):
            return True
        return bool(self.score_mod and any(b.requires_grad for b in self.score_mod.buffers))

    @property
    def option(self):
        return (self.kernel_options or {}).get


class Backend:
    """Subclasses set `name` and implement `why_not` and `forward`; kernel
    backends also `backward` (the reference backend differentiates with autograd)."""

    name = "?"
    uses_autograd = False  # True: forward() is differentiable itself

    def why_not(self, call: AttentionCall) -> Optional[str]:
        raise NotImplementedError

    def forward(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(out, lse, max_scores or None)."""
        raise NotImplementedError

    def backward(self, call: AttentionCall, out, lse, dout):
        """(dq, dk, dv, [d buffer or None for each score_mod buffer])."""
        raise NotImplementedError
