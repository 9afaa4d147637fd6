"""Regression timings with pytest-benchmark, kept out of the default test run
(pytest's testpaths is tests/). Run them by path:

    pytest benchmarks/ --benchmark-autosave            # record a baseline
    pytest benchmarks/ --benchmark-compare --benchmark-compare-fail=median:10%

Small shapes on the reference backend on CPU; on a GPU the issue's shape (B=4, H=16,
S=2048, D=128, bf16) on every kernel backend of ours that the machine has. The ops,
inputs and mods are the `flex-fa4 bench` ones (flex_fa4.bench), so both agree on what
is measured; this suite only adds pytest-benchmark's storage and comparison.
"""
import pytest
import torch

pytest.importorskip("pytest_benchmark")

from flex_fa4.bench import peers  # noqa: E402,F401 - registers the peers
from flex_fa4.bench.backends import RUNNERS, UNSERVED, Case, Skip  # noqa: E402
from flex_fa4.bench.flops import attention_flops, unmasked_fraction  # noqa: E402
from flex_fa4.bench.runner import make_inputs, timed_callable  # noqa: E402
from flex_fa4.bench.timing import sync  # noqa: E402
from flex_fa4.bench.variants import VARIANTS  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
SHAPE = (dict(B=4, H=16, S=2048, D=128, dtype=torch.bfloat16) if CUDA
         else dict(B=1, H=2, S=256, D=64, dtype=torch.float32))
BACKENDS = ["fa4", "triton"] if CUDA else ["reference"]
VARIANT_NAMES = ["noop", "causal", "sliding_window", "document_causal", "alibi_causal", "softcap_causal"]


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("variant", VARIANT_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_attention(benchmark, backend, variant, mode):
    s = SHAPE
    case = Case(variant, s["S"], s["D"], s["B"], s["H"], s["dtype"], mode, DEVICE)
    mods = VARIANTS[variant](case.B, case.H, case.S, DEVICE)
    try:
        prep = RUNNERS[backend].prepare(case, mods)
    except Skip as e:
        pytest.skip(str(e))
    op = timed_callable(prep, mode)
    args = [prep.to_native(t) for t in make_inputs(case, 1)[0]]

    def run():
        op(*args)
        sync(DEVICE)

    try:
        run()  # compile outside the measurement; an unserved case is a skip
    except ValueError as e:
        if UNSERVED in str(e):
            pytest.skip(str(e).splitlines()[0])
        raise
    benchmark.pedantic(run, rounds=20 if CUDA else 5, iterations=1, warmup_rounds=2 if CUDA else 1)
    fraction = unmasked_fraction(mods.mask_mod, case.B, case.H, case.S, case.S, DEVICE)
    flops = attention_flops(case.B, case.H, case.S, case.S, case.D, fraction, mode)
    benchmark.extra_info.update(shape=f"B={case.B} H={case.H} S={case.S} D={case.D} {case.dtype_name}",
                                fraction=fraction, tflops=flops / benchmark.stats["median"] / 1e12)
