"""BlockMask: the block-sparsity contract every backend reads.

Basics: the (Q_LEN x KV_LEN) score matrix is cut into BLOCK_Q x BLOCK_KV
blocks. For each query-block row the mask lists the kv blocks to visit, split
into *full* blocks (every pair in range and unmasked: mask_mod is skipped) and
*partial* blocks (mask_mod is applied). Blocks in neither list are never
visited -- that is where the speed over dense attention comes from. The
transposed lists (q_*) serve the backward pass (dK/dV walk query blocks).

Details: field names, shapes and meanings match torch.nn.attention.flex_attention.
Positions past Q_LEN / KV_LEN count as masked, so a block cut by the sequence
end is never full. Leading dims are (B, H), or 1 where the mask was built with
B=None / H=None (broadcast). create_block_mask evaluates mask_mod in bounded
chunks of query-block rows and never holds the dense B x H x Q x KV mask.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

from mod_codegen import evaluate, index_grids, trace_mask_mod
from mod_codegen.kernel_args import BlockSparseTensors

log = logging.getLogger("flex_fa4")

__all__ = ["BlockMask", "create_block_mask", "and_masks", "or_masks", "noop_mask"]

# elements of the (B, H, rows, KV) chunk that create_block_mask evaluates at once
_CHUNK_ELEMENTS = 1 << 24


def noop_mask(b, h, q_idx, kv_idx):
    """Every pair takes part."""
    return b.new_ones(size=(), dtype=torch.bool)


def and_masks(*mask_mods: Callable) -> Callable:
    """A mask_mod that is the intersection of the given ones."""
    if not all(callable(m) for m in mask_mods):
        raise TypeError("and_masks takes mask_mod functions")

    def and_mask(b, h, q_idx, kv_idx):
        result = b.new_ones(size=(), dtype=torch.bool)
        for mod in mask_mods:
            result = result & mod(b, h, q_idx, kv_idx)
        return result

    and_mask.__name__ = "and(" + ", ".join(getattr(m, "__name__", "mask") for m in mask_mods) + ")"
    return and_mask


def or_masks(*mask_mods: Callable) -> Callable:
    """A mask_mod that is the union of the given ones."""
    if not all(callable(m) for m in mask_mods):
        raise TypeError("or_masks takes mask_mod functions")

    def or_mask(b, h, q_idx, kv_idx):
        result = b.new_zeros(size=(), dtype=torch.bool)
        for mod in mask_mods:
            result = result | mod(b, h, q_idx, kv_idx)
        return result

    or_mask.__name__ = "or(" + ", ".join(getattr(m, "__name__", "mask") for m in mask_mods) + ")"
    return or_mask


def _ordered(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, indices) per row of a boolean block matrix [..., n]: the selected
    block numbers first, ascending, then the rest."""
    counts = selected.sum(-1, dtype=torch.int32)
    order = torch.argsort((~selected).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    # contiguous: results of a transposed input keep its strides, and the kernels would
    # otherwise copy the q lists on every backward call (~30 us each on an H200)
    return counts.contiguous(), order.contiguous()


def _dense_from_ordered(counts: torch.Tensor, indices: torch.Tensor, n_cols: int) -> torch.Tensor:
    pos = torch.arange(indices.shape[-1], device=indices.device)
    valid = pos < counts.unsqueeze(-1)
    dense = torch.zeros(*indices.shape[:-1], n_cols + 1, dtype=torch.bool, device=indices.device)
    target = torch.where(valid, indices.long(), torch.full_like(indices.long(), n_cols))
    dense.scatter_(-1, target, True)
    return dense[..., :n_cols]


def block_states(bs: BlockSparseTensors) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (partial, full) block matrices [B', H', nQB, nKVB] from the kv lists."""
    n = bs.kv_indices.shape[-1]
    partial = _dense_from_ordered(bs.kv_num_blocks, bs.kv_indices, n)
    if bs.full_kv_indices is None:
        return partial, torch.zeros_like(partial)
    return partial, _dense_from_ordered(bs.full_kv_num_blocks, bs.full_kv_indices, n)


def _check_block_list(name: str, num: torch.Tensor, idx: torch.Tensor, n_cols: int) -> None:
    """Kernels trust these lists: counts within [0, n], listed indices in range, no repeats."""
    if ((num < 0) | (num > n_cols)).any():
        raise ValueError(f"{name}_num_blocks must lie in [0, {n_cols}]")
    used = torch.arange(idx.shape[-1], device=idx.device) < num.unsqueeze(-1)
    if ((idx < 0) | (idx >= n_cols))[used].any():
        raise ValueError(f"{name}_indices lists a block outside [0, {n_cols})")
    dense = _dense_from_ordered(num, idx, n_cols)
    if (dense.sum(-1) != num).any():
        raise ValueError(f"{name}_indices lists a block twice in one row")


class BlockMask:
    """See the module docstring. Build one with `create_block_mask` or
    `BlockMask.from_kv_blocks`."""

    def __init__(
        self,
        seq_lengths: tuple[int, int],
        kv_num_blocks: torch.Tensor,
        kv_indices: torch.Tensor,
        full_kv_num_blocks: Optional[torch.Tensor],
        full_kv_indices: Optional[torch.Tensor],
        q_num_blocks: torch.Tensor,
        q_indices: torch.Tensor,
        full_q_num_blocks: Optional[torch.Tensor],
        full_q_indices: Optional[torch.Tensor],
        BLOCK_SIZE: tuple[int, int],
        mask_mod: Optional[Callable],
    ):
        self.seq_lengths = (int(seq_lengths[0]), int(seq_lengths[1]))
        self.kv_num_blocks = kv_num_blocks
        self.kv_indices = kv_indices
        self.full_kv_num_blocks = full_kv_num_blocks
        self.full_kv_indices = full_kv_indices
        self.q_num_blocks = q_num_blocks
        self.q_indices = q_indices
        self.full_q_num_blocks = full_q_num_blocks
        self.full_q_indices = full_q_indices
        self.BLOCK_SIZE = (int(BLOCK_SIZE[0]), int(BLOCK_SIZE[1]))
        self.mask_mod = mask_mod if mask_mod is not None else noop_mask

    # -- construction
    @classmethod
    def from_block_states(cls, partial: torch.Tensor, full: torch.Tensor, seq_lengths, BLOCK_SIZE, mask_mod):
        """From boolean block matrices [B, H, nQB, nKVB] (partial / full)."""
        kv_n, kv_i = _ordered(partial)
        fkv_n, fkv_i = _ordered(full)
        q_n, q_i = _ordered(partial.transpose(-1, -2))
        fq_n, fq_i = _ordered(full.transpose(-1, -2))
        return cls(seq_lengths, kv_n, kv_i, fkv_n, fkv_i, q_n, q_i, fq_n, fq_i, BLOCK_SIZE, mask_mod)

    @classmethod
    def from_kv_blocks(
        cls,
        kv_num_blocks: torch.Tensor,
        kv_indices: torch.Tensor,
        full_kv_num_blocks: Optional[torch.Tensor] = None,
        full_kv_indices: Optional[torch.Tensor] = None,
        BLOCK_SIZE: int | tuple[int, int] = 128,
        mask_mod: Optional[Callable] = None,
        seq_lengths: Optional[tuple[int, int]] = None,
    ) -> "BlockMask":
        """From kv-block lists alone; the transposed q lists are derived."""
        if kv_indices.dim() < 2 or kv_num_blocks.shape != kv_indices.shape[:-1]:
            raise ValueError(
                f"kv_num_blocks {tuple(kv_num_blocks.shape)} must be kv_indices {tuple(kv_indices.shape)} "
                "without its last dim"
            )
        if (full_kv_num_blocks is None) != (full_kv_indices is None):
            raise ValueError("give both full_kv_num_blocks and full_kv_indices, or neither")
        bs = (BLOCK_SIZE, BLOCK_SIZE) if isinstance(BLOCK_SIZE, int) else tuple(BLOCK_SIZE)
        n_kv = kv_indices.shape[-1]
        _check_block_list("kv", kv_num_blocks, kv_indices, n_kv)
        partial = _dense_from_ordered(kv_num_blocks, kv_indices, n_kv)
        if full_kv_indices is not None:
            _check_block_list("full_kv", full_kv_num_blocks, full_kv_indices, n_kv)
            full = _dense_from_ordered(full_kv_num_blocks, full_kv_indices, n_kv)
            if (partial & full).any():
                raise ValueError("a kv block is listed both as partial and as full in the same row")
        else:
            full = torch.zeros_like(partial)
        if seq_lengths is None:
            seq_lengths = (kv_indices.shape[-2] * bs[0], n_kv * bs[1])
        return cls.from_block_states(partial, full, seq_lengths, bs, mask_mod)

    # -- views
    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (*self.kv_num_blocks.shape[:2], *self.seq_lengths)

    @property
    def device(self) -> torch.device:
        return self.kv_num_blocks.device

    def block_states(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean (partial, full) block matrices [B, H, nQB, nKVB]."""
        return block_states(self.as_tensors())

    def to_dense(self) -> torch.Tensor:
        """[B, H, nQB, nKVB] int32: 1 where a block is visited (partial or full)."""
        partial, full = self.block_states()
        return (partial | full).to(torch.int32)

    def sparsity(self) -> float:
        """Percentage of blocks that are skipped."""
        dense = self.to_dense()
        return 100.0 * (1.0 - dense.float().mean().item())

    def as_tensors(self) -> BlockSparseTensors:
        """The plain-tensor view the kernel packages take."""
        return BlockSparseTensors(
            self.kv_num_blocks, self.kv_indices, self.full_kv_num_blocks, self.full_kv_indices,
            self.q_num_blocks, self.q_indices, self.full_q_num_blocks, self.full_q_indices, *self.BLOCK_SIZE,
        )

    def to(self, device) -> "BlockMask":
        def mv(t):
            return None if t is None else t.to(device)

        return BlockMask(
            self.seq_lengths, mv(self.kv_num_blocks), mv(self.kv_indices), mv(self.full_kv_num_blocks),
            mv(self.full_kv_indices), mv(self.q_num_blocks), mv(self.q_indices), mv(self.full_q_num_blocks),
            mv(self.full_q_indices), self.BLOCK_SIZE, self.mask_mod,
        )

    def to_string(self, grid_size: int = 24, limit: int = 4) -> str:
        """Draw the block pattern: '█' full, '░' partial, ' ' skipped (blocks are
        grouped when there are more than grid_size per side)."""
        partial, full = self.block_states()
        lines = []
        B, H = partial.shape[:2]
        shown = 0
        for b in range(B):
            for h in range(H):
                if shown == limit:
                    lines.append(f"... ({B * H - limit} more (b, h) pairs)")
                    return "\n".join(lines)
                shown += 1
                lines.append(f"b={b if B > 1 else '*'}, h={h if H > 1 else '*'}")
                p, f = partial[b, h].float(), full[b, h].float()
                nq, nk = p.shape
                sq, sk = max(1, -(-nq // grid_size)), max(1, -(-nk // grid_size))
                pool = torch.nn.functional.max_pool2d
                fp = pool(f[None, None], (sq, sk), ceil_mode=True)[0, 0]
                pp = pool(p[None, None], (sq, sk), ceil_mode=True)[0, 0]
                for r in range(fp.shape[0]):
                    row = "".join("█" if fp[r, c] and not pp[r, c] else "░" if (pp[r, c] or fp[r, c]) else " "
                                  for c in range(fp.shape[1]))
                    lines.append("  |" + row + "|")
        return "\n".join(lines)

    def __repr__(self) -> str:
        name = getattr(self.mask_mod, "__name__", "mask_mod")
        head = (f"BlockMask(shape={self.shape}, BLOCK_SIZE={self.BLOCK_SIZE}, mask_mod={name}, "
                f"sparsity={self.sparsity():.2f}%)")
        return head + "\n" + self.to_string()


def create_block_mask(
    mask_mod: Callable,
    B: Optional[int],
    H: Optional[int],
    Q_LEN: int,
    KV_LEN: int,
    device=None,
    BLOCK_SIZE: int | tuple[int, int] = 128,
) -> BlockMask:
    """Evaluate `mask_mod` over (B, H, Q_LEN, KV_LEN) and keep only its block
    structure. B or H None broadcasts (the mask must not depend on it). Memory is
    bounded: query-block rows are evaluated in chunks of ~16M pairs."""
    if not callable(mask_mod):
        raise TypeError(f"mask_mod must be callable, got {type(mask_mod).__name__}")
    if Q_LEN <= 0 or KV_LEN <= 0:
        raise ValueError(f"Q_LEN and KV_LEN must be positive, got {Q_LEN} and {KV_LEN}")
    bq, bkv = (BLOCK_SIZE, BLOCK_SIZE) if isinstance(BLOCK_SIZE, int) else tuple(BLOCK_SIZE)
    if bq <= 0 or bkv <= 0:
        raise ValueError(f"BLOCK_SIZE must be positive, got {BLOCK_SIZE}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    traced = trace_mask_mod(mask_mod)
    # a mask that never reads b (or h) is evaluated once and broadcast: B*H times less work
    Bn = B if B is not None and traced.graph.uses_input("b") else 1
    Hn = H if H is not None and traced.graph.uses_input("h") else 1
    buffers = [t.to(device) for t in traced.buffers]
    nqb, nkvb = -(-Q_LEN // bq), -(-KV_LEN // bkv)
    partial = torch.zeros(Bn, Hn, nqb, nkvb, dtype=torch.bool, device=device)
    full = torch.zeros_like(partial)
    kv_pad = nkvb * bkv
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // (Bn * Hn * kv_pad * bq))
    for qb0 in range(0, nqb, rows_per_chunk):
        qb1 = min(nqb, qb0 + rows_per_chunk)
        grids = index_grids(torch.arange(Bn), torch.arange(Hn), torch.arange(qb0 * bq, qb1 * bq),
                            torch.arange(kv_pad), device=device, dtype=torch.int32)
        q_idx, kv_idx = grids["q_idx"], grids["kv_idx"]
        (allowed,) = evaluate(traced.graph, grids, buffers, traced.scalars, int_dtype=torch.int32)
        allowed = allowed.expand(Bn, Hn, q_idx.shape[2], kv_pad)
        in_range = (q_idx < Q_LEN) & (kv_idx < KV_LEN)
        allowed = allowed & in_range
        blocks = allowed.reshape(Bn, Hn, qb1 - qb0, bq, nkvb, bkv)
        count = blocks.sum(dim=(3, 5))
        full[:, :, qb0:qb1] = count == bq * bkv
        partial[:, :, qb0:qb1] = (count > 0) & (count < bq * bkv)
    if (Bn, Hn) != (B or 1, H or 1):
        partial = partial.expand(B or 1, H or 1, -1, -1)
        full = full.expand(B or 1, H or 1, -1, -1)
    return BlockMask.from_block_states(partial, full, (Q_LEN, KV_LEN), (bq, bkv), mask_mod)
