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

    def config(self) -> triton.Config:
        return triton.Config(dict(BLOCK_M=self.m, BLOCK_N=self.n), num_warps=self.warps, num_stages=self.stages)


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


@dataclass(frozen=True)
class BwdTile:
    """One backward launch shape (Note [one backward launch] in backward.py): the dK/dV
    programs' tile (m1 q rows streamed x n1 kv rows held) and the dQ programs' tile
    (m2 q rows held x n2 kv rows streamed), sharing warps and stages."""

    m1: int
    n1: int
    m2: int
    n2: int
    warps: int = 8
    stages: int = 2

    def config(self) -> triton.Config:
        return triton.Config(dict(BLOCK_M=self.m1, BLOCK_N=self.n1, BLOCK_M2=self.m2, BLOCK_N2=self.n2),
                             num_warps=self.warps, num_stages=self.stages)


# Backward, bf16/fp16, head dim <= 128. dK/dV programs keep n1 x D fp32 accumulators for
# dK and dV, dQ programs one m2 x D. ptxas (sm_90a, d=128, one launch holding both
# kinds): (64x128 | 128x64, 8 warps, 2 stages) uses 247-255 registers, no spills for noop,
# causal, document, ALiBi, 148 bytes for softcap (208 with 3 stages); (32x128 | 128x64,
# 8 warps) 220-245 registers, never spills; (64x64 | 64x64, 4 warps) spills 16-108 bytes.
# H200, backward alone (benchmarks/triton_gpu_check.py --sweep, B=4 H=16): 64x128 beats
# 32x128 by 8-17% on every row, spills included (S=2048 noop 1.09 -> 0.93 ms, softcap
# 0.89 -> 0.82; S=8192 causal 8.26 -> 7.24, softcap 11.3 -> 10.3), and is PyTorch flex's
# H100 default shape too; 3 stages instead of 2 won noop at 8192 (14.1 vs 14.3 ms) and
# lost causal (7.58 vs 7.24), so both are tuned. The 32-row tile stays as the spill-free
# choice for heavier mods.
BWD_TILES_16BIT = (
    BwdTile(64, 128, 128, 64, 8, 2),
    BwdTile(64, 128, 128, 64, 8, 3),
    BwdTile(32, 128, 128, 64, 8, 2),
    BwdTile(64, 64, 64, 64, 4, 2),
    BwdTile(32, 32, 32, 32, 4, 2),
    BwdTile(16, 16, 16, 16, 4, 2),
)
# head dim 256, ptxas of the one-launch kernel (causal / softcap, not yet timed on a GPU):
# (32x64 | 64x64, 8 warps) spills 56-76 bytes but keeps 64-row wgmma tiles; (32x32 |
# 64x32, 8 warps) 185-195 registers, no spills; (64x32 | 64x64, 1 stage), the former
# separate kernels' pick, spills 724 bytes once both kinds share the launch.
BWD_TILES_LARGE_D = (
    BwdTile(32, 64, 64, 64, 8, 2),
    BwdTile(32, 32, 64, 32, 8, 2),
    BwdTile(32, 32, 32, 32, 4, 2),
    BwdTile(16, 16, 16, 16, 4, 2),
)
BWD_TILES_FP32 = (
    BwdTile(32, 32, 32, 32, 4, 2),
    BwdTile(16, 16, 16, 16, 4, 1),
)

# Split-KV decoding: the q tile is as small as the query count allows (>= 16 for
# tl.dot); the kv tile as wide as usual.
DECODE_TILE_N = (64, 32, 16)
DECODE_MAX_Q = 64  # Q_LEN at or below this takes the split-KV path

# In the interpreter: one small tile, since numbers, not speed, matter there.
INTERPRETER_TILE = Tile(16, 16, 1, 1)
INTERPRETER_BWD_TILE = BwdTile(16, 16, 16, 16, 1, 1)


def forward_tiles(head_dim: int, itemsize: int) -> tuple[Tile, ...]:
    if itemsize == 4:
        return FWD_TILES_FP32
    return FWD_TILES_16BIT if head_dim <= 128 else FWD_TILES_16BIT_LARGE_D


def backward_tiles(head_dim: int, itemsize: int) -> tuple[BwdTile, ...]:
    if itemsize == 4:
        return BWD_TILES_FP32
    return BWD_TILES_16BIT if head_dim <= 128 else BWD_TILES_LARGE_D


def interpreter_tile(block_q: int, block_kv: int, backward: bool = False):
    """The interpreter's fixed tile (it divides every allowed mask block)."""
    t = INTERPRETER_BWD_TILE if backward else INTERPRETER_TILE
    assert _config_fits(t.config().kwargs, block_q, block_kv), \
        f"mask blocks ({block_q}, {block_kv}) must be multiples of {MIN_TILE}"
    return t


MAX_TUNED = 3  # configs benchmarked per key: the first that fit; keeps first-call tuning short


def fitting(tiles: tuple, block_q: int, block_kv: int) -> list:
    """The tiles that divide the mask blocks (Note [tile divides mask block]), in list order."""
    kept = [t for t in tiles if _config_fits(t.config().kwargs, block_q, block_kv)]
    if not kept:
        raise ValueError(f"no kernel tile divides the BlockMask blocks ({block_q}, {block_kv}); "
                         f"use multiples of {MIN_TILE}")
    return kept


def _config_fits(kwargs: dict, block_q: int, block_kv: int) -> bool:
    """BLOCK_M* extents divide the q mask block, BLOCK_N* the kv one."""
    return all((block_q if name.startswith("BLOCK_M") else block_kv) % size == 0
               for name, size in kwargs.items() if name.startswith("BLOCK_"))


def prune_for_mask(configs, named_args, **kwargs):
    """An `early_config_prune` keeping the first MAX_TUNED configs whose tiles divide
    the mask blocks."""
    args = {**named_args, **kwargs}
    kept = [c for c in configs if _config_fits(c.kwargs, args["SPARSE_Q"], args["SPARSE_KV"])]
    return kept[:MAX_TUNED] or [configs[-1]]


def autotune_enabled() -> bool:
    """FLEX_FA4_TRITON_AUTOTUNE=0 takes the first fitting tile instead (quick tests)."""
    return os.environ.get("FLEX_FA4_TRITON_AUTOTUNE", "1") != "0"


def seq_bucket(n: int) -> int:
    """Autotune key for a length: the next power of two, so every length does not retune."""
    return 1 << max(n - 1, 0).bit_length()


_TUNED: dict = {}
_CHOSEN: dict = {}


def tune_hash(key: tuple) -> int:
    """The value of the kernels' last argument, `tune_key`: the autotuner keys on it."""
    return hash(key) & 0x7FFFFFFF


def launch(kernel, tiles: tuple, grid, args: tuple, consts: dict, key: tuple,
           block_q: int, block_kv: int, reset_to_zero=None):
    """Run `kernel` with the BLOCK_* sizes of `tiles` (Tile or BwdTile): on a GPU autotuned once per `key`
    (a hashable summary of what changes the best tile: constexprs, length buckets,
    dtype), else the first tile that fits. `grid(meta)` gives the grid; `args` end
    with `tune_hash(key)`. Returns (the compiled kernel, its triton.Config) when one
    tile was launched directly, (None, None) when the autotuner ran.

    After the first call for a key the chosen config is launched directly: Triton's
    Autotuner.run costs ~30 us of Python per call, which shows in short launches."""
    if not autotune_enabled():
        # the first tile that compiles within this GPU's resources (a mod's loads can push a
        # tile's shared memory past the limit, which only the compiler knows)
        candidates = fitting(tiles, block_q, block_kv)
        for i, t in enumerate(candidates):
            cfg = t.config()
            try:
                return run_config(kernel, grid, args, consts, cfg), cfg
            except triton.runtime.errors.OutOfResources:
                if i == len(candidates) - 1:
                    raise
    full_key = (kernel, tiles, key)
    cfg = _CHOSEN.get(full_key)
    if cfg is not None:
        return run_config(kernel, grid, args, consts, cfg), cfg
    tuner_key = (kernel, tiles, tuple(reset_to_zero or ()))
    if tuner_key not in _TUNED:
        _TUNED[tuner_key] = triton.autotune(
            configs=[t.config() for t in tiles], key=["tune_key"],
            prune_configs_by={"early_config_prune": prune_for_mask},
            reset_to_zero=reset_to_zero,
        )(kernel)
    tuner = _TUNED[tuner_key]
    tuner[grid](*args, **consts)
    _CHOSEN[full_key] = tuner.best_config
    return None, None


def run_config(kernel, grid, args: tuple, consts: dict, cfg: triton.Config):
    """Launch one config through Triton; returns the compiled kernel (None in the interpreter)."""
    return kernel[grid(cfg.kwargs)](*args, **consts, **cfg.kwargs, num_warps=cfg.num_warps,
                                    num_stages=cfg.num_stages)
