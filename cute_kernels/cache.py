"""Compile cache for the CuTeDSL kernels: an in-memory dict, plus an optional on-disk
cache of exported TVM-FFI modules.

Disk cache: directory $FLEX_FA4_CACHE_DIR (default ~/.cache/flex_fa4), one
`<digest>.so` per compile key. Files are written to a temporary name and renamed into
place, so two processes compiling the same kernel at once both succeed and readers never
see a partial file.

Note [disk cache is opt-in]: FLEX_FA4_DISK_CACHE=1 turns it on. It is off by default
because, on the device H200 on 2026-11-21, a benchmark process whose first fa4 call
loaded a kernel exported by an earlier process segfaulted inside cuLaunchKernelEx
(`python -m flex_fa4 bench --modes fwdbwd` after a `--modes fwd` run); the same sweep
with the cache off ran clean, and tests/test_cute_disk_cache.py (one kernel, a
fresh directory) passes. Until the cause is found, each process compiles (1-3 s a
variant) and keeps kernels in memory.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

from mod_codegen.cache_dir import cache_dir  # one definition for every package

FORMAT_VERSION = 1


def _source_digest() -> str:
    """Hash of the kernel sources, so an edited kernel never loads a stale disk entry."""
    here = os.path.dirname(os.path.abspath(__file__))
    files = sorted(os.path.join(here, f) for f in os.listdir(here) if f.endswith(".py"))
    files.append(os.path.join(os.path.dirname(here), "mod_codegen", "emit_cute.py"))
    h = hashlib.sha256()
    for f in files:
        if os.path.exists(f):
            with open(f, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()[:16]


SOURCE_DIGEST = _source_digest()


@dataclass(frozen=True)
class CompileKey:
    """Everything that changes the generated code (never tensor values or sizes)."""

    kernel: str
    arch: str
    dtype: str
    config: Any  # FwdConfig
    score_mod: tuple | None
    mask_mod: tuple | None
    sparse: tuple  # (has_sparse, has_full)
    has_max: bool
    version: int = FORMAT_VERSION
    sources: str = SOURCE_DIGEST

    def digest(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:32]


_memory: dict[CompileKey, Any] = {}
last_compile_seconds: float = 0.0  # wall time of the most recent compile or disk load (0 on a hit)
last_source: str = ""  # "memory" | "disk" | "compile"


def _disk_enabled() -> bool:
    return os.environ.get("FLEX_FA4_DISK_CACHE", "0") == "1"  # Note [disk cache is opt-in]


def get_or_compile(key: CompileKey, compile_fn: Callable[[], Any], *, for_launch: bool = True):
    """Return a callable compiled kernel for key, compiling (and exporting) on a miss."""
    global last_compile_seconds, last_source
    hit = _memory.get(key)
    if hit is not None:
        last_compile_seconds, last_source = 0.0, "memory"
        return hit
    import cutlass.cute  # noqa: F401  (first import is ~1 s; not part of the compile time)

    t0 = time.perf_counter()
    fn = None
    last_source = "disk"
    path = os.path.join(cache_dir(), f"fwd-{key.digest()}.so")
    if for_launch and _disk_enabled() and os.path.exists(path):
        fn = _load(path)
    if fn is None:
        last_source = "compile"
        compiled = compile_fn()
        fn = compiled
        if for_launch and _disk_enabled():
            _store(compiled, path)
    last_compile_seconds = time.perf_counter() - t0
    _memory[key] = fn
    return fn


def _load(path: str):
    try:
        import cutlass.cute as cute

        mod = cute.runtime.load_module(path, enable_tvm_ffi=True)
        return getattr(mod, "flex_fwd")
    except Exception:  # a stale or foreign file: recompile
        return None


def _store(compiled, path: str) -> None:
    """export_to_c -> object file -> shared library, published by an atomic rename."""
    import subprocess

    import cutlass.cute as cute

    folder = os.path.dirname(path)
    tmp_dir = None
    try:
        os.makedirs(folder, exist_ok=True)
        tmp_dir = tempfile.mkdtemp(dir=folder, prefix=".tmp-")
        obj, lib = os.path.join(tmp_dir, "k.o"), os.path.join(tmp_dir, "k.so")
        compiled.export_to_c(obj, function_name="flex_fwd")
        libs = cute.runtime.find_runtime_libraries(enable_tvm_ffi=True)
        subprocess.run(["gcc", "-shared", "-o", lib, obj, *libs], check=True, capture_output=True)
        os.replace(lib, path)
    except Exception:
        pass  # the disk cache is an optimization; never fail a call because of it
    finally:
        if tmp_dir is not None:
            import shutil

            shutil.rmtree(tmp_dir, ignore_errors=True)
