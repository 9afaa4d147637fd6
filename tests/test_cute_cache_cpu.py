"""The CuTeDSL disk cache's writing side on the CPU: a compiled sm_90a kernel is exported to a
shared library under a symbol unique to its key, published atomically even when several
writers race, and a failing export is reported, not hidden. (Loading and launching need a
GPU: tests/test_cute_disk_cache.py.)"""
from __future__ import annotations

import os
import subprocess
import threading

import pytest

os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")  # before cutlass is imported
pytest.importorskip("cutlass")


@pytest.fixture(scope="module")
def compiled():
    import cute_kernels as ck

    return ck.compile_only(head_dim=64, mask_mod=ck.CAUSAL_MASK, block_sparse=True)


def _key(name="a"):
    from cute_kernels import cache

    return cache.CompileKey(kernel=name, arch="sm_90a", dtype="bf16", config=None, score_mod=None,
                            mask_mod=None, sparse=(True, True, 1, 1), has_max=False)


def test_key_names_the_libraries_and_sources():
    from cute_kernels import cache

    k = _key()
    assert "nvidia-cutlass-dsl=" in k.libraries and k.sources == cache.SOURCE_DIGEST
    assert cache._symbol(k) != cache._symbol(_key("b"))  # Note [unique export names]


def test_racing_writers_publish_one_complete_library(compiled, tmp_path):
    from cute_kernels import cache

    key = _key()
    path = str(tmp_path / f"fwd-{key.digest()}.so")
    threads = [threading.Thread(target=cache._store, args=(compiled, path, cache._symbol(key)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temporary leftovers
    with open(path, "rb") as f:
        assert f.read(4) == b"\x7fELF"
    symbols = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True,
                             text=True).stdout
    assert f"__tvm_ffi_{cache._symbol(key)}" in symbols


def test_failed_export_is_logged(tmp_path, caplog):
    from cute_kernels import cache

    class Broken:
        def export_to_c(self, *a, **k):
            raise RuntimeError("no exporter here")

    path = str(tmp_path / "fwd-x.so")
    with caplog.at_level("WARNING", logger="flex_fa4.cute_kernels"):
        cache._store(Broken(), path, "flex_fwd_x")
    assert not os.path.exists(path)
    assert "no exporter here" in caplog.text
