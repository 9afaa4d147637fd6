"""Host time and GPU time per call, for each backend of `flex-fa4 bench`.

A timed loop measures whichever is slower, the host issuing calls or the GPU running
them; at S=2048 with a sparse mask the two are close (BENCHMARKS.md, session 9). This
separates them: while a spin kernel holds the GPU for 150 ms, the host issues `--calls`
calls (host time per call), which then run back to back behind it (GPU time per call,
from events around them). Best of 3 rounds. Needs a CUDA GPU:

    python3 benchmarks/host_time.py [--variants noop,causal] [--seqlens 2048,512]
        [--backends fa4,triton,fa4_upstream] [--profile DIR]

--profile writes a cProfile of 300 calls of each (case, backend) to DIR.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flex_fa4.bench.backends import RUNNERS, Skip  # noqa: E402
from flex_fa4.bench.runner import make_inputs  # noqa: E402
from flex_fa4.bench.script_args import add_case_options, cases  # noqa: E402

SPIN_S = 0.15


def per_call_us(fn, sets, calls: int) -> tuple[float, float]:
    """(host us, GPU us) per call: best of 3 rounds of `calls` calls queued behind a spin."""
    best_host = best_gpu = float("inf")
    for _ in range(3):
        torch.cuda._sleep(int(SPIN_S * 2e9))  # ~150 ms at 2 GHz: the calls queue behind it
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        t0 = time.perf_counter()
        for i in range(calls):
            fn(*sets[i % len(sets)])
        host = time.perf_counter() - t0
        end.record()
        torch.cuda.synchronize()
        if host > SPIN_S:  # the GPU ran dry while the host was still issuing
            print(f"  (host took {host * 1e3:.0f} ms for {calls} calls: GPU time is an upper bound)")
        best_host = min(best_host, host / calls * 1e6)
        best_gpu = min(best_gpu, start.elapsed_time(end) / calls * 1e3)
    return best_host, best_gpu


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_options(ap, variants="noop,causal,document_causal,alibi_causal", seqlens="2048,512",
                     backends="fa4,triton,fa4_upstream")
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--profile", default=None, help="directory for cProfile listings")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("host_time.py needs a CUDA GPU (it times queued launches)")
    dev = torch.device("cuda")
    print(f"{'variant':16s} {'S':>5s} {'backend':18s} {'host us':>8s} {'GPU us':>8s}")
    for case, mods in cases(args, dev):
        var, S = case.variant, case.S
        for name in args.backends.split(","):
            try:
                prep = RUNNERS[name].prepare(case, mods)
            except Skip as why:
                print(f"{var:16s} {S:5d} {name:18s} skipped: {why}")
                continue
            sets = [tuple(prep.to_native(t) for t in s) for s in make_inputs(case, 2)]
            for i in range(5):  # compile, autotune, fill the caches
                prep.fn(*sets[i % 2])
            torch.cuda.synchronize()
            host, gpu = per_call_us(prep.fn, sets, args.calls)
            print(f"{var:16s} {S:5d} {name:18s} {host:8.1f} {gpu:8.1f}", flush=True)
            if args.profile:
                profile(prep.fn, sets, os.path.join(args.profile, f"{var}_{S}_{name}.txt"))


def profile(fn, sets, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    prof = cProfile.Profile()
    prof.enable()
    for i in range(300):
        fn(*sets[i % len(sets)])
    prof.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(30)
    with open(path, "w") as f:
        f.write(text.getvalue())


if __name__ == "__main__":
    main()
