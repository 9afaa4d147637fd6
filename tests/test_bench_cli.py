"""The benchmark command on CPU: end to end on a tiny sweep, WRONG results never
timed, the FLOP count, user mods loaded as module:function. Kept to a few seconds."""
import csv
import json
import textwrap
from pathlib import Path

import pytest
import torch

from flex_fa4 import mods
from flex_fa4.__main__ import main as flex_fa4_main
from flex_fa4.bench import flops, timing, variants
from flex_fa4.bench.backends import Prepared, Runner, Skip, register, unregister
from flex_fa4.bench.cli import main as bench_main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--seqlens", "64", "--head-dims", "16", "--batch", "1", "--heads", "2", "--dtypes", "fp32",
        "--reps", "2", "--warmup", "1", "--no-progress"]


class FakePeer:
    """Dense SDPA (right for noop and causal) with its output times `scale`, so 1.5
    makes a deliberately wrong backend; counts its calls."""

    def __init__(self, scale: float):
        self.scale, self.calls = scale, 0

    def prepare(self, case, m):
        if m.native is None or m.native.window is not None:
            raise Skip("noop and causal only")

        def fn(q, k, v):
            self.calls += 1
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=m.native.causal) * self.scale

        return Prepared(fn)


@pytest.fixture
def fake_runners():
    good, bad = FakePeer(1.0), FakePeer(1.5)
    register(Runner("test_good", good.prepare))
    register(Runner("test_wrong", bad.prepare))
    yield good, bad
    unregister("test_good")
    unregister("test_wrong")


def test_cli_end_to_end(tmp_path, capsys):
    rc = flex_fa4_main(["bench", "--variants", "noop,causal,document_causal", "--backends", "reference",
                        "--modes", "fwd,fwdbwd", "--out", str(tmp_path), *TINY])
    out = capsys.readouterr().out
    assert rc == 0
    assert "variant" in out and "TFLOP/s" in out and "reference*" in out and "FLOPs: fwd = 4*B*H*Sq*Skv*D" in out
    for name in ("results.json", "results.csv", "tflops.png"):
        assert (tmp_path / name).stat().st_size > 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["torch"] == torch.__version__ and data["meta"]["command"].startswith("flex-fa4 bench")
    rows = data["results"]
    assert len(rows) == 6 and all(r["status"] == "ok" and r["ms"] > 0 and r["rel_err"] < 1e-3 for r in rows)
    with open(tmp_path / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 6
    # a sweep split over several runs is put back together without running anything
    assert bench_main(["--merge", str(tmp_path / "results.json"), "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert merged["results"] == rows and len(merged["meta"]["merged_from"]) == 1


def test_wrong_backend_is_reported_and_never_timed(tmp_path, capsys, fake_runners):
    good, bad = fake_runners
    rc = bench_main(["--variants", "causal,alibi_causal", "--backends", "reference,test_good,test_wrong",
                     "--out", str(tmp_path), *TINY])
    out = capsys.readouterr().out
    rows = {(r["variant"], r["backend"]): r for r in json.loads((tmp_path / "results.json").read_text())["results"]}
    wrong = rows["causal", "test_wrong"]
    assert wrong["status"] == "WRONG" and wrong["ms"] is None and wrong["tflops"] is None
    assert "relative error out" in wrong["reason"]
    assert bad.calls == 1  # the checking call only
    assert rows["causal", "test_good"]["status"] == "ok"
    assert good.calls == 1 + 1 + 2 + 2  # check, warm-up, reps, a lead-in per round
    assert rows["alibi_causal", "test_good"]["status"] == "SKIP"
    assert "WRONG: relative error" in out and "test_good: noop and causal only" in out
    assert rc == 0  # a WRONG peer is reported; only a WRONG backend of ours fails the command


def test_failures_become_rows_and_a_wrong_kernel_of_ours_fails_the_command(tmp_path, capsys):
    def broken(case, m):
        def fn(q, k, v):
            raise RuntimeError("kernel exploded")
        return Prepared(fn)

    def needs_missing_package(case, m):
        import flex_fa4_no_such_package  # noqa: F401

    register(Runner("test_broken", broken))
    register(Runner("test_missing", needs_missing_package))
    register(Runner("test_ours_wrong", FakePeer(1.5).prepare, ours=True))
    try:
        rc = bench_main(["--variants", "causal", "--backends", "test_broken,test_missing,test_ours_wrong,reference",
                         "--out", str(tmp_path), *TINY])
    finally:
        for name in ("test_broken", "test_missing", "test_ours_wrong"):
            unregister(name)
    rows = {r["backend"]: r for r in json.loads((tmp_path / "results.json").read_text())["results"]}
    assert rows["test_broken"]["status"] == "ERROR" and "kernel exploded" in rows["test_broken"]["reason"]
    assert rows["test_missing"]["status"] == "SKIP" and "missing package" in rows["test_missing"]["reason"]
    assert rows["test_ours_wrong"]["status"] == "WRONG" and rows["reference"]["status"] == "ok"
    assert rc == 1
    assert "ERROR: RuntimeError: kernel exploded" in capsys.readouterr().out


def test_min_time_raises_the_reps_of_fast_ops_only(monkeypatch):
    """--min-time: an op gets enough reps for its timed runs to take that long (from its
    warm-up runs' time), never fewer than --reps and at most max_reps. The ops advance a
    fake clock instead of sleeping, so a loaded machine cannot change the counts."""
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])

    def op_taking(seconds):
        return (lambda: now.__setitem__(0, now[0] + seconds), [()])

    slow, fast = op_taking(2 ** -5), op_taking(2 ** -8)  # exact in binary: no rounding in the counts
    t_slow, t_fast = timing.time_ops([slow, fast], torch.device("cpu"), reps=3, warmup=2,
                                     min_seconds=2 ** -4)
    assert t_slow.reps == 3  # 3 x 31 ms is already past 62 ms
    assert t_fast.reps == 16  # 62.5 ms / 3.9 ms
    assert t_fast.median_ms == pytest.approx(1e3 * 2 ** -8)
    capped = timing.time_ops([fast], torch.device("cpu"), reps=3, warmup=2, min_seconds=2 ** -4,
                             max_reps=5)
    assert capped[0].reps == 5
    assert timing.reps_for(30, 0.001, 0.0, 2000) == 30  # off by default


def test_timed_ops_are_interleaved():
    """Each op: warm-up, then per round a lead-in and its share of the reps; rounds turn
    the order, so no op's runs all come before another's."""
    calls = []
    ops = [(lambda x, name=name: calls.append((name, x)), [(0,), (1,)]) for name in "abc"]
    timings = timing.time_ops(ops, torch.device("cpu"), reps=7, warmup=1, rounds=3)
    assert len(timings) == 3 and all(t.reps == 7 and 0 <= t.min_ms <= t.median_ms for t in timings)
    # 7 reps in rounds of 3, 2, 2, each share after one lead-in run
    order = "".join(n for n, _ in calls[3:])
    assert [n for n, _ in calls[:3]] == ["a", "b", "c"] and len(order) == 7 * 3 + 3 * 3
    assert order == "aaaabbbbcccc" + "bbbcccaaa" + "cccaaabbb"
    for name in "abc":
        # the lead-in takes the set before the next timed run's, so the timed runs alternate
        runs = [x for n, x in calls[3:] if n == name]
        timed = [x for i, x in enumerate(runs) if i not in (0, 4, 7)]
        assert timed == [0, 1, 0, 1, 0, 1, 0]


def test_unknown_backend_is_refused():
    with pytest.raises(SystemExit, match="unknown backend"):
        bench_main(["--backends", "nope", *TINY])


@pytest.mark.parametrize("S", [64, 200])
def test_unmasked_fraction_is_exact(S):
    doc_ids = variants.random_doc_ids(2, S)
    for mask_mod in (mods.causal_mask, mods.generate_sliding_window(16), mods.generate_prefix_lm_mask(S // 8),
                     mods.generate_doc_mask(doc_ids)):
        b, h, q, kv = torch.meshgrid(torch.arange(2), torch.arange(3), torch.arange(S), torch.arange(S), indexing="ij")
        dense = mask_mod(b, h, q, kv).double().mean().item()
        assert flops.unmasked_fraction(mask_mod, 2, 3, S, S) == pytest.approx(dense, abs=1e-12)
        # chunks of a few rows count the same
        assert flops.unmasked_fraction(mask_mod, 2, 3, S, S, max_elems=3 * S) == pytest.approx(dense, abs=1e-12)
    assert flops.unmasked_fraction(None, 2, 3, S, S) == 1.0
    assert flops.unmasked_fraction(mods.noop_mask, 2, 3, S, S) == 1.0


def test_flop_convention():
    fwd = flops.attention_flops(4, 16, 2048, 2048, 128, 1.0, "fwd")
    assert fwd == 4 * 4 * 16 * 2048 * 2048 * 128
    assert flops.attention_flops(4, 16, 2048, 2048, 128, 0.5, "fwd") == fwd / 2
    assert flops.attention_flops(4, 16, 2048, 2048, 128, 1.0, "bwd") == 2.5 * fwd
    assert flops.attention_flops(4, 16, 2048, 2048, 128, 1.0, "fwdbwd") == 3.5 * fwd


USER_MODS = textwrap.dedent("""
    import torch

    def shifted_causal(b, h, q_idx, kv_idx):
        return q_idx + 4 >= kv_idx

    def halve(score, b, h, q_idx, kv_idx):
        return score * 0.5

    def window_factory(S, device):
        def win(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (q_idx - kv_idx < S // 4)
        return {"score_mod": None, "mask_mod": win}

    def broken_factory(S):
        raise RuntimeError("no such variant today")

    def pair_factory(B, H, S, device):
        bias = torch.arange(H, dtype=torch.float32, device=device)
        return (lambda score, b, h, q_idx, kv_idx: score + bias[h], shifted_causal)
""")


def test_user_mods(tmp_path, monkeypatch, capsys):
    (tmp_path / "bench_user_mods.py").write_text(USER_MODS)
    monkeypatch.syspath_prepend(str(tmp_path))
    m = variants.resolve("bench_user_mods:shifted_causal")(1, 2, 64, "cpu")
    assert m.score_mod is None and m.mask_mod.__name__ == "shifted_causal"
    m = variants.resolve("bench_user_mods:halve")(1, 2, 64, "cpu")
    assert m.mask_mod is None and m.score_mod.__name__ == "halve"
    m = variants.resolve(f"{tmp_path / 'bench_user_mods.py'}:window_factory")(1, 2, 64, "cpu")
    assert m.score_mod is None and flops.unmasked_fraction(m.mask_mod, 1, 1, 64, 64) < 0.5
    m = variants.resolve("bench_user_mods:pair_factory")(1, 2, 64, "cpu")
    assert m.score_mod is not None and m.mask_mod.__name__ == "shifted_causal"
    with pytest.raises(ValueError, match="unknown variant"):
        variants.resolve("no_such_variant")
    rc = bench_main(["--variants", "bench_user_mods:broken_factory,bench_user_mods:pair_factory",
                     "--backends", "reference", "--out", str(tmp_path / "out"), *TINY])
    out = capsys.readouterr().out
    assert rc == 0 and "bench_user_mods:pair_factory" in out
    assert "ERROR: building the variant failed: RuntimeError: no such variant today" in out


def test_default_pytest_run_leaves_benchmarks_out():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    ids = [ln for ln in done.stdout.splitlines() if "::" in ln]
    assert ids and not any(ln.startswith("benchmarks/") for ln in ids), done.stdout[-2000:]


def test_an_error_in_one_of_ours_fails_the_command(tmp_path):
    def broken(case, m):
        def fn(q, k, v):
            raise RuntimeError("kernel exploded")
        return Prepared(fn)

    register(Runner("test_ours_broken", broken, ours=True))
    try:
        rc = bench_main(["--variants", "causal", "--backends", "test_ours_broken,reference", "--out", str(tmp_path),
                         *TINY])
    finally:
        unregister("test_ours_broken")
    assert rc == 1


def test_script_case_options_give_one_case_per_variant_and_length():
    """flex_fa4.bench.script_args: the case options benchmarks/host_time.py and sustained.py
    share, resolved to forward Cases and the bench's own Mods."""
    import argparse

    from flex_fa4.bench import script_args

    p = argparse.ArgumentParser()
    script_args.add_case_options(p, variants="causal,noop", seqlens="128,256", backends="fa4")
    args = p.parse_args(["--batch", "1", "--heads", "2", "--head-dim", "64"])
    got = [(c.variant, c.S, c.B, c.H, c.D, c.mode, m.native)
           for c, m in script_args.cases(args, torch.device("cpu"))]
    assert got == [(v, S, 1, 2, 64, "fwd", variants.resolve(v)(1, 2, S, "cpu").native)
                   for v in ("causal", "noop") for S in (128, 256)]
    assert args.backends == "fa4"
