"""Tile configurations for the Triton kernels, per direction, head dim and dtype.

On a GPU each kernel is autotuned (`launch`) over the first MAX_TUNED tiles of a
short list chosen here that divide the BlockMask's block sizes, once per key
(constexprs incl. the mods, power-of-two length buckets, batch * heads, dtype).
In the CPU interpreter autotuning would only burn time, so one small fixed tile
is used. Measurements cited below: ptxas -v on sm_90a code compiled on the CPU
box, and benchmarks/triton_gpu_check.py on an H200 (B=4, H=16, D=128, bf16),
2026-11-21.

Note [tile divides mask block]: a kernel tile must divide the BlockMask block
(tile_m | block_size_q, tile_n | block_size_kv) so that a listed block expands to a
whole number of tiles; every list below therefore also holds 32- and 16-wide
fallbacks for masks with small blocks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import triton

MIN_TILE = 16  # tl.dot needs every dimension >= 16


@dataclass(frozen=True)
class Tile:
    """One launch shape. `m`/`n` are the q / kv tile extents."""

    m: int
    n: int
    warps: int = 4
    stages: int = 2

    def fits(self, block_q: int, block_kv: int) -> bool:
        return block_q % self.m == 0 and block_kv % self.n == 0

    def config(self, m_name: str, n_name: str) -> triton.Config:
        return triton.Config({m_name: self.m, n_name: self.n}, num_warps=self.warps, num_stages=self.stages)


# Forward, bf16/fp16, head dim <= 128. Register reports from ptxas (sm_90a, d=128,
# causal / softcap / ALiBi, 2026-11-21): (128, 64, 4 warps) spills 84-96 bytes;
# (128, 64, 8 warps) uses 170-196 registers with no spills (also PyTorch flex's H100
# default for bf16 d128); (128, 128, 8) fits in 240-252 registers and 224 KB of smem
# and won the autotuning of all 14 rows of the benchmark (7 masks/mods x S 2048, 8192)
# against (128, 64, 8, 3/2 stages). With (64, 64, 4) added (163-204 registers, twice
# the programs), that tile won causal and document+causal at S=2048: document went
# from 0.97x to 1.07x of flex's forward (CUDA-graph replay), causal stayed ~1.05x.
# The small ones serve masks with 32/16-wide blocks.
FWD_TILES_16BIT = (
    Tile(128, 128, 8, 3),
    Tile(128, 64, 8, 3),
    Tile(64, 64, 4, 3),
    Tile(128, 64, 8, 2),
    Tile(32, 32, 4, 2),
    Tile(16, 16, 4, 2),
)
# head dim > 128: the accumulator and the Q tile double; 64-wide tiles keep
# registers under 255 per thread without spilling.
FWD_TILES_16BIT_LARGE_D = (
    Tile(64, 64, 4, 2),
    Tile(128, 64, 8, 2),
    Tile(64, 32, 4, 2),
    Tile(32, 32, 4, 2),
    Tile(16, 16, 4, 2),
)
# fp32 inputs go through IEEE dots (no tensor-core fast path): small tiles.
FWD_TILES_FP32 = (
    Tile(64, 32, 4, 2),
    Tile(32, 32, 4, 2),
    Tile(16, 16, 4, 1),
)

# Backward, dK/dV pass: m is the q tile streamed over, n the kv tile held in
# registers (dK, dV accumulators are n x D fp32 each). ptxas at d=128: (32, 128, 8 warps)
# has no spills for causal / softcap / ALiBi (236-255 registers); (64, 128, 8) spills
# 24-700 bytes (softcap worst); (64, 128/64, 4 warps) and (32, 128, 4) spill heavily.
DKDV_TILES_16BIT = (
    Tile(32, 128, 8, 2),
    Tile(64, 64, 8, 2),
    Tile(64, 128, 8, 2),
    Tile(32, 32, 4, 2),
    Tile(16, 16, 4, 2),
)
# dQ pass: m is the q tile held, n the kv tile streamed. ptxas at d=128:
# (128, 64, 8 warps) no spills (205-255 registers), (128, 32, 8) no spills at 139-200,
# (128, 32, 4) spills 180-550 bytes.
DQ_TILES_16BIT = (
    Tile(128, 64, 8, 3),
    Tile(128, 64, 8, 2),
    Tile(128, 32, 8, 2),
    Tile(64, 64, 4, 3),
    Tile(32, 32, 4, 2),
    Tile(16, 16, 4, 2),
)
# head dim 256 (ptxas, causal / softcap / ALiBi): dK/dV (32, 64, 8 warps) spills
# 36-164 bytes but keeps wgmma; (64, 32, 8) fits without spills on mma.sync; (64, 64, 8)
# spills 200-1200 bytes; 4-warp tiles of 16-32 rows spill kilobytes. dQ (64, 64, 8) fits.
DKDV_TILES_LARGE_D = (
    Tile(32, 64, 8, 2),
    Tile(64, 32, 8, 1),
    Tile(32, 32, 4, 2),
    Tile(16, 16, 4, 2),
)
DQ_TILES_LARGE_D = (
    Tile(64, 64, 8, 2),
    Tile(32, 64, 4, 2),
    Tile(32, 32, 4, 2),
    Tile(16, 16, 4, 2),
)
BWD_TILES_FP32 = (
    Tile(32, 32, 4, 2),
    Tile(16, 16, 4, 1),
)

# Split-KV decoding: the q tile is as small as the query count allows (>= 16 for
# tl.dot); the kv tile as wide as usual.
DECODE_TILE_N = (64, 32, 16)
DECODE_MAX_Q = 64  # Q_LEN at or below this takes the split-KV path

# In the interpreter: one small tile, since numbers, not speed, matter there.
INTERPRETER_TILE = Tile(16, 16, 1, 1)


def forward_tiles(head_dim: int, itemsize: int) -> tuple[Tile, ...]:
    if itemsize == 4:
        return FWD_TILES_FP32
    return FWD_TILES_16BIT if head_dim <= 128 else FWD_TILES_16BIT_LARGE_D


def dkdv_tiles(head_dim: int, itemsize: int) -> tuple[Tile, ...]:
    if itemsize == 4:
        return BWD_TILES_FP32
    return DKDV_TILES_16BIT if head_dim <= 128 else DKDV_TILES_LARGE_D


def dq_tiles(head_dim: int, itemsize: int) -> tuple[Tile, ...]:
    if itemsize == 4:
        return BWD_TILES_FP32
    return DQ_TILES_16BIT if head_dim <= 128 else DQ_TILES_LARGE_D


def interpreter_tile(block_q: int, block_kv: int) -> Tile:
    """The interpreter's fixed tile, shrunk until it divides the mask blocks."""
    t = INTERPRETER_TILE
    assert t.fits(block_q, block_kv), f"mask blocks ({block_q}, {block_kv}) must be multiples of {MIN_TILE}"
    return t


MAX_TUNED = 3  # configs benchmarked per key: the first that fit; keeps first-call tuning short


def fitting(tiles: tuple[Tile, ...], block_q: int, block_kv: int) -> list[Tile]:
    """The tiles that divide the mask blocks (Note [tile divides mask block]), in list order."""
    kept = [t for t in tiles if t.fits(block_q, block_kv)]
    if not kept:
        raise ValueError(f"no kernel tile divides the BlockMask blocks ({block_q}, {block_kv}); "
                         f"use multiples of {MIN_TILE}")
    return kept


def prune_for_mask(m_name: str, n_name: str):
    """An `early_config_prune` keeping the first MAX_TUNED configs whose tiles divide
    the mask blocks."""

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        bq, bkv = args["SPARSE_Q"], args["SPARSE_KV"]
        kept = [c for c in configs if bq % c.kwargs[m_name] == 0 and bkv % c.kwargs[n_name] == 0]
        return kept[:MAX_TUNED] or [configs[-1]]

    return prune


def autotune_enabled() -> bool:
    """FLEX_FA4_TRITON_AUTOTUNE=0 takes the first fitting tile instead (quick tests)."""
    return os.environ.get("FLEX_FA4_TRITON_AUTOTUNE", "1") != "0"


def seq_bucket(n: int) -> int:
    """Autotune key for a length: the next power of two, so every length does not retune."""
    return 1 << max(n - 1, 0).bit_length()


_TUNED: dict = {}
_CHOSEN: dict = {}


def launch(kernel, tiles: tuple[Tile, ...], grid, args: tuple, consts: dict, key: tuple,
           block_q: int, block_kv: int, reset_to_zero=None) -> None:
    """Run `kernel` with BLOCK_M/BLOCK_N from `tiles`: on a GPU autotuned once per `key`
    (a hashable summary of what changes the best tile: constexprs, length buckets,
    dtype), else the first tile that fits. `grid(meta)` gives the grid.

    After the first call for a key the chosen config is launched directly: Triton's
    Autotuner.run costs ~30 us of Python per call, which shows in short launches."""
    args = args + (hash(key) & 0x7FFFFFFF,)  # the kernels' last argument, `tune_key`
    if not autotune_enabled():
        # the first tile that compiles within this GPU's resources (a mod's loads can push a
        # tile's shared memory past the limit, which only the compiler knows)
        candidates = fitting(tiles, block_q, block_kv)
        for i, t in enumerate(candidates):
            meta = dict(BLOCK_M=t.m, BLOCK_N=t.n)
            try:
                kernel[grid(meta)](*args, **consts, **meta, num_warps=t.warps, num_stages=t.stages)
                return
            except triton.runtime.errors.OutOfResources:
                if i == len(candidates) - 1:
                    raise
    full_key = (kernel, tiles, key)
    cfg = _CHOSEN.get(full_key)
    if cfg is not None:
        kernel[grid(cfg.kwargs)](*args, **consts, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return
    tuner_key = (kernel, tiles, tuple(reset_to_zero or ()))
    if tuner_key not in _TUNED:
        _TUNED[tuner_key] = triton.autotune(
            configs=[t.config("BLOCK_M", "BLOCK_N") for t in tiles], key=["tune_key"],
            prune_configs_by={"early_config_prune": prune_for_mask("BLOCK_M", "BLOCK_N")},
            reset_to_zero=reset_to_zero,
        )(kernel)
    tuner = _TUNED[tuner_key]
    tuner[grid](*args, **consts)
    _CHOSEN[full_key] = tuner.best_config
