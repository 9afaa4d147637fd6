"""Static tile configuration of the sm90 forward kernel, chosen per head dims.

Every field changes the generated code, so the whole dataclass is part of the compile
cache key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

SUPPORTED_HEAD_DIMS = (64, 96, 128, 192, 256)
# (head_dim, head_dim_v) pairs beyond the square ones.
SUPPORTED_HEAD_DIM_PAIRS = frozenset({(d, d) for d in SUPPORTED_HEAD_DIMS} | {(192, 128)})

SMEM_BYTES_SM90 = 227 * 1024


@dataclass(frozen=True)
class FwdConfig:
    head_dim: int
    head_dim_v: int
    tile_m: int = 128  # consumer warpgroups x 64 rows (192: three, for hdim 64)
    tile_n: int = 128
    num_stages: int = 2  # K and V ring depth
    # 240 / 24: the register split FA3/FA4 use for 2 consumer WGs + 1 producer WG
    # (128 threads x (240 + 240 + 24) regs fits the 64K register file; 3 consumer WGs:
    # 160 x 3 + 32).
    consumer_regs: int = 240
    producer_regs: int = 24
    # WG pingpong via named barriers; FA3/FA4 enable it for hdim <= 128 only.
    pingpong: bool = True
    # Masked launches walk q-tiles last-to-first (Note [LPT order] in hopper_fwd.py).
    lpt: bool = True
    # One CTA per SM walking tiles (Note [tile loop]) ...
    persistent: bool = False
    # ... taking their next tile from a global counter instead of a fixed stride (Note
    # [dynamic tile scheduler] in hopper_fwd.py); needs persistent. choose_config turns
    # both on for head dims 128 and 256, and for hdim 64 with three consumer warpgroups.
    dynamic: bool = False
    # sO gets its own buffer instead of aliasing sQ, so a tile releases Q after its last
    # QK^T and the next tile's Q loads during this tile's epilogue (Note [own sO] in
    # hopper_fwd.py). Costs tile_m x head_dim_v x 2 bytes of shared memory.
    separate_o: bool = False
    # Q ring depth. 2: a persistent CTA loads its next tile's Q while this tile runs
    # (Note [Q ring] in hopper_fwd.py); needs separate_o (an aliased sO is one Q buffer).
    q_stages: int = 1
    # A tile's end (last P V, epilogue) overlaps the next tile's start (first QK^T and
    # softmax) inside the pingpong schedule, with per-warpgroup epilogues (Note [cross-tile
    # overlap] in hopper_fwd.py); needs dynamic, q_stages == 2 (the next Q is already
    # loaded) and two consumer warpgroups.
    tile_overlap: bool = False
    # Skip the O accumulator's rescale while no row max moved far (Note [lazy rescale] in
    # softmax.py). H200, hdim 128, fresh processes, two rounds, TFLOP/s eager -> lazy,
    # S=8192: noop 703 -> 745 / 704 -> 704, causal 674 -> 686 / 692 -> 699, document
    # 435 -> 442 / 439 -> 443, softcap 512 -> 524 / 525 -> 530, sliding window and ALiBi
    # within -1..+0.4%; S=2048: noop 638 -> 655 / 631 -> 653, causal 509 -> 521 / 498 -> 496
    # (session 8).
    lazy_rescale: bool = True

    def __post_init__(self):
        if self.dynamic and not self.persistent:
            raise ValueError("FwdConfig.dynamic needs persistent=True")
        if self.q_stages not in (1, 2) or (self.q_stages == 2 and not self.separate_o):
            raise ValueError("FwdConfig.q_stages is 1, or 2 with separate_o=True")
        if self.tile_overlap and not (self.dynamic and self.q_stages == 2 and self.tile_m == 128):
            # two warpgroups: the only shape it was measured and tested with on the GPU
            raise ValueError("FwdConfig.tile_overlap needs dynamic=True, q_stages=2 and tile_m=128")

    @property
    def num_consumer_wgs(self) -> int:
        return self.tile_m // 64

    def smem_bytes(self, elem_bytes: int = 2) -> int:
        if self.separate_o:
            q = self.tile_m * (self.q_stages * self.head_dim + self.head_dim_v)
        else:
            q = self.tile_m * max(self.head_dim, self.head_dim_v)  # sO aliases sQ
        kv = self.num_stages * self.tile_n * (self.head_dim + self.head_dim_v)
        return (q + kv) * elem_bytes + 1024


def choose_config(head_dim: int, head_dim_v: int, block_q: Optional[int] = None) -> FwdConfig:
    """The tile shape for these head dims and the BlockMask's Q block (None: no BlockMask).

    Head dim 64 takes three consumer warpgroups (tile_m 192, 160 / 32 registers, FA3/FA4's
    hdim-64 shape) with the dynamic tile scheduler wherever the BlockMask allows 192-row
    tiles (no BlockMask, or a Q block that is a multiple of 192), two warpgroups otherwise.
    H200, fresh processes, median of 3, bf16 B=4 H=16, no BlockMask, TFLOP/s two WGs ->
    three WGs one CTA per tile -> three WGs dynamic: noop S=8192 468 -> 572 -> 587, S=2048
    395 -> 400 -> 409; causal mask_mod S=8192 205 -> 239 -> 240 (session 5; in session 2 the
    three-WG consumer still spilled at 160 registers).
    Persistent CTAs with the dynamic tile scheduler at head dims 128 and 256, where they
    measured faster or equal. H200, same process, bf16 B=4 H=16, against one CTA per tile
    (TFLOP/s, S=8192 / 2048), d128: sliding window 461 -> 497 / 375 -> 407, document
    360 -> 395 / 119 -> 133, causal 652 -> 642 / 429 -> 461, ALiBi 567 -> 566 / 409 -> 433,
    softcap 504 -> 501 / 374 -> 394, noop 656 -> 660 / 574 -> 582; d256 S=2048 noop
    698 -> 704, causal 540 -> 543. Static round-robin persistence lost causal (601 / 404)
    and d256 causal (412). At d64 (two WGs), d96 and d192 (S=8192) the dynamic schedule
    lost: noop 477 -> 462, 562 -> 528, 616 -> 600; causal 400 -> 397, 557 -> 502,
    615 -> 550; those keep one CTA per tile.
    tile_n = 128 where two K/V stages fit in shared memory, else 64; tile_n must divide
    the BlockMask's KV block (128 by default), which rules out the 112 / 80 tiles FA4 uses
    at hdim 192 / 256; 64 keeps every 128-multiple mask servable.
    """
    hd = max(head_dim, head_dim_v)
    pingpong = hd <= 128
    if head_dim == head_dim_v == 64 and (block_q is None or block_q % 192 == 0):
        return FwdConfig(64, 64, tile_m=192, consumer_regs=160, producer_regs=32,
                         num_stages=3, persistent=True, dynamic=True)
    persistent = head_dim == head_dim_v and hd in (128, 256)
    tile_n = 128
    if hd > 128:
        # hdim > 128 with tile_n 128 spills registers (acc_O + acc_S > 200 regs).
        tile_n = 64
    # Persistent CTAs first try their own sO buffer with 2 K/V stages (Note [own sO] in
    # hopper_fwd.py): at hdim 128 it beat 3 stages with sO aliasing sQ everywhere. H200,
    # median of 3 fresh processes each, TFLOP/s 3 aliased stages -> own sO + 2 stages,
    # S=8192: noop 659 -> 673, causal 641 -> 656, sliding window 492 -> 515, document
    # 391 -> 425; S=2048: noop 618 -> 644, causal 448 -> 473, sliding window 378 -> 399.
    # Otherwise 3 K/V stages where they fit (noop d128 S=8192 earlier: 707 vs 667 in one
    # run, 643 vs 646 in another).
    # With its own sO, a second Q buffer where it fits (Note [Q ring]; hdim 128: 224 KiB):
    # H200, fresh processes, median of 3, TFLOP/s one -> two Q buffers, S=2048: sliding
    # window 410 -> 421, noop 636 -> 642, causal 500 -> 494; S=8192 within +-1% (session 6).
    # With the Q ring, Note [cross-tile overlap] where there is a BlockMask. H200, fresh
    # processes, two rounds alternating, TFLOP/s without -> with, S=8192: causal 678 -> 689,
    # sliding window 528 -> 540, document 442 -> 447, ALiBi 594 -> 604, softcap 513 -> 515;
    # S=2048: causal 492 -> 517, sliding window 424 -> 433, ALiBi 429 -> 427 (session 7).
    # Without a BlockMask (dense noop) it was even or behind at S=8192 in each of three rounds
    # (means 696 -> 685) and even at 2048 (596 -> 592), so dense calls keep consume_tile.
    # Again on an H100 in session 12 (benchmarks/kernel_ab.py, one process, interleaved,
    # TFLOP/s median / min, without -> with): S=8192 655 / 722 -> 660 / 706, S=2048
    # 610 / 696 -> 617 / 694: even.
    candidates = [dict(num_stages=3), dict(num_stages=2)]
    if persistent:
        candidates[:0] = [dict(num_stages=2, separate_o=True, q_stages=2,
                               tile_overlap=block_q is not None),
                          dict(num_stages=2, separate_o=True)]
    for extra in candidates:
        cfg = FwdConfig(head_dim, head_dim_v, tile_n=tile_n, pingpong=pingpong,
                        persistent=persistent, dynamic=persistent, **extra)
        if cfg.smem_bytes() <= SMEM_BYTES_SM90:
            return cfg
    return FwdConfig(head_dim, head_dim_v, tile_n=64, num_stages=2, pingpong=pingpong,
                     persistent=persistent, dynamic=persistent)
