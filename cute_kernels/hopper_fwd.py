"""Warp-specialized FlexAttention forward for Hopper (sm90a), written in CuTeDSL.

What it does: O = softmax(mod(Q K^T * scale)) V per (batch, q-head), with score_mod and
mask_mod inlined, optional block sparsity (BlockMask tensors), GQA, any sequence lengths.
Outputs O (q dtype), LSE (fp32, natural log, -inf for empty rows) and optionally the
row max of the modded scores.

Structure (FA3/FA4 style):
- warpgroup 0, warp 0: producer. TMA loads Q once and K/V tiles through two mbarrier
  rings (PipelineTmaAsync), registers lowered with setmaxregister (24; 32 with three
  consumer warpgroups).
- warpgroups 1..2: consumers (240 registers), 64 q-rows each of the 128-row tile; at
  hdim 64 without a 128-row BlockMask, warpgroups 1..3 (160 registers) and 192 rows.
  QK^T is an SS wgmma, P stays in registers for the RS wgmma P @ V
  (Note [P stays in registers]); QK^T(j) overlaps P V(j-1) inside a warpgroup
  (Note [intra-warpgroup overlap]) and the warpgroups take turns issuing their GEMMs
  (Note [pingpong], hdim <= 128). The O accumulator is rescaled only when a row max
  moved far (Note [lazy rescale] in softmax.py).
- masked launches walk q-tiles last-to-first (Note [LPT order]). With a BlockMask the
  producer reads the block lists and passes each KV tile's index to the consumers next
  to its K slot (Note [kv tile ring]).
- epilogue: O -> 16-bit -> smem -> one TMA store; LSE from registers. sO has its own
  buffer where it fits (Note [own sO]), else aliases sQ; at hdim 128 Q has two buffers,
  so the next tile's Q loads during this one (Note [Q ring]).
- persistent at head dims 128 / 256 and three-warpgroup 64 (config.choose_config): one
  CTA per SM walks tiles (Note [tile loop]), taking each next tile from a global counter
  (Note [dynamic tile scheduler]); other head dims run one CTA per tile; FwdConfig can
  ask for any of the three schedules, static round-robin persistence included.
- at hdim 128 with a BlockMask, a tile's end overlaps the next tile's start inside the
  pingpong schedule, with a per-warpgroup epilogue (Note [cross-tile overlap]).

Constraints: fp16/bf16, head dims in config.SUPPORTED_HEAD_DIM_PAIRS, last dim of q/k/v/o
contiguous and other strides 16-byte aligned (TMA).
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import cuda.bindings.driver as cuda

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass import Float32, Int32, const_expr
from cutlass.cute.nvgpu import OperandMajorMode, cpasync, warpgroup
from cutlass.tensor_utils import LayoutEnum

from .block_sparse import sparse_row, sparse_tile
from .config import FwdConfig
from .fragments import as_mn, as_operand_a, store_16bit, transpose_smem_view
from .apply_mods import apply_mask_mod, apply_score_mod, apply_seqlen_mask
from .mods import ModSpec
from .softmax import LOG2_E, OnlineSoftmax, rescale_rows

# Named barrier ids (0 is __syncthreads).
BAR_EPILOGUE_SQ_FREE = 1
BAR_EPILOGUE_SO_READY = 2
BAR_EPILOGUE_SO_FREE = 3
BAR_SCHED_WG0 = 4  # 4, 5 (, 6): one per consumer warpgroup
BAR_WG_EPILOGUE0 = 7  # 7..10: two per consumer warpgroup (Note [cross-tile overlap])


def _smem_layout(dtype, rows: int, cols: int, stages: Optional[int] = None):
    """Row-major (cols contiguous) swizzled smem layout, optionally staged."""
    atom = warpgroup.make_smem_layout_atom(
        sm90_utils.get_smem_layout_atom(LayoutEnum.ROW_MAJOR, dtype, cols), dtype
    )
    if stages is None:
        return cute.tile_to_shape(atom, (rows, cols), order=(0, 1))
    return cute.tile_to_shape(atom, (rows, cols, stages), order=(0, 1, 2))


def _shared_storage(dtype, stages: int, q_stages: int, q_elems: int, k_elems: int,
                    v_elems: int, o_elems: int, separate_o: bool):
    """The kernel's shared memory struct. sO aliases sQ unless separate_o.

    Note [own sO]: with sO aliasing sQ, a persistent CTA can load its next tile's Q only
    after the epilogue's TMA store has read sO, so every tile pays the epilogue plus a Q
    load before its first QK^T. With its own sO (FwdConfig.separate_o) the consumers
    release Q right after the mainloop, the producer loads the next Q during the epilogue,
    and the store is waited for only before the next epilogue writes sO (and once before
    the CTA exits). At hdim 128 it costs the third K/V stage (Q + O + 2 stages = 193 KiB)
    and still won everywhere (config.choose_config); at hdim 256 it does not fit. With the
    second Q buffer (Note [Q ring]) hdim 128 takes 225 KiB."""
    fields = {
        "mbar_q": cute.struct.MemRange[cutlass.Int64, q_stages * 2],
        "mbar_k": cute.struct.MemRange[cutlass.Int64, stages * 2],
        "mbar_v": cute.struct.MemRange[cutlass.Int64, stages * 2],
        "mbar_tile": cute.struct.MemRange[cutlass.Int64, 2 * 2],  # Note [dynamic tile scheduler]
        "tile_ids": cute.struct.MemRange[Int32, 2],
        "kv_tiles": cute.struct.MemRange[Int32, stages],  # Note [kv tile ring]
        "sQ": cute.struct.Align[cute.struct.MemRange[dtype, q_elems if separate_o
                                                     else max(q_elems, o_elems)], 1024],
        "sK": cute.struct.Align[cute.struct.MemRange[dtype, k_elems], 1024],
        "sV": cute.struct.Align[cute.struct.MemRange[dtype, v_elems], 1024],
    }
    if separate_o:
        fields["sO"] = cute.struct.Align[cute.struct.MemRange[dtype, o_elems], 1024]
    return cute.struct(type("SharedStorage", (), {"__annotations__": fields}))


@cute.jit
def _gemm(tiled_mma: cute.TiledMma, acc: cute.Tensor, tCrA: cute.Tensor, tCrB: cute.Tensor,
          zero_init: cutlass.Constexpr[bool], wait: cutlass.Constexpr[int]):
    """One warpgroup-wide wgmma chain over the K mode; wait < 0 leaves it in flight."""
    warpgroup.fence()
    atom = cute.make_mma_atom(tiled_mma.op)
    atom.set(warpgroup.Field.ACCUMULATE, not zero_init)
    for k in cutlass.range_constexpr(cute.size(tCrA.shape[2])):
        cute.gemm(atom, acc, tCrA[None, None, k], tCrB[None, None, k], acc)
        atom.set(warpgroup.Field.ACCUMULATE, True)
    warpgroup.commit_group()
    if const_expr(wait >= 0):
        warpgroup.wait_group(wait)


class HopperFlexFwd:
    def __init__(self, dtype, cfg: FwdConfig, score_mod: Optional[ModSpec],
                 mask_mod: Optional[ModSpec], has_sparse: bool, has_full: bool,
                 q_ratio: int = 1, kv_ratio: int = 1):
        self.dtype = dtype
        self.cfg = cfg
        self.tile_m, self.tile_n = cfg.tile_m, cfg.tile_n
        self.hd, self.hdv = cfg.head_dim, cfg.head_dim_v
        self.num_stages = cfg.num_stages
        self.score_mod = score_mod
        self.mask_mod = mask_mod
        self.has_sparse = has_sparse
        self.has_full = has_full
        # BlockMask block / kernel tile, per axis (Note [mask blocks vs kernel tiles])
        self.q_ratio, self.kv_ratio = q_ratio, kv_ratio
        self.reverse_m = cfg.lpt and (mask_mod is not None or has_sparse)
        self.num_consumer_threads = 128 * cfg.num_consumer_wgs
        self.num_threads = 128 + self.num_consumer_threads
        # a pingpong barrier joins the warpgroup waiting for its turn and the one handing it over
        self.sched_threads = 256
        self.n_score_bufs = score_mod.num_buffers if score_mod is not None else 0
        self.n_score_scalars = len(score_mod.scalar_types) if score_mod is not None else 0

    def pv_tiled_mma(self, wgs: int) -> cute.TiledMma:
        """P V's tiled MMA over `wgs` warpgroups of 64 rows (P from registers)."""
        return sm90_utils.make_trivial_tiled_mma(
            self.dtype, self.dtype, OperandMajorMode.K, OperandMajorMode.MN,
            Float32, atom_layout_mnk=(wgs, 1, 1), tiler_mn=(64, self.hdv),
            a_source=warpgroup.OperandSource.RMEM)

    # ------------------------------------------------------------------ host side
    @cute.jit
    def __call__(
        self,
        mQ: cute.Tensor,  # (b, hq, sq, d)
        mK: cute.Tensor,  # (b, hkv, sk, d)
        mV: cute.Tensor,  # (b, hkv, sk, dv)
        mO: cute.Tensor,  # (b, hq, sq, dv)
        mLSE: cute.Tensor,  # (b, hq, sq) fp32
        mMax: Optional[cute.Tensor],  # (b, hq, sq) fp32 or None
        softmax_scale: Float32,
        sparse,  # (cnt, idx, full_cnt | None, full_idx | None) or None
        num_sms: Int32,  # persistent grid size
        l2_heads: Int32,  # (batch, head) pairs whose K/V fit in L2 (Note [LPT order])
        tile_counter: Optional[cute.Tensor],  # (2,) int32 zeros, FwdConfig.dynamic only
        aux_tensors,  # tuple: score_mod buffers then mask_mod buffers
        aux_scalars,  # tuple: score_mod scalars then mask_mod scalars
        stream: cuda.CUstream,
    ):
        aux_tensors = () if const_expr(aux_tensors is None) else aux_tensors
        aux_scalars = () if const_expr(aux_scalars is None) else aux_scalars
        # TMA wants (seq, dim, head, batch): dim is the contiguous mode.
        perm = [2, 3, 1, 0]
        mQ, mK, mV, mO = [cute.make_tensor(t.iterator, cute.select(t.layout, mode=perm))
                          for t in (mQ, mK, mV, mO)]

        tiled_mma_qk = sm90_utils.make_trivial_tiled_mma(
            self.dtype, self.dtype, OperandMajorMode.K, OperandMajorMode.K,
            Float32, atom_layout_mnk=(self.cfg.num_consumer_wgs, 1, 1),
            tiler_mn=(64, self.tile_n))
        tiled_mma_pv = self.pv_tiled_mma(self.cfg.num_consumer_wgs)

        q_stages = self.cfg.q_stages
        sQ_layout = _smem_layout(self.dtype, self.tile_m, self.hd,
                                 q_stages if const_expr(q_stages > 1) else None)
        sQ_stage = cute.select(sQ_layout, mode=[0, 1]) if const_expr(q_stages > 1) else sQ_layout
        sK_layout = _smem_layout(self.dtype, self.tile_n, self.hd, self.num_stages)
        sV_layout = _smem_layout(self.dtype, self.tile_n, self.hdv, self.num_stages)
        # a per-warpgroup epilogue stores each warpgroup's 64 rows on its own
        # (Note [cross-tile overlap]): one (64, dv) stage per warpgroup
        o_rows = 64 if const_expr(self.cfg.tile_overlap) else self.tile_m
        sO_layout = _smem_layout(self.dtype, o_rows, self.hdv,
                                 self.cfg.num_consumer_wgs if const_expr(o_rows == 64) else None)
        sO_stage = cute.select(sO_layout, mode=[0, 1]) if const_expr(o_rows == 64) else sO_layout

        g2s = cpasync.CopyBulkTensorTileG2SOp()
        tma_atom_Q, tma_Q = cpasync.make_tiled_tma_atom(g2s, mQ, sQ_stage, (self.tile_m, self.hd))
        tma_atom_K, tma_K = cpasync.make_tiled_tma_atom(
            g2s, mK, cute.select(sK_layout, mode=[0, 1]), (self.tile_n, self.hd), 1)
        tma_atom_V, tma_V = cpasync.make_tiled_tma_atom(
            g2s, mV, cute.select(sV_layout, mode=[0, 1]), (self.tile_n, self.hdv), 1)
        tma_atom_O, tma_O = cpasync.make_tiled_tma_atom(
            cpasync.CopyBulkTensorTileS2GOp(), mO, sO_stage, (o_rows, self.hdv))
        self.tx_q = cute.size_in_bytes(self.dtype, sQ_stage)
        self.tx_k = cute.size_in_bytes(self.dtype, cute.select(sK_layout, mode=[0, 1]))
        self.tx_v = cute.size_in_bytes(self.dtype, cute.select(sV_layout, mode=[0, 1]))

        self.shared_storage = _shared_storage(
            self.dtype, self.num_stages, q_stages, cute.cosize(sQ_layout),
            cute.cosize(sK_layout), cute.cosize(sV_layout), cute.cosize(sO_layout),
            self.cfg.separate_o)

        # Note [scale placement]: without a score_mod the scale folds into exp2's
        # argument; with one, flex semantics apply the scale before the mod, so the
        # softmax itself only converts to base 2.
        if const_expr(self.score_mod is None):
            scale_log2 = softmax_scale * LOG2_E
        else:
            scale_log2 = Float32(LOG2_E)

        num_tiles = (cute.ceil_div(cute.size(mQ.shape[0]), self.tile_m)
                     * cute.size(mQ.shape[2]) * cute.size(mQ.shape[3]))
        grid = (cutlass.min(num_tiles, num_sms) if const_expr(self.cfg.persistent) else num_tiles,
                1, 1)
        qhead_per_kvhead = cute.size(mQ.shape[2]) // cute.size(mK.shape[2])
        self.kernel(
            tma_Q, tma_K, tma_V, tma_O, mLSE, mMax,
            tma_atom_Q, tma_atom_K, tma_atom_V, tma_atom_O,
            scale_log2, softmax_scale, qhead_per_kvhead, cute.size(mK.shape[0]), l2_heads,
            tile_counter, sparse, aux_tensors, aux_scalars,
            sQ_layout, sK_layout, sV_layout, sO_layout, tiled_mma_qk, tiled_mma_pv,
        ).launch(grid=grid, block=[self.num_threads, 1, 1], stream=stream, min_blocks_per_mp=1)

    # ---------------------------------------------------------------- device side
    @cute.kernel
    def kernel(
        self,
        mQ: cute.Tensor, mK: cute.Tensor, mV: cute.Tensor, mO: cute.Tensor,
        mLSE: cute.Tensor, mMax: Optional[cute.Tensor],
        tma_atom_Q: cute.CopyAtom, tma_atom_K: cute.CopyAtom,
        tma_atom_V: cute.CopyAtom, tma_atom_O: cute.CopyAtom,
        scale_log2: Float32, softmax_scale: Float32, qhead_per_kvhead: Int32, seqlen_k: Int32,
        l2_heads: Int32, tile_counter: Optional[cute.Tensor], sparse, aux_tensors, aux_scalars,
        sQ_layout: cute.ComposedLayout, sK_layout: cute.ComposedLayout,
        sV_layout: cute.ComposedLayout, sO_layout: cute.ComposedLayout,
        tiled_mma_qk: cute.TiledMma, tiled_mma_pv: cute.TiledMma,
    ):
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        if warp_idx == 0:
            for atom in (tma_atom_Q, tma_atom_K, tma_atom_V, tma_atom_O):
                cpasync.prefetch_descriptor(atom)

        smem = cutlass.memory.SmemAllocator()
        storage = smem.allocate(self.shared_storage)
        producer = pipeline.CooperativeGroup(pipeline.Agent.Thread, 1)
        # PipelineTmaAsync releases with one elected lane per consumer warp.
        consumers = pipeline.CooperativeGroup(pipeline.Agent.Thread, self.num_consumer_threads // 32)
        pipe_q = pipeline.PipelineTmaAsync.create(
            num_stages=self.cfg.q_stages, producer_group=producer, consumer_group=consumers,
            tx_count=self.tx_q, barrier_storage=storage.mbar_q.data_ptr(), defer_sync=True)
        pipe_k = pipeline.PipelineTmaAsync.create(
            num_stages=self.num_stages, producer_group=producer, consumer_group=consumers,
            tx_count=self.tx_k, barrier_storage=storage.mbar_k.data_ptr(), defer_sync=True)
        pipe_v = pipeline.PipelineTmaAsync.create(
            num_stages=self.num_stages, producer_group=producer, consumer_group=consumers,
            tx_count=self.tx_v, barrier_storage=storage.mbar_v.data_ptr(), defer_sync=True)
        sched = None
        if const_expr(self.cfg.dynamic):
            # Note [dynamic tile scheduler]: the producer warp hands each tile id to the
            # consumers through a 2-deep ring in shared memory.
            pipe_tile = pipeline.PipelineAsync.create(
                num_stages=2, producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 32),
                consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, self.num_consumer_threads),
                barrier_storage=storage.mbar_tile.data_ptr(), defer_sync=True)
            sched = (pipe_tile, storage.tile_ids.get_tensor(cute.make_layout(2)), tile_counter)
        s_kv = storage.kv_tiles.get_tensor(cute.make_layout(self.num_stages))
        cute.arch.mbarrier_init_fence()
        cute.arch.sync_threads()

        sQ = storage.sQ.get_tensor(sQ_layout.outer, swizzle=sQ_layout.inner)
        sK = storage.sK.get_tensor(sK_layout.outer, swizzle=sK_layout.inner)
        sV = storage.sV.get_tensor(sV_layout.outer, swizzle=sV_layout.inner)
        o_buf = storage.sO if const_expr(self.cfg.separate_o) else storage.sQ
        sO = o_buf.get_tensor(sO_layout.outer, swizzle=sO_layout.inner)

        # Note [tile loop]: every CTA walks linear tile ids bid, bid + grid, ...; a
        # non-persistent launch has one CTA per tile, so the loop runs once.
        # Note [dynamic tile scheduler]: with FwdConfig.dynamic a persistent CTA starts at
        # its block id and then takes tile grid + atomicAdd(counter, 1), so a CTA that drew
        # light tiles (causal: early q-tiles) takes more of them, and the LPT order of the
        # ids (heaviest first) is kept across CTAs. The producer warp fetches the next id
        # while its K/V loads are in flight and passes it to the consumer warpgroups through
        # a 2-slot ring (PipelineAsync; the mbarrier arrive/wait orders the slot's write and
        # read). The counter starts at zero and the kernel leaves it at zero (Note
        # [self-resetting counter]).
        ids = (cute.ceil_div(cute.size(mQ.shape[0]), self.tile_m), cute.size(mQ.shape[2]),
               cute.size(mQ.shape[3]), l2_heads)  # (q tiles, q heads, batch, Note [LPT order])
        if warp_idx < 4:
            cute.arch.setmaxregister_decrease(self.cfg.producer_regs)
            if warp_idx == 0:
                self.load(mQ, mK, mV, sQ, sK, sV, tma_atom_Q, tma_atom_K, tma_atom_V,
                          pipe_q, pipe_k, pipe_v, s_kv, qhead_per_kvhead, seqlen_k, ids, sparse,
                          sched)
        else:
            cute.arch.setmaxregister_increase(self.cfg.consumer_regs)
            tidx = cute.arch.thread_idx()[0] - 128
            self.consume(mO, mLSE, mMax, sQ, sK, sV, sO, tma_atom_O, tiled_mma_qk, tiled_mma_pv,
                         pipe_q, pipe_k, pipe_v, s_kv, tidx, warp_idx, scale_log2,
                         softmax_scale, seqlen_k, ids, sparse, aux_tensors, aux_scalars, sched)

    @cute.jit
    def decode_tile(self, tile: Int32, ids):
        """Linear tile id -> (m_block, head, batch).

        Note [LPT order]: with a mask, late q-tiles usually have the most KV tiles
        (causal-like), and CTAs launch in id order. The (batch, head) pairs are cut into
        sections of `l2_heads` whose K/V fit in L2 together (Note [L2 sections] in
        interface.py); inside a section the tiles go heaviest q-tile first across all its
        heads, so light tiles fill the last wave while the CTAs in flight share a few
        heads' K/V in L2. Without a mask, a head's q-tiles run together in order."""
        num_m, n_h, n_b, l2_heads = ids
        m_block, hb = tile % num_m, tile // num_m
        if const_expr(self.reverse_m):
            n_hb = n_h * n_b
            section = tile // (l2_heads * num_m)
            first_hb = section * l2_heads
            heads_here = cutlass.min(l2_heads, n_hb - first_hb)
            r = tile - section * (l2_heads * num_m)
            m_block = num_m - 1 - r // heads_here
            hb = first_hb + r % heads_here
        return m_block, hb % n_h, hb // n_h

    @cute.jit
    def visit_lists(self, m_block, head_idx, batch_idx, seqlen_k, sparse):
        """(#tiles needing mask_mod, #tiles without, partial row, full row) of this q-tile.

        Note [visit order]: without sparsity, KV tiles from last to first (the seqlen tail
        first); with it, the partial blocks' tiles, then the full blocks' tiles. The producer
        walks the two lists (visit_tile) and hands each tile's index to the consumers
        (Note [kv tile ring]), which read only the counts: tile t gets mask_mod when
        t < #partial. Without sparsity every tile is 'partial' when there is a mask_mod
        and 'full' otherwise; the rows are None."""
        n_part, n_full = Int32(0), Int32(0)
        part_row, full_row = None, None
        if const_expr(self.has_sparse):
            n_part, n_full, part_row, full_row = sparse_row(
                sparse, batch_idx, head_idx, m_block, self.q_ratio, self.kv_ratio)
        else:
            total = cute.ceil_div(seqlen_k, self.tile_n)
            if const_expr(self.mask_mod is not None):
                n_part = total
            else:
                n_full = total
        return n_part, n_full, part_row, full_row

    @cute.jit
    def tile_work(self, tile, n_tiles, ids, seqlen_k, sparse):
        """(m_block, head, batch, #partial tiles, #full tiles) of a tile id; zeros for
        the id past the last tile that ends a dynamic schedule."""
        m_block, head_idx, batch_idx = Int32(0), Int32(0), Int32(0)
        n_part, n_full = Int32(0), Int32(0)
        if tile < n_tiles:
            m_block, head_idx, batch_idx = self.decode_tile(tile, ids)
            n_part, n_full, _, _ = self.visit_lists(m_block, head_idx, batch_idx, seqlen_k,
                                                    sparse)
        return m_block, head_idx, batch_idx, n_part, n_full

    @cute.jit
    def list_tile(self, row, t: Int32, seqlen_k: Int32) -> Int32:
        """KV tile index of the t-th tile of a visit list (row None: the dense order)."""
        n_block = Int32(0)
        if const_expr(not self.has_sparse):
            n_block = cute.ceil_div(seqlen_k, self.tile_n) - 1 - t
        else:
            n_block = sparse_tile(row, t, self.kv_ratio)
        return n_block

    @cute.jit
    def load(self, mQ, mK, mV, sQ, sK, sV, tma_atom_Q, tma_atom_K, tma_atom_V,
             pipe_q, pipe_k, pipe_v, s_kv, qhead_per_kvhead, seqlen_k, ids, sparse, sched):
        q_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer,
                                               self.cfg.q_stages)
        state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.num_stages)
        args = (mQ, mK, mV, sQ, sK, sV, tma_atom_Q, tma_atom_K, tma_atom_V, pipe_q, pipe_k,
                pipe_v, s_kv, qhead_per_kvhead, seqlen_k, ids, sparse)
        tile = cute.arch.block_idx()[0]
        if const_expr(not self.cfg.persistent):
            self.load_tile(tile, q_state, state, *args)
        elif const_expr(not self.cfg.dynamic):
            num_m, n_h, n_b, _ = ids
            while tile < num_m * n_h * n_b:
                q_state, state = self.load_tile(tile, q_state, state, *args)
                tile += cute.arch.grid_dim()[0]
        else:
            num_m, n_h, n_b, _ = ids
            pipe_tile, s_tile, counter = sched
            t_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, 2)
            t_state = self.publish_tile(tile, t_state, pipe_tile, s_tile)
            while tile < num_m * n_h * n_b:
                q_state, state = self.load_tile(tile, q_state, state, *args)
                # the next tile id, fetched while this tile's K/V loads are in flight
                taken = Int32(0)
                if cute.arch.lane_idx() == 0:
                    taken = cute.arch.atomic_add(counter.iterator, Int32(1))
                tile = cute.arch.shuffle_sync(taken, 0) + cute.arch.grid_dim()[0]
                t_state = self.publish_tile(tile, t_state, pipe_tile, s_tile)
            # Note [self-resetting counter]: counter = (next tile, CTAs done). Each CTA
            # counts itself done after its last fetch; the last one to do so knows that
            # no fetch is left in this launch and zeroes both words, so the next launch on
            # the stream finds them zero without a memset kernel before it.
            if cute.arch.lane_idx() == 0:
                cute.arch.fence_acq_rel_gpu()
                done = cute.arch.atomic_add(counter.iterator + 1, Int32(1))
                if done == cute.arch.grid_dim()[0] - 1:
                    cute.arch.fence_acq_rel_gpu()
                    counter[0] = Int32(0)
                    counter[1] = Int32(0)

    @cute.jit
    def publish_tile(self, tile, t_state, pipe_tile, s_tile):
        """Producer side of Note [dynamic tile scheduler]: one slot of the ring."""
        pipe_tile.producer_acquire(t_state)
        if cute.arch.lane_idx() == 0:
            s_tile[t_state.index] = tile
        pipe_tile.producer_commit(t_state)
        t_state.advance()
        return t_state

    @cute.jit
    def receive_tile(self, t_state, pipe_tile, s_tile):
        """Consumer side of Note [dynamic tile scheduler]."""
        pipe_tile.consumer_wait(t_state)
        tile = s_tile[t_state.index]
        pipe_tile.consumer_release(t_state)
        t_state.advance()
        return tile, t_state

    @cute.jit
    def load_tile(self, tile, q_state, state, mQ, mK, mV, sQ, sK, sV, tma_atom_Q, tma_atom_K,
                  tma_atom_V, pipe_q, pipe_k, pipe_v, s_kv, qhead_per_kvhead, seqlen_k, ids,
                  sparse):
        m_block, head_idx, batch_idx = self.decode_tile(tile, ids)
        n_part, n_full, part_row, full_row = self.visit_lists(m_block, head_idx, batch_idx,
                                                              seqlen_k, sparse)
        head_kv = head_idx // qhead_per_kvhead
        one = cute.make_layout(1)
        gQ = cute.local_tile(mQ[None, None, head_idx, batch_idx], (self.tile_m, self.hd),
                             (m_block, 0))
        gK = cute.local_tile(mK[None, None, head_kv, batch_idx], (self.tile_n, self.hd), (None, 0))
        gV = cute.local_tile(mV[None, None, head_kv, batch_idx], (self.tile_n, self.hdv), (None, 0))
        tQsQ, tQgQ = cpasync.tma_partition(tma_atom_Q, 0, one, cute.group_modes(sQ, 0, 2),
                                           cute.group_modes(gQ, 0, 2))
        tKsK, tKgK = cpasync.tma_partition(tma_atom_K, 0, one, cute.group_modes(sK, 0, 2),
                                           cute.group_modes(gK, 0, 2))
        tVsV, tVgV = cpasync.tma_partition(tma_atom_V, 0, one, cute.group_modes(sV, 0, 2),
                                           cute.group_modes(gV, 0, 2))
        kv = (tma_atom_K, tma_atom_V, tKgK, tKsK, tVgV, tVsV, pipe_k, pipe_v, s_kv)
        total = n_part + n_full
        # Note [Q first]: a fresh CTA loads Q first, then its K/V tiles, as FA3/FA4 do. A
        # persistent CTA loads its next tile's first K/V tile before Q instead: Q waits for
        # the previous tile to release sQ (after its mainloop with its own sO, after its
        # epilogue when sO aliases sQ: Note [own sO]), and the K/V load overlaps that wait.
        # Note [Q ring]: with two Q buffers (FwdConfig.q_stages) the previous tile holds
        # the other one, so Q does not wait for it and goes first again: it is loaded as
        # soon as the producer reaches this tile, about num_stages K/V tiles before the
        # consumers finish the previous one, and has landed when they get here.
        first = 0
        if const_expr(self.cfg.persistent and self.cfg.q_stages == 1):
            if total > 0:
                n_block = self.visit_tile(Int32(0), n_part, part_row, full_row, seqlen_k)
                state = self.load_kv(n_block, state, *kv)
            first = 1
        pipe_q.producer_acquire(q_state)
        if const_expr(self.cfg.q_stages > 1):
            tQsQ = tQsQ[None, q_state.index]
        cute.copy(tma_atom_Q, tQgQ, tQsQ, tma_bar_ptr=pipe_q.producer_get_barrier(q_state))
        q_state.advance()
        for t in cutlass.range(first, total, unroll=1):
            n_block = self.visit_tile(t, n_part, part_row, full_row, seqlen_k)
            state = self.load_kv(n_block, state, *kv)
        return q_state, state

    @cute.jit
    def load_kv(self, n_block, state, tma_atom_K, tma_atom_V, tKgK, tKsK, tVgV, tVsV,
                pipe_k, pipe_v, s_kv):
        """Loads KV tile n_block into the ring slot `state`.

        Note [kv tile ring]: with a BlockMask the producer also writes n_block to the
        slot's entry of s_kv, between waiting for the slot to be free and its arrive on
        the slot's full barrier (which releases the write to whoever waits on it). The
        consumers read it there after their wait for K instead of reading the block lists
        themselves: a full causal KV step went from 438 to 427 SASS instructions (the
        dense step: 426; tools/kernel_sass.py) and masked cases gained 2-5% on the H100
        (NOTES.md, session 10). Every lane writes the same value, so the elected lane
        that arrives has written it."""
        if const_expr(self.has_sparse):
            pipe_k.sync_object_empty.wait(state.index, state.phase)
            s_kv[state.index] = n_block
            pipe_k.producer_acquire(state, try_acquire_token=True)  # the arrive only
        else:
            pipe_k.producer_acquire(state)
        cute.copy(tma_atom_K, tKgK[None, n_block], tKsK[None, state.index],
                  tma_bar_ptr=pipe_k.producer_get_barrier(state))
        pipe_v.producer_acquire(state)
        cute.copy(tma_atom_V, tVgV[None, n_block], tVsV[None, state.index],
                  tma_bar_ptr=pipe_v.producer_get_barrier(state))
        state.advance()
        return state

    @cute.jit
    def consume(self, mO, mLSE, mMax, sQ, sK, sV, sO, tma_atom_O, tiled_mma_qk, tiled_mma_pv,
                pipe_q, pipe_k, pipe_v, s_kv, tidx, warp_idx, scale_log2, softmax_scale,
                seqlen_k, ids, sparse, aux_tensors, aux_scalars, sched):
        wg = cute.arch.make_warp_uniform(tidx // 128)
        thr_mma_qk = tiled_mma_qk.get_slice(tidx)
        wg_mma_qk = tiled_mma_qk.get_slice(wg * 128)
        wg_mma_pv = tiled_mma_pv.get_slice(wg * 128)
        tSrQ = wg_mma_qk.make_fragment_A(wg_mma_qk.partition_A(sQ))
        tSrK = wg_mma_qk.make_fragment_B(wg_mma_qk.partition_B(sK))
        tOrVt = wg_mma_pv.make_fragment_B(wg_mma_pv.partition_B(transpose_smem_view(sV)))
        s_shape = wg_mma_qk.partition_shape_C((self.tile_m, self.tile_n))
        # rows per thread = row halves (2) x MMA_M of the ((2, 2, N/8), MMA_M, MMA_N) fragment
        softmax = OnlineSoftmax(scale_log2, s_shape[0][1] * s_shape[1], self.cfg.lazy_rescale)

        q_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer,
                                               self.cfg.q_stages)
        state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.num_stages)
        if const_expr(self.cfg.pingpong):
            # Note [pingpong]: the consumer warpgroups take turns issuing their GEMMs
            # (named barriers 4, 5, ...), so one WG's softmax overlaps the other's
            # tensor-core work. WG 0 gets the first turn; each tile leaves one pending
            # arrival for WG 0 again, so the turns stay balanced across tiles.
            if wg == 0:
                cute.arch.barrier_arrive(barrier_id=BAR_SCHED_WG0,
                                         number_of_threads=self.sched_threads)
        frags = (s_shape, wg_mma_pv, tSrQ, tSrK, tOrVt, softmax, wg, thr_mma_qk)
        args = (mO, mLSE, mMax, sO, tma_atom_O, tiled_mma_qk, tiled_mma_pv, pipe_q, pipe_k,
                pipe_v, s_kv, tidx, warp_idx, softmax_scale, seqlen_k, ids, sparse, aux_tensors,
                aux_scalars)
        tile = cute.arch.block_idx()[0]
        if const_expr(not self.cfg.persistent):
            # Note [single tile]: no tile loop here. A loop around the mainloop keeps more
            # values live and made ptxas serialize the wgmmas at hdim 128 (C7512;
            # 635 -> 470 TFLOP/s noop), so the persistent loop is a separate variant.
            self.consume_tile(tile, q_state, state, frags, *args)
        elif const_expr(not self.cfg.dynamic):
            num_m, n_h, n_b, _ = ids
            while tile < num_m * n_h * n_b:
                q_state, state = self.consume_tile(tile, q_state, state, frags, *args)
                tile += cute.arch.grid_dim()[0]
        elif const_expr(self.cfg.tile_overlap):
            self.consume_overlapped(q_state, state, frags, sched, *args)
        else:
            num_m, n_h, n_b, _ = ids
            pipe_tile, s_tile, _ = sched
            t_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, 2)
            tile, t_state = self.receive_tile(t_state, pipe_tile, s_tile)
            while tile < num_m * n_h * n_b:
                q_state, state = self.consume_tile(tile, q_state, state, frags, *args)
                tile, t_state = self.receive_tile(t_state, pipe_tile, s_tile)
        if const_expr(self.cfg.separate_o):
            # the last O store must read sO before the CTA exits (Note [own sO])
            if self.store_warp(warp_idx):
                cute.arch.cp_async_bulk_wait_group(0, read=True)

    def store_warp(self, warp_idx):
        """Whether this warp issues (and waits for) the O stores: the first consumer warp,
        or each consumer warpgroup's first warp with per-warpgroup epilogues."""
        if const_expr(self.cfg.tile_overlap):
            return warp_idx % 4 == 0
        return warp_idx == 4

    @cute.jit
    def consume_tile(self, tile, q_state, state, frags, mO, mLSE, mMax, sO, tma_atom_O,
                     tiled_mma_qk, tiled_mma_pv, pipe_q, pipe_k, pipe_v, s_kv, tidx, warp_idx,
                     softmax_scale, seqlen_k, ids, sparse, aux_tensors, aux_scalars):
        s_shape, wg_mma_pv, tSrQ, tSrK, tOrVt, softmax, wg, thr_mma_qk = frags
        # Register fragments are created per tile: wgmma reads its accumulator operand
        # even when zero-initializing, so fragments that outlive a tile stay live through
        # the epilogue and the next tile (ptxas then serializes the wgmmas, C7512).
        acc_S = cute.make_rmem_tensor(s_shape, Float32)
        acc_O = cute.make_rmem_tensor(wg_mma_pv.partition_shape_C((self.tile_m, self.hdv)), Float32)
        tOrP = wg_mma_pv.make_fragment_A(wg_mma_pv.partition_shape_A((self.tile_m, self.tile_n)))
        m_block, head_idx, batch_idx = self.decode_tile(tile, ids)
        n_part, n_full, _, _ = self.visit_lists(m_block, head_idx, batch_idx, seqlen_k, sparse)
        acc_O.fill(0.0)
        # Defined before the first (zero-initializing) QK^T, which still names acc_S as an
        # input: otherwise the previous tile's acc_S stays live around the persistent
        # tile loop and ptxas serializes the wgmmas at hdim 128 (C7512).
        acc_S.fill(0.0)
        softmax.reset()
        pipe_q.consumer_wait(q_state)
        if const_expr(self.cfg.q_stages > 1):
            tSrQ = tSrQ[None, None, None, q_state.index]
        state = self.mainloop(state, acc_S, acc_O, tSrQ, tSrK, tOrVt, tOrP, softmax, wg,
                              tiled_mma_qk, tiled_mma_pv, pipe_k, pipe_v, s_kv, thr_mma_qk,
                              softmax_scale, seqlen_k, m_block, head_idx, batch_idx, n_part,
                              n_full, aux_tensors, aux_scalars)
        # Note [own sO]: with its own sO buffer, Q is free once the mainloop's QK^Ts are
        # done, so the producer loads the next tile's Q while this tile's epilogue runs;
        # aliased, sQ is free only after the epilogue's O store has read it.
        if const_expr(self.cfg.separate_o):
            pipe_q.consumer_release(q_state)
        self.epilogue(acc_O, softmax, mO, mLSE, mMax, sO, tma_atom_O, tiled_mma_pv, tidx,
                      warp_idx, m_block, head_idx, batch_idx)
        if const_expr(not self.cfg.separate_o):
            pipe_q.consumer_release(q_state)
        q_state.advance()
        return q_state, state

    @cute.jit
    def consume_overlapped(self, q_state, state, frags, sched, mO, mLSE, mMax, sO, tma_atom_O,
                           tiled_mma_qk, tiled_mma_pv, pipe_q, pipe_k, pipe_v, s_kv, tidx, warp_idx,
                           softmax_scale, seqlen_k, ids, sparse, aux_tensors, aux_scalars):
        """The dynamic tile loop with Note [cross-tile overlap].

        Note [cross-tile overlap]: in consume_tile every q-tile starts with a QK^T and a
        softmax that have no P V to overlap with, and ends with a P V and an epilogue
        that have no QK^T to overlap with; the epilogue's barriers make both warpgroups
        reach that point together, so the tensor cores idle there (about 1.3-1.8 KV
        steps per tile, NOTES.md). Here the tile boundary is one more pingpong turn: a
        warpgroup issues its last P V, then the next tile's first QK^T, hands the turn
        over, and runs its epilogue (once the P V is done) and the next tile's first
        softmax while the other warpgroup's GEMMs run. For that the epilogue is per
        warpgroup: each stores its own 64 rows from its own sO stage behind its own
        named barriers. The loop carries the next tile's first P, so the register
        fragments live across tiles (as they do across KV steps). The next tile's Q is
        in the second Q buffer (Note [Q ring]); its Q and first K are waited for after
        the P V is issued. The id past the last tile decodes to zero KV tiles.
        With the shared epilogue, the same overlap lost 2-4% on the sliding window and
        document masks: the warpgroups still met at the epilogue barrier."""
        s_shape, wg_mma_pv, tSrQ, tSrK, tOrVt, softmax, wg, thr_mma_qk = frags
        num_m, n_h, n_b, _ = ids
        n_tiles = num_m * n_h * n_b
        pipe_tile, s_tile, _ = sched
        acc_S = cute.make_rmem_tensor(s_shape, Float32)
        acc_O = cute.make_rmem_tensor(wg_mma_pv.partition_shape_C((self.tile_m, self.hdv)), Float32)
        tOrP = wg_mma_pv.make_fragment_A(wg_mma_pv.partition_shape_A((self.tile_m, self.tile_n)))
        acc_S.fill(0.0)
        acc_O.fill(0.0)
        t_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, 2)
        tile, t_state = self.receive_tile(t_state, pipe_tile, s_tile)
        m_block, head_idx, batch_idx, n_part, n_full = self.tile_work(tile, n_tiles, ids,
                                                                      seqlen_k, sparse)
        # tile_mods(m_block, head, batch): mods_masks_max's arguments for that q-tile
        tile_mods = partial(self.mod_args, thr_mma_qk, tiled_mma_qk, softmax_scale, seqlen_k,
                            aux_tensors=aux_tensors, aux_scalars=aux_scalars)
        state_v = state.clone()
        if tile < n_tiles:
            pipe_q.consumer_wait(q_state)
        if n_part + n_full > 0:
            state, state_v = self.first_step(
                0 < n_part, state, acc_S, tSrQ[None, None, None, q_state.index], tSrK,
                tOrP, softmax, tiled_mma_qk, pipe_k, s_kv, tile_mods(m_block, head_idx, batch_idx))
        while tile < n_tiles:
            # the rest of this tile's KV steps
            mods = tile_mods(m_block, head_idx, batch_idx)
            mma = (acc_S, acc_O, tSrQ[None, None, None, q_state.index], tSrK, tOrVt, tOrP,
                   softmax, wg, tiled_mma_qk, tiled_mma_pv, pipe_k, pipe_v, s_kv)
            total = n_part + n_full
            for t in cutlass.range(1, total, unroll=1):
                state, state_v = self.overlapped_step(t, t < n_part, state, state_v, *mma, mods)
            pipe_q.consumer_release(q_state)  # every QK^T of this tile is done
            q_state.advance()
            # the boundary: this tile's last P V, the next tile's first QK^T
            nxt, t_state = self.receive_tile(t_state, pipe_tile, s_tile)
            nxt_m, nxt_h, nxt_b, nxt_part, nxt_full = self.tile_work(nxt, n_tiles, ids,
                                                                     seqlen_k, sparse)
            nxt_work = nxt_part + nxt_full > 0
            self.sched_sync(wg)
            if total > 0:
                pipe_v.consumer_wait(state_v)
                _gemm(tiled_mma_pv, acc_O, tOrP, tOrVt[None, None, None, state_v.index],
                      zero_init=False, wait=-1)
            if nxt < n_tiles:
                pipe_q.consumer_wait(q_state)
            if nxt_work:
                pipe_k.consumer_wait(state)
            # Issued even without a next tile (then it reads whatever the slots hold and
            # is discarded): issued under `if`, ptxas serialized every wgmma (C7515).
            _gemm(tiled_mma_qk, acc_S, tSrQ[None, None, None, q_state.index],
                  tSrK[None, None, None, state.index], zero_init=True, wait=-1)
            self.sched_arrive(wg)
            warpgroup.wait_group(1)  # the P V (committed first) is done
            if total > 0:
                pipe_v.consumer_release(state_v)
            self.epilogue(acc_O, softmax, mO, mLSE, mMax, sO, tma_atom_O, tiled_mma_pv, tidx,
                          warp_idx, m_block, head_idx, batch_idx)
            softmax.reset()
            warpgroup.wait_group(0)
            acc_O.fill(0.0)  # after the wait: Note in epilogue
            if nxt_work:
                n_block = self.waited_tile(Int32(0), state, s_kv, seqlen_k)
                pipe_k.consumer_release(state)
                self.first_softmax(acc_S, tOrP, n_block, 0 < nxt_part, softmax,
                                   tile_mods(nxt_m, nxt_h, nxt_b))
                state_v = state.clone()
                state.advance()
            tile, m_block, head_idx, batch_idx = nxt, nxt_m, nxt_h, nxt_b
            n_part, n_full = nxt_part, nxt_full

    @cute.jit
    def mainloop(self, state, acc_S, acc_O, tSrQ, tSrK, tOrVt, tOrP, softmax, wg, tiled_mma_qk,
                 tiled_mma_pv, pipe_k, pipe_v, s_kv, thr_mma_qk, softmax_scale, seqlen_k, m_block,
                 head_idx, batch_idx, n_part, n_full, aux_tensors, aux_scalars):
        """Note [intra-warpgroup overlap]: QK^T of tile j and P V of tile j-1 are in flight
        together; the softmax of tile j runs while P V (j-1) finishes.

        Partial and full tiles share one loop with a run-time test for mask_mod: two
        loops with compile-time-specialized bodies (FA3/FA4's layout) made ptxas
        serialize the wgmmas at hdim 128 (C7512), one loop does not."""
        mods = self.mod_args(thr_mma_qk, tiled_mma_qk, softmax_scale, seqlen_k, m_block,
                             head_idx, batch_idx, aux_tensors, aux_scalars)
        mma = (acc_S, acc_O, tSrQ, tSrK, tOrVt, tOrP, softmax, wg, tiled_mma_qk, tiled_mma_pv,
               pipe_k, pipe_v, s_kv)
        total = n_part + n_full
        if total > 0:
            state, state_v = self.first_step(0 < n_part, state, acc_S, tSrQ, tSrK, tOrP, softmax,
                                             tiled_mma_qk, pipe_k, s_kv, mods)
            for t in cutlass.range(1, total, unroll=1):
                state, state_v = self.overlapped_step(t, t < n_part, state, state_v, *mma, mods)
            pipe_v.consumer_wait(state_v)
            _gemm(tiled_mma_pv, acc_O, tOrP, tOrVt[None, None, None, state_v.index],
                  zero_init=False, wait=0)
            pipe_v.consumer_release(state_v)
        return state

    def mod_args(self, thr_mma_qk, tiled_mma_qk, softmax_scale, seqlen_k, m_block, head_idx,
                 batch_idx, aux_tensors, aux_scalars):
        """mods_masks_max's keyword arguments for one q-tile."""
        return dict(thr_mma_qk=thr_mma_qk, thr0_mma_qk=tiled_mma_qk.get_slice(0),
                    softmax_scale=softmax_scale, seqlen_k=seqlen_k, m_block=m_block,
                    head_idx=head_idx, batch_idx=batch_idx, aux_tensors=aux_tensors,
                    aux_scalars=aux_scalars)

    @cute.jit
    def first_step(self, is_partial, state, acc_S, tSrQ, tSrK, tOrP, softmax,
                   tiled_mma_qk, pipe_k, s_kv, mods):
        """A q-tile's first KV tile on its own (no P V to overlap with): QK^T, then
        first_softmax. Returns (next K/V slot, the slot its P V will read)."""
        pipe_k.consumer_wait(state)
        n_block = self.waited_tile(Int32(0), state, s_kv, mods["seqlen_k"])
        _gemm(tiled_mma_qk, acc_S, tSrQ, tSrK[None, None, None, state.index],
              zero_init=True, wait=0)
        pipe_k.consumer_release(state)
        self.first_softmax(acc_S, tOrP, n_block, is_partial, softmax, mods)
        state_v = state.clone()
        state.advance()
        return state, state_v

    @cute.jit
    def first_softmax(self, acc_S, tOrP, n_block, is_partial, softmax, mods):
        """A q-tile's first KV tile after its QK^T: mods, masks, softmax, P. The O
        accumulator is still zero, so its row scale is not needed."""
        m_new = self.mods_masks_max(acc_S, n_block, is_partial, True, softmax, **mods)
        softmax.step(acc_S, m_new)
        store_16bit(as_operand_a(acc_S), tOrP)  # Note [P conversion]

    @cute.jit
    def visit_tile(self, t: Int32, n_part: Int32, part_row, full_row, seqlen_k: Int32):
        """Producer side: the KV tile index of the t-th visited tile, the partial list
        first, then the full list (Note [visit order]). mask_mod applies to the first
        n_part tiles."""
        n_block = Int32(0)
        if const_expr(full_row is None or not self.has_sparse):
            n_block = self.list_tile(part_row, t, seqlen_k)
        else:
            if t < n_part:
                n_block = self.list_tile(part_row, t, seqlen_k)
            else:
                n_block = self.list_tile(full_row, t - n_part, seqlen_k)
        return n_block

    @cute.jit
    def waited_tile(self, t: Int32, state, s_kv, seqlen_k: Int32) -> Int32:
        """Consumer side of visit_tile: the KV tile index of the t-th visited tile, once
        its K slot (`state`) has been waited for. With a BlockMask, the producer's entry
        in s_kv (Note [kv tile ring]); without, the dense order."""
        n_block = Int32(0)
        if const_expr(self.has_sparse):
            n_block = s_kv[state.index]
        else:
            n_block = self.list_tile(None, t, seqlen_k)
        return n_block

    @cute.jit
    def overlapped_step(self, t, apply_mask, state, state_v, acc_S,
                        acc_O, tSrQ, tSrK, tOrVt, tOrP, softmax, wg, tiled_mma_qk, tiled_mma_pv,
                        pipe_k, pipe_v, s_kv, mods):
        """QK^T(j) and P V(j-1) issued together, then tile j's mods and softmax; t: the
        tile's place in the visit order."""
        pipe_k.consumer_wait(state)
        n_block = self.waited_tile(t, state, s_kv, mods["seqlen_k"])
        self.sched_sync(wg)
        _gemm(tiled_mma_qk, acc_S, tSrQ, tSrK[None, None, None, state.index],
              zero_init=True, wait=-1)
        pipe_v.consumer_wait(state_v)
        _gemm(tiled_mma_pv, acc_O, tOrP, tOrVt[None, None, None, state_v.index],
              zero_init=False, wait=-1)
        self.sched_arrive(wg)
        warpgroup.wait_group(1)
        pipe_k.consumer_release(state)
        # dense order visits the seqlen tail first (Note [visit order]): only the peeled
        # first tile can be it
        m_new = self.mods_masks_max(acc_S, n_block, apply_mask, self.has_sparse, softmax,
                                    **mods)
        row_scale, any_moved = softmax.step(acc_S, m_new)
        warpgroup.wait_group(0)
        pipe_v.consumer_release(state_v)
        if const_expr(softmax.lazy):
            if any_moved:  # warp-uniform (Note [lazy rescale] in softmax.py)
                rescale_rows(acc_O, row_scale)
        else:
            rescale_rows(acc_O, row_scale)
        store_16bit(as_operand_a(acc_S), tOrP)  # Note [P conversion]
        # K and V share ring slots, so P V (j) uses K (j)'s slot: one advance per step.
        state_v = state.clone()
        state.advance()
        return state, state_v

    def sched_sync(self, wg):
        if const_expr(self.cfg.pingpong):
            cute.arch.barrier(barrier_id=BAR_SCHED_WG0 + wg, number_of_threads=self.sched_threads)

    def sched_arrive(self, wg):
        if const_expr(self.cfg.pingpong):
            nxt = (wg + 1) % self.cfg.num_consumer_wgs  # the next warpgroup's turn
            cute.arch.barrier_arrive(barrier_id=BAR_SCHED_WG0 + nxt,
                                     number_of_threads=self.sched_threads)

    @cute.jit
    def mods_masks_max(self, acc_S, n_block: Int32, apply_mask, may_be_tail: bool, softmax,
                       thr_mma_qk, thr0_mma_qk, softmax_scale, seqlen_k, m_block, head_idx,
                       batch_idx, aux_tensors, aux_scalars):
        """score_mod, then mask_mod (partial tiles only) and the seqlen tail mask, then the
        new row max; returns the max for softmax.step.

        Note [wait placement]: ptxas places the wait for P V (j-1) (wait_group 0, after
        the softmax in program order) at the top of the basic block it sits in, so a
        branch join right before the softmax left nothing to overlap with that P V. The
        masks are branches (taken for partial and tail tiles only), so the row max is
        computed inside each branch and the join comes after it: the max and its quad
        shuffles run while P V (j-1) is still on the tensor cores, as in FA4.

        apply_mask: a Python bool (compile-time) or a run-time Boolean.
        may_be_tail: whether this tile can be the seqlen tail (compile-time)."""
        cS_tile = cute.make_identity_tensor((self.tile_m, self.tile_n))
        tScS = thr_mma_qk.partition_C(
            cute.domain_offset((m_block * self.tile_m, n_block * self.tile_n), cS_tile))
        t0ScS = thr0_mma_qk.partition_C(cS_tile)  # compile-time columns (apply_mods.py)
        if const_expr(self.score_mod is not None):
            apply_score_mod(acc_S, tScS, t0ScS, self.score_mod, batch_idx, head_idx,
                            softmax_scale, aux_tensors[: self.n_score_bufs],
                            aux_scalars[: self.n_score_scalars])
        m_new = softmax.new_max_buffer()
        mask_args = (acc_S, tScS, t0ScS, self.mask_mod, batch_idx, head_idx,
                     aux_tensors[self.n_score_bufs:], aux_scalars[self.n_score_scalars:])
        has_mask = self.mask_mod is not None and apply_mask is not False
        if const_expr(not has_mask and not may_be_tail):
            softmax.update_max(acc_S, m_new)
        else:
            is_tail = (n_block + 1) * self.tile_n > seqlen_k if const_expr(may_be_tail) else False
            needs = is_tail
            if const_expr(has_mask):
                needs = apply_mask or is_tail
            if needs:
                if const_expr(has_mask):
                    if apply_mask:
                        apply_mask_mod(*mask_args)
                if const_expr(may_be_tail):
                    if is_tail:
                        apply_seqlen_mask(acc_S, tScS, t0ScS, seqlen_k)
                softmax.update_max(acc_S, m_new)
            else:
                softmax.update_max(acc_S, m_new)
        return m_new

    @cute.jit
    def epilogue(self, acc_O, softmax, mO, mLSE, mMax, sO, tma_atom_O, tiled_mma_pv, tidx,
                 warp_idx, m_block, head_idx, batch_idx):
        inv_sum, lse, row_max = softmax.finalize()
        # acc_O is read, not rescaled in place: with Note [cross-tile overlap] the next
        # tile's QK^T is in flight here, and ptxas serializes the wgmmas (C7515) when
        # accumulator registers are written inside a wgmma pipeline stage.
        rO = cute.make_rmem_tensor_like(acc_O, self.dtype)
        rescale_rows(acc_O, inv_sum, dst=rO)

        # Row stats: the thread holding column 0 of a row writes it.
        seqlen_q = mLSE.shape[2]
        thr_mma = tiled_mma_pv.get_slice(tidx)
        tOcO = as_mn(thr_mma.partition_C(cute.make_identity_tensor((self.tile_m, self.hdv))))
        if tOcO[0, 0][1] == 0:
            for r in cutlass.range_constexpr(cute.size(tOcO, mode=[0])):
                row = m_block * self.tile_m + tOcO[r, 0][0]
                if row < seqlen_q:
                    mLSE[batch_idx, head_idx, row] = lse[r]
                    if const_expr(mMax is not None):
                        mMax[batch_idx, head_idx, row] = row_max[r]

        # Aliased sO (sQ): every consumer warpgroup must be past its last QK^T. Own sO:
        # the previous tile's O store must have read it (only the issuing warp can wait).
        # Per warpgroup (Note [cross-tile overlap]): each warpgroup stores its own 64 rows
        # from its own sO stage, so the warpgroups never wait for each other here.
        wg = cute.arch.make_warp_uniform(tidx // 128)
        o_rows, o_tile, copy_mma, copy_tidx, sO_here = self.tile_m, m_block, tiled_mma_pv, tidx, sO
        bar_free, bar_ready = BAR_EPILOGUE_SQ_FREE, BAR_EPILOGUE_SO_READY
        n_sync = self.num_consumer_threads
        if const_expr(self.cfg.tile_overlap):
            o_rows, o_tile = 64, m_block * self.cfg.num_consumer_wgs + wg
            bar_free, bar_ready = BAR_WG_EPILOGUE0 + 2 * wg, BAR_WG_EPILOGUE0 + 2 * wg + 1
            n_sync = 128
            copy_mma = self.pv_tiled_mma(1)  # this warpgroup's 64 rows
            copy_tidx, sO_here = tidx % 128, sO[None, None, wg]
        store_warp = self.store_warp(warp_idx)
        if const_expr(self.cfg.separate_o):
            if store_warp:
                cute.arch.cp_async_bulk_wait_group(0, read=True)
        cute.arch.barrier(barrier_id=bar_free, number_of_threads=n_sync)
        st_atom = cute.make_copy_atom(
            cute.nvgpu.warp.StMatrix8x8x16bOp(transpose=False, num_matrices=4), self.dtype)
        thr_copy = cute.make_tiled_copy_C(st_atom, copy_mma).get_slice(copy_tidx)
        cute.copy(st_atom, thr_copy.retile(rO), thr_copy.partition_D(sO_here))
        cute.arch.fence_view_async_shared()
        cute.arch.barrier(barrier_id=bar_ready, number_of_threads=n_sync)
        if store_warp:
            gO = cute.local_tile(mO[None, None, head_idx, batch_idx], (o_rows, self.hdv),
                                 (o_tile, 0))
            tOsO, tOgO = cpasync.tma_partition(tma_atom_O, 0, cute.make_layout(1),
                                               cute.group_modes(sO_here, 0, 2),
                                               cute.group_modes(gO, 0, 2))
            cute.copy(tma_atom_O, tOsO, tOgO)
            cute.arch.cp_async_bulk_commit_group()
            if const_expr(not self.cfg.separate_o):
                cute.arch.cp_async_bulk_wait_group(0, read=True)
        if const_expr(self.cfg.persistent and not self.cfg.separate_o):
            # sO is sQ: the next tile's Q may land only after the store has read it.
            cute.arch.barrier(barrier_id=BAR_EPILOGUE_SO_FREE,
                              number_of_threads=self.num_consumer_threads)
