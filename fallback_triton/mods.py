"""Host-side glue between traced mods / BlockMask tensors and the kernels.

Everything a kernel launch needs from a TracedMod or BlockSparseTensors is
prepared here, so the kernel modules only launch: the generated @triton.jit
functions and their runtime argument tuples, the buffer-gradient plan (where each
(offset, value) pair of the score_mod gradient lands, and over which tile axes it
can be reduced before the atomic add), and the block lists with broadcast
strides.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from mod_codegen.emit_triton import mod_arguments, triton_function
from mod_codegen.grad import score_mod_grad
from mod_codegen.ir import DType, Graph, input_dependence
from mod_codegen.kernel_args import BlockSparseTensors

_EMPTY_ARGS = ((None,), (0,), (0,), (0,))


@dataclass(frozen=True)
class ModLaunch:
    """A mod as kernel arguments: `fn` goes in a tl.constexpr slot, `args` is the
    (bufs, sizes, strides, scalars) tuple the generated function takes."""

    fn: Any
    args: tuple

    @staticmethod
    def none() -> "ModLaunch":
        return ModLaunch(None, _EMPTY_ARGS)


def mod_launch(mod) -> ModLaunch:
    if mod is None:
        return ModLaunch.none()
    return ModLaunch(triton_function(mod.graph), mod_arguments(mod.graph, mod.buffers, mod.scalars))


# Note [buffer-gradient reduction]: the gradient graph returns, per load from a
# captured float tensor, an element offset and a value tile. An offset that does not
# depend on q_idx (or kv_idx) is constant along that tile axis, so the kernel sums the
# values along it first and issues one atomic per remaining position: an ALiBi slope
# (offset depends on h only) costs one atomic per tile instead of tile_m * tile_n
# atomics on one address. The mode is a 3-bit field per pair: bit 0 = depends on
# q_idx, bit 1 = depends on kv_idx, 4 = gradient not wanted (skip the pair). In the
# dK/dV pass a program owns one kv tile, so q-independent offsets are summed in
# registers over the whole q loop and added once per (program, head).
DEP_Q, DEP_KV, SKIP = 1, 2, 4


def _dependence(graph: Graph) -> list[int]:
    on_q, on_kv = input_dependence(graph, "q_idx"), input_dependence(graph, "kv_idx")
    return [DEP_Q * q + DEP_KV * kv for q, kv in zip(on_q, on_kv)]


@dataclass(frozen=True)
class GradLaunch:
    """The score_mod gradient as kernel arguments.

    Every float buffer's gradient lives in one fp32 workspace of `workspace_size`
    elements (`new_workspace`, zeroed per backward), each over its storage span (so a
    flat offset from the IR indexes it); `bases[i]` is where pair i's buffer starts in
    it and `modes` packs Note [buffer-gradient reduction]."""

    fn: Any
    args: tuple
    num_pairs: int
    modes: int
    bases: tuple
    workspace_size: int
    slices: tuple  # per score_mod buffer: (start, span) in the workspace, or None

    def new_workspace(self, device: torch.device) -> Optional[torch.Tensor]:
        """A zeroed workspace, or None when no gradient is scattered."""
        if not self.workspace_size:
            return None
        return torch.zeros(self.workspace_size, dtype=torch.float32, device=device)


def _span(t: torch.Tensor) -> int:
    return 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride()))


@functools.lru_cache(maxsize=256)
def _grad_plan(graph: Graph) -> tuple:
    """(jit fn, gradient graph, targets, per-pair q/kv dependence) of a score_mod graph:
    differentiating and emitting once per graph (~0.3 ms of host time per backward call
    otherwise)."""
    g = score_mod_grad(graph)
    deps = _dependence(g.graph)
    return triton_function(g.graph), g.graph, tuple(g.targets), \
        tuple(deps[g.graph.outputs[1 + 2 * i]] for i in range(len(g.targets)))


def grad_launch(mod, wanted: Optional[Sequence[bool]] = None) -> Optional[GradLaunch]:
    """`wanted[i]` False skips buffer i's gradient (None: every float buffer)."""
    if mod is None:
        return None
    fn, graph, targets, pair_deps = _grad_plan(mod.graph)
    want = [True] * len(mod.buffers) if wanted is None else [bool(w) for w in wanted]
    if len(want) != len(mod.buffers):
        raise ValueError(f"buffer_requires_grad has {len(want)} entries for {len(mod.buffers)} captured tensors")
    modes = 0
    for i, target in enumerate(targets):
        modes |= (pair_deps[i] if want[target] else SKIP) << (3 * i)
    slices: list = []
    start = 0
    for spec, buf, w in zip(mod.graph.buffers, mod.buffers, want):
        if spec.value_dtype is DType.F32 and w:
            slices.append((start, _span(buf)))
            start += _span(buf)
        else:
            slices.append(None)
    bases = tuple(slices[t][0] if slices[t] is not None else 0 for t in targets) or (0,)
    return GradLaunch(fn, mod_arguments(graph, mod.buffers, mod.scalars), len(targets), modes, bases, start,
                      tuple(slices))


def buffer_grads(mod, grad: Optional[GradLaunch], workspace: Optional[torch.Tensor]) -> list:
    """Per score_mod buffer: its gradient (shape, strides and dtype of the buffer) or None."""
    if mod is None:
        return []
    out = []
    for buf, sl in zip(mod.buffers, grad.slices):
        if sl is None:
            out.append(None)
            continue
        start, span = sl
        flat = workspace[start:start + span]
        out.append(torch.as_strided(flat, buf.shape, buf.stride()).to(buf.dtype).clone())
    return out


@dataclass(frozen=True)
class BlockList:
    """One (num, indices) pair of block lists with strides for (b, h, row) and the
    index row; a leading dim of size 1 gets stride 0 (broadcast)."""

    num: torch.Tensor
    idx: torch.Tensor
    num_strides: tuple
    idx_strides: tuple

    @staticmethod
    def of(num: torch.Tensor, idx: torch.Tensor) -> "BlockList":
        if num.dtype != torch.int32 or not num.is_contiguous():
            num = num.to(torch.int32).contiguous()
        if idx.dtype != torch.int32 or not idx.is_contiguous():
            idx = idx.to(torch.int32).contiguous()
        ns, is_ = num.stride(), idx.stride()
        bcast_b, bcast_h = num.shape[0] == 1, num.shape[1] == 1
        return BlockList(num, idx, (0 if bcast_b else ns[0], 0 if bcast_h else ns[1], ns[2]),
                         (0 if bcast_b else is_[0], 0 if bcast_h else is_[1], is_[2]))

    def args(self) -> tuple:
        return (self.num, self.idx, self.num_strides, self.idx_strides)


def kv_lists(bs: BlockSparseTensors) -> tuple[BlockList, Optional[BlockList]]:
    part = BlockList.of(bs.kv_num_blocks, bs.kv_indices)
    full = BlockList.of(bs.full_kv_num_blocks, bs.full_kv_indices) if bs.full_kv_num_blocks is not None else None
    return part, full


def transpose_lists(num: torch.Tensor, idx: torch.Tensor, n_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row lists -> column lists (kv lists per q block -> q lists per kv block),
    for metadata that lacks the q_* fields."""
    rows = num.shape[-1]
    valid = torch.arange(idx.shape[-1], device=idx.device) < num[..., None]
    dense = torch.zeros(*num.shape, n_cols + 1, dtype=torch.bool, device=num.device)
    cols = torch.where(valid, idx.long(), n_cols)
    dense.scatter_(-1, cols, True)
    dense = dense[..., :n_cols].transpose(-1, -2)  # [B', H', n_cols, rows]
    t_num = dense.sum(-1).to(torch.int32)
    order = torch.argsort((~dense).to(torch.int8), dim=-1, stable=True)
    return t_num.contiguous(), order.to(torch.int32).contiguous()[..., :rows]


def q_lists(bs: BlockSparseTensors) -> tuple[BlockList, Optional[BlockList]]:
    n_kv_blocks = bs.kv_indices.shape[-1]
    if bs.q_num_blocks is not None:
        part = BlockList.of(bs.q_num_blocks, bs.q_indices)
    else:
        part = BlockList.of(*transpose_lists(bs.kv_num_blocks, bs.kv_indices, n_kv_blocks))
    full = None
    if bs.full_kv_num_blocks is not None:
        if bs.full_q_num_blocks is not None:
            full = BlockList.of(bs.full_q_num_blocks, bs.full_q_indices)
        else:
            full = BlockList.of(*transpose_lists(bs.full_kv_num_blocks, bs.full_kv_indices, n_kv_blocks))
    return part, full


_EMPTY_LISTS: dict = {}


def empty_list(device: torch.device) -> BlockList:
    """A stand-in for absent full-block lists (the kernel never reads it), one per device."""
    if device not in _EMPTY_LISTS:
        z = torch.zeros(1, 1, 1, 1, dtype=torch.int32, device=device)
        _EMPTY_LISTS[device] = BlockList.of(z[..., 0], z)
    return _EMPTY_LISTS[device]
