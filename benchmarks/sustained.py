"""Sustained speed and energy per call at the power cap: each backend runs alone, back to
back, while nvidia-smi samples the SM clock and board power.

Why: at S=8192 an H100 or H200 reaches its power cap within a second, and the clock then
settles where the board power meets the limit, so the kernel that spends less energy per
call runs more calls per second. An interleaved sweep (`flex-fa4 bench`) shares one clock
among all the backends it times, and its medians moved by 2-6% with the set of backends in
it (BENCHMARKS.md, session 11). Here every backend gets the clock its own power draw sets:
after `--warm` seconds alone, `--seconds` of calls are timed with CUDA events, and the
samples over that window give its clock, power and joules per call. The backends alternate
for `--rounds` rounds. Needs a CUDA GPU and nvidia-smi:

    python3 benchmarks/sustained.py --variants causal,noop --seqlens 8192 \\
        --backends fa4,fa4_upstream,torch_flex_flash [--seconds 2.5] [--rounds 2] [--out DIR]

Backends and variants are `flex-fa4 bench`'s (runners in flex_fa4/bench), at B=4, H=16,
D=128, bf16 by default; every backend's output is checked against the reference first.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SMI_QUERY = ["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
             "-lms", "50"]


def parse_samples(text: str) -> list[tuple[float, float]]:
    """(SM MHz, watts) per nvidia-smi line; lines that are not two numbers are dropped."""
    samples = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            mhz, watts = (float(p) for p in parts)
        except ValueError:
            continue
        samples.append((mhz, watts))
    return samples


def summarize(name: str, calls: int, seconds: float, flops: float, samples) -> dict:
    """One backend's window: time per call, TFLOP/s, mean clock and power, joules per call."""
    if calls <= 0 or seconds <= 0 or not samples:
        raise ValueError(f"{name}: no calls or no power samples in the timed window")
    ms = seconds * 1e3 / calls
    watts = statistics.fmean(w for _, w in samples)
    return {"backend": name, "calls": calls, "ms": ms, "tflops": flops / ms / 1e9,
            "mhz": statistics.fmean(m for m, _ in samples), "watts": watts,
            "joules_per_call": watts * ms / 1e3, "samples": len(samples)}


def run_window(fn, args, warm: float, seconds: float):
    """(calls, seconds) of back-to-back calls after `warm` seconds of them, with the
    nvidia-smi samples taken during the timed part."""
    t_end = time.time() + warm
    while time.time() < t_end:
        for _ in range(5):
            fn(*args)
        torch.cuda.synchronize()
    smi = subprocess.Popen(SMI_QUERY, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)  # nvidia-smi's first sample
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        calls = 0
        start.record()
        t_end = time.time() + seconds
        while time.time() < t_end:
            for _ in range(5):
                fn(*args)
            calls += 5
            torch.cuda.synchronize()
        end.record()
        torch.cuda.synchronize()
    finally:
        smi.terminate()
        text = smi.communicate()[0]
    return calls, start.elapsed_time(end) / 1e3, parse_samples(text)[1:]  # first: before the window


def checked_ops(case, mods, backends, flops: float, fraction: float) -> dict:
    """{backend: flex_fa4.bench.runner.Checked} of the backends whose output on one seeded
    input set matched the reference; the others (skipped, failed, WRONG) are printed with
    their reason and never timed."""
    from flex_fa4.bench.backends import RUNNERS, check_runner_names
    from flex_fa4.bench.runner import Checked, case_inputs, check_backend, result_base

    importlib.import_module("flex_fa4.bench.peers")  # registers the peer runners
    check_runner_names(backends)  # before the reference is computed
    inputs = case_inputs(case, mods, n_sets=1, check_pairs=1 << 32)
    ops = {}
    for name in backends:
        got = check_backend(case, RUNNERS[name], mods, inputs,
                            result_base(case, name, fraction, flops))
        if isinstance(got, Checked):
            ops[name] = got
        else:
            print(f"{case.variant} S={case.S}: {name} {got.status}: {got.reason}")
    return ops


def main(argv=None) -> int:
    from flex_fa4.bench.flops import attention_flops, unmasked_fraction
    from flex_fa4.bench.script_args import add_case_options, cases

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_case_options(p, variants="causal,noop", seqlens="8192",
                     backends="fa4,fa4_upstream,torch_flex_flash")
    p.add_argument("--warm", type=float, default=1.0, help="seconds alone before the window")
    p.add_argument("--seconds", type=float, default=2.5, help="seconds timed per window")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("sustained.py needs a CUDA GPU (and nvidia-smi)")
    B, H, D, device = args.batch, args.heads, args.head_dim, torch.device("cuda")
    rows = []
    for case, mods in cases(args, device):
        S = case.S
        fraction = unmasked_fraction(mods.mask_mod, B, H, S, S, device)
        flops = attention_flops(B, H, S, S, D, fraction, "fwd")
        ops = checked_ops(case, mods, args.backends.split(","), flops, fraction)
        for r in range(args.rounds):
            for name, checked in ops.items():
                calls, seconds, samples = run_window(checked.op, checked.sets[0], args.warm,
                                                     args.seconds)
                row = dict(summarize(name, calls, seconds, flops, samples),
                           variant=case.variant, S=S, round=r, rel_err=checked.base["rel_err"])
                rows.append(row)
                print(json.dumps(row), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"sustained_{os.getpid()}.json"), "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "argv": sys.argv[1:], "rows": rows}, f, indent=1)
    print("%-16s %5s %-18s %5s %8s %8s %6s %6s %8s" % ("variant", "S", "backend", "round", "ms",
                                                        "TFLOP/s", "MHz", "W", "J/call"))
    for r in rows:
        print("%-16s %5d %-18s %5d %8.3f %8.1f %6.0f %6.0f %8.3f" % (
            r["variant"], r["S"], r["backend"], r["round"], r["ms"], r["tflops"], r["mhz"],
            r["watts"], r["joules_per_call"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
