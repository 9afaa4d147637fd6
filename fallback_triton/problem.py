"""The shape facts every launch needs, derived once from q, k, v and the BlockMask."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton

from mod_codegen.kernel_args import BlockSparseTensors

from .configs import seq_bucket


@functools.lru_cache(maxsize=None)
def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1; Triton
    itself reads it when the kernels are decorated, so it is read once here too)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class Problem:
    batch: int
    heads: int  # query heads
    kv_heads: int
    seq_q: int
    seq_k: int
    head_dim: int
    head_dim_v: int
    block_q: int  # BlockMask block sizes
    block_kv: int
    dtype: torch.dtype

    @staticmethod
    def of(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bs: BlockSparseTensors) -> "Problem":
        return Problem(q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3], v.shape[3],
                       int(bs.block_size_q), int(bs.block_size_kv), q.dtype)

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    @property
    def n_kv_blocks(self) -> int:
        return triton.cdiv(self.seq_k, self.block_kv)

    def constexprs(self) -> dict:
        """Compile-time parameters shared by all kernels."""
        return dict(_constexprs(self))

    def tune_key(self, consts: dict) -> tuple:
        """What the best tile depends on: the kernel's constexprs (mods, head dims, mask
        blocks, flags), the lengths up to a power of two, the batch * heads and dtype."""
        return (tuple(consts.items()), seq_bucket(self.seq_q), seq_bucket(self.seq_k),
                self.batch * self.heads, self.group, str(self.dtype))


@functools.lru_cache(maxsize=256)
def _constexprs(p: Problem) -> tuple:
    """Problem.constexprs, computed once per problem (it runs on every launch)."""
    return tuple(dict(
        D=p.head_dim, DV=p.head_dim_v,
        D_PAD=max(16, triton.next_power_of_2(p.head_dim)),
        DV_PAD=max(16, triton.next_power_of_2(p.head_dim_v)),
        SPARSE_Q=p.block_q, SPARSE_KV=p.block_kv,
        # tails are masked unless the lengths are whole mask blocks (then every
        # tile, a divisor of a block, is whole too)
        EVEN_Q=p.seq_q % p.block_q == 0, EVEN_KV=p.seq_k % p.block_kv == 0,
        PREC="ieee" if p.dtype == torch.float32 else "tf32",
    ).items())


def strides3(t: torch.Tensor) -> tuple[int, int, int]:
    """(b, h, s) element strides of a (B, H, S, D) tensor whose last dim is contiguous."""
    assert t.stride(3) == 1 or t.shape[3] == 1
    return (t.stride(0), t.stride(1), t.stride(2))


def contiguous_strides3(shape) -> tuple[int, int, int]:
    """(b, h, s) strides of a contiguous (B, H, S, D) tensor (what `alloc` returns)."""
    _, h, n, d = shape
    return (h * n * d, n * d, d)


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


@functools.lru_cache(maxsize=None)
def poison_outputs() -> bool:
    """Fill outputs with NaN before the kernels write them, so an unwritten element
    shows up in tests: on with FLEX_FA4_TRITON_POISON=1 and in the interpreter; off
    otherwise (a fill costs a pass over memory). Read at the first allocation."""
    flag = os.environ.get("FLEX_FA4_TRITON_POISON")
    return interpreting() if flag is None else flag not in ("", "0")


def alloc(shape, dtype: torch.dtype, device) -> torch.Tensor:
    if poison_outputs():
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)
