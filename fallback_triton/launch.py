"""A kernel launch prepared once and run many times with new tensors.

Note [fast relaunch]: `kernel[grid](...)` (JITFunction.run) binds and specializes
every argument, looks the compiled kernel up, checks hooks and globals, on every
call: 23 us of host time per forward launch on the H200 machine, against 6 us for
the compiled kernel's own launcher (2026-11-21). A forward+backward makes three
launches, and at S=2048 host time is what the sparse rows are bound by.

A `Launch` holds a kernel's arguments except the leading per-call tensors (q, k, v,
outputs, workspaces). Its first run goes through Triton (configs.launch: autotuned
on a GPU); once Triton has handed back the compiled kernel for a fixed tile, later
runs call that kernel's launcher directly. That is sound because
with fixed shapes, strides, scalars and constexprs the only part of Triton's
specialization that can change from call to call is whether a tensor's address is
16-byte aligned, which is part of the cache key here. The launch itself is the
compiled kernel's launcher called as JITFunction.run calls it, without launch
metadata and hooks (in Triton 3.6 even `CompiledKernel[grid]` builds the metadata
when no hook is registered). The launcher's calling convention is Triton's
internal one, checked for Triton 3.6: other versions, the interpreter, runs with a
Triton launch hook registered (profilers) and FLEX_FA4_TRITON_FAST_LAUNCH=0 always
go through Triton.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Callable, Optional

import torch
import triton

from . import configs

log = logging.getLogger("flex_fa4")


def _hooked() -> bool:
    """True when a Triton launch hook is registered (a profiler): then every launch
    goes through Triton, which calls it. Triton 3.6 keeps hooks in HookChain objects
    (empty when unused); older versions use None."""
    runtime = triton.knobs.runtime
    return any(h is not None and getattr(h, "calls", True) for h in (runtime.launch_enter_hook,
                                                                     runtime.launch_exit_hook))


@functools.lru_cache(maxsize=None)
def fast_launch_enabled() -> bool:
    """Note [fast relaunch]: on for Triton 3.6 unless FLEX_FA4_TRITON_FAST_LAUNCH=0."""
    if os.environ.get("FLEX_FA4_TRITON_FAST_LAUNCH", "1") == "0":
        return False
    if not triton.__version__.startswith("3.6."):
        log.info("flex_fa4: Triton %s is not the version whose launcher the fast relaunch was written for (3.6); "
                 "every launch goes through Triton (~17 us more host time each)", triton.__version__)
        return False
    return True


_current_stream = None


def _stream(device: int):
    global _current_stream
    if _current_stream is None:
        _current_stream = triton.runtime.driver.active.get_current_stream
    return _current_stream(device)


def _specialization(tensors: tuple) -> tuple:
    """What may differ between two runs of one Launch and changes Triton's choice of
    compiled kernel: the current device and each tensor's 16-byte alignment."""
    return torch.cuda.current_device(), tuple(t.data_ptr() % 16 == 0 for t in tensors)


class Launch:
    """One kernel with fixed arguments after the first `len(tensors)` positions.

    `config` fixes the tile (interpreter, decoding); otherwise `tiles` are autotuned
    under `tune_key` by configs.launch. `grid(meta)` gives the grid for a tile's
    BLOCK_* sizes."""

    def __init__(self, kernel, static_args: tuple, consts: dict, grid: Callable[[dict], tuple], *,
                 config: Optional[triton.Config] = None, tiles: tuple = (), tune_key: tuple = (),
                 block_q: int = 0, block_kv: int = 0, reset_to_zero: Optional[list] = None):
        self.kernel, self.static_args, self.consts, self.grid = kernel, static_args, consts, grid
        self.config, self.tiles, self.tune_key = config, tiles, tune_key
        self.block_q, self.block_kv, self.reset_to_zero = block_q, block_kv, reset_to_zero
        if "tune_key" in kernel.arg_names:  # the autotuned kernels' last argument (configs.tune_hash)
            self.static_args = static_args + (configs.tune_hash(tune_key),)
        self._compiled: dict = {}  # (device, alignment of the tensors) -> (CompiledKernel runner, static values)

    def __call__(self, *tensors: torch.Tensor) -> None:
        if self._compiled and not _hooked():
            key = _specialization(tensors)
            hit = self._compiled.get(key)
            if hit is not None:
                launcher, grid, function, packed_metadata, rest = hit
                # the compiled kernel's own launcher, as JITFunction.run calls it, minus
                # the launch metadata and hooks (none are registered)
                launcher(grid[0], grid[1], grid[2], _stream(key[0]), function, packed_metadata, None, None, None,
                         *tensors, *rest)
                return
        self._launch_through_triton(tensors)

    def _launch_through_triton(self, tensors: tuple) -> None:
        args = tensors + self.static_args
        if self.config is not None:
            cfg = self.config
            compiled = configs.run_config(self.kernel, self.grid, args, self.consts, cfg)
        else:
            compiled, cfg = configs.launch(self.kernel, self.tiles, self.grid, args, self.consts, self.tune_key,
                                           self.block_q, self.block_kv, reset_to_zero=self.reset_to_zero)
        if compiled is None or not hasattr(compiled, "packed_metadata") or tensors[0].device.type != "cuda":
            return  # the interpreter, or the autotuner's first run: nothing to keep yet
        if not fast_launch_enabled():
            return
        self._keep(compiled, cfg, tensors, args)

    def _keep(self, compiled, cfg: triton.Config, tensors: tuple, args: tuple) -> None:
        """Remember the compiled kernel with every argument in signature order (what
        JITFunction.run hands its launcher: the positional ones, then the keywords)."""
        named = {**self.consts, **cfg.kwargs}
        names = self.kernel.arg_names
        try:
            values = list(args) + [named[n] for n in names[len(args):]]
        except KeyError as e:  # a parameter with a default we did not pass: keep Triton's path
            log.debug("fast relaunch off for %s: parameter %s not passed", self.kernel.__name__, e)
            return
        if len(values) != len(names):
            return
        grid = tuple(self.grid(cfg.kwargs))
        launcher = compiled.run  # loads the module on first use
        self._compiled[_specialization(tensors)] = (launcher, grid + (1,) * (3 - len(grid)), compiled.function,
                                                    compiled.packed_metadata, tuple(values[len(tensors):]))
