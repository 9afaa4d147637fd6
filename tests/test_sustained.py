"""benchmarks/sustained.py on CPU: nvidia-smi's samples, the per-window summary, and that
only backends matching the reference are timed. The timed windows need a GPU."""
import pytest
import torch

from flex_fa4.bench import variants
from flex_fa4.bench.backends import Case, Prepared, Runner, register, unregister

from scripts import load_script


@pytest.fixture(scope="module")
def sustained():
    return load_script("benchmarks/sustained.py")


def test_samples_keep_only_pairs_of_numbers(sustained):
    text = "1980, 350.12\n[N/A], 300.0\n1500, 690.5\nFailed to read\n"
    assert sustained.parse_samples(text) == [(1980.0, 350.12), (1500.0, 690.5)]


def test_window_summary(sustained):
    row = sustained.summarize("fa4", calls=100, seconds=0.2, flops=1e12,
                              samples=[(1500.0, 600.0), (1600.0, 700.0)])
    assert row["ms"] == pytest.approx(2.0)
    assert row["tflops"] == pytest.approx(500.0)
    assert (row["mhz"], row["watts"]) == (pytest.approx(1550.0), pytest.approx(650.0))
    assert row["joules_per_call"] == pytest.approx(1.3)
    with pytest.raises(ValueError, match="no power samples"):
        sustained.summarize("fa4", calls=100, seconds=0.2, flops=1e12, samples=[])


def test_only_backends_that_match_the_reference_are_timed(sustained, capsys):
    def wrong(case, mods):  # plain attention where the variant is causal
        return Prepared(lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v))

    register(Runner("wrong_peer", wrong))
    try:
        case = Case("causal", 64, 16, 1, 2, torch.float32, "fwd", torch.device("cpu"))
        mods = variants.resolve("causal")(1, 2, 64, case.device)
        ops = sustained.checked_ops(case, mods, ["reference", "wrong_peer", "sdpa_cudnn"],
                                    flops=1.0, fraction=0.5)
    finally:
        unregister("wrong_peer")
    assert set(ops) == {"reference"}
    printed = capsys.readouterr().out
    assert "wrong_peer WRONG" in printed and "sdpa_cudnn SKIP" in printed
    with pytest.raises(SystemExit, match="unknown backend"):
        sustained.checked_ops(case, mods, ["no_such_backend"], flops=1.0, fraction=0.5)
