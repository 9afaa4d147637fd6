"""benchmarks/kernel_ab.py on CPU: its cases are the bench's variants built as flex_attention
builds an fa4 launch, and its old kernel package comes out of git. The timing itself needs
a GPU (device tool)."""
import sys
from pathlib import Path

import pytest
import torch

from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kernel_ab():
    return load_script("benchmarks/kernel_ab.py")


def test_cases_are_the_bench_variants_with_their_block_masks(kernel_ab):
    S, cpu = 256, torch.device("cpu")
    call, mods, flops = kernel_ab.build_case("causal", S, cpu)
    assert not call.dense and call.mask_mod is not None and call.score_mod is None
    assert (call.block_sparse.block_size_q, call.block_sparse.block_size_kv) == (128, 128)
    assert mods.native.causal
    pairs = S * (S + 1) // 2  # kv <= q
    assert flops == pytest.approx(4 * kernel_ab.B * kernel_ab.H * pairs * kernel_ab.D)
    call, mods, flops = kernel_ab.build_case("alibi_causal", S, cpu)
    assert call.score_mod is not None and mods.native is None
    call, _, flops = kernel_ab.build_case("noop", S, cpu)
    assert call.dense and call.mask_mod is None
    assert flops == pytest.approx(4 * kernel_ab.B * kernel_ab.H * S * S * kernel_ab.D)


def test_upstream_is_the_bench_runner_and_skips_without_a_gpu(kernel_ab):
    call, mods, _ = kernel_ab.build_case("causal", 128, torch.device("cpu"))
    assert kernel_ab.upstream_op(call, mods) is None


def test_old_package_comes_from_a_git_revision(kernel_ab, tmp_path):
    pytest.importorskip("cutlass")
    if not (ROOT / ".git").exists():
        pytest.skip("needs the repository's .git")
    old = kernel_ab.import_old("HEAD", str(tmp_path))
    try:
        assert old.__name__ == "cute_kernels_old" and hasattr(old, "ForwardPlan")
        assert Path(old.__file__).parent == tmp_path / "cute_kernels_old"
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == "cute_kernels_old"]:
            del sys.modules[name]
