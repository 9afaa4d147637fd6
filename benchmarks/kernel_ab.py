"""A/B of the CuTeDSL forward kernel: an earlier commit's `cute_kernels` against the working
tree's (or one FwdConfig against the default), in one process, timed interleaved, with
upstream FA4 where it runs the case.

Why one process: fresh processes on one GPU differ by a few % at S=8192 (power cap, clocks),
which is the size of most kernel changes. Interleaved in one process, both kernels see the
same clocks, and the working tree's output is checked to be bit-equal to the old one's
(a change that is not meant to change numerics must not). Needs a CUDA GPU:

    python3 benchmarks/kernel_ab.py --old HEAD~1 [--cases causal:8192,noop:2048]
        [--new-config '{"tile_overlap": true}'] [--min-time 1.0] [--out DIR]

--old is a git revision (its `git archive REV cute_kernels`) or a directory holding an old
copy of the package, for machines without the repository's .git, such as the device
tool's copy of the working tree: unpack it first with
`mkdir -p .exp/old && git archive REV cute_kernels | tar -x -C .exp/old`, carry .exp and pass
`--old .exp/old/cute_kernels`. Either way it is copied under a temporary directory and
imported as `cute_kernels_old`. --new-config overrides fields of the config the working
tree's heuristic picks, for the "new" side only (with --old HEAD: a config A/B).

The cases are `flex-fa4 bench` variants at B=4, H=16, D=128, bf16, built the way
flex_attention(backend="fa4") builds its launch (BlockMask, traced mods, plan), and upstream
FA4 runs through the benchmark's own runner (flex_fa4/bench/peers.py), so both tools time
the same problems.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from flex_fa4.bench.timing import time_ops  # noqa: E402

DEFAULT_CASES = ("noop:8192,causal:8192,sliding_window:8192,document_causal:8192,"
                 "alibi_causal:8192,causal:2048,sliding_window:2048,document_causal:2048")
B, H, D = 4, 16, 128


def import_old(old: str, into: str):
    """`cute_kernels` at git revision `old`, or the package directory `old`, imported as
    the package `cute_kernels_old`."""
    target = os.path.join(into, "cute_kernels_old")
    if os.path.isdir(old):
        shutil.copytree(old, target, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        blob = subprocess.run(["git", "-C", ROOT, "archive", old, "cute_kernels"], check=True,
                              capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    path = os.path.join(target, os.path.relpath(member.name, "cute_kernels"))
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "wb") as f:
                        f.write(tar.extractfile(member).read())
    sys.path.insert(0, into)
    import cute_kernels_old
    return cute_kernels_old


def build_case(variant: str, S: int, device):
    """(AttentionCall, Mods, FLOPs) of a bench variant: random bf16 q, k, v, the variant's
    BlockMask and traced mods as flex_attention passes them to the fa4 backend."""
    from flex_fa4 import create_block_mask
    from flex_fa4.api import _build_call
    from flex_fa4.bench.flops import attention_flops, unmasked_fraction
    from flex_fa4.bench.variants import resolve

    mods = resolve(variant)(B, H, S, device)
    q, k, v = (torch.randn(B, H, S, D, device=device, dtype=torch.bfloat16) for _ in range(3))
    block_mask = None
    if mods.mask_mod is not None:
        block_mask = create_block_mask(mods.mask_mod, B, H, S, S, device=device)
    call = _build_call(q, k, v, mods.score_mod, block_mask, None, False, True, False, None)
    fraction = unmasked_fraction(mods.mask_mod, B, H, S, S, device)
    return call, mods, attention_flops(B, H, S, S, D, fraction, "fwd")


def plan_for(ck, call, config=None):
    """`ck.ForwardPlan` for the call, as flex_fa4's fa4 backend builds it."""
    return ck.ForwardPlan(call.q, call.k, call.v, scale=call.scale,
                          block_sparse=None if call.dense else call.block_sparse,
                          score_mod=call.score_mod, mask_mod=call.mask_mod, _config=config)


def upstream_op(call, mods):
    """(fn, args) of upstream FA4 through the benchmark's runner, or None where it cannot
    run the case (no native form, not importable)."""
    from flex_fa4.bench.backends import RUNNERS, Case, Skip

    importlib.import_module("flex_fa4.bench.peers")  # registers the peer runners

    case = Case("ab", call.q.shape[2], D, B, H, call.q.dtype, "fwd", call.q.device)
    try:
        prepared = RUNNERS["fa4_upstream"].prepare(case, mods)
    except Skip as e:
        print(f"  upstream FA4 skipped: {e}")
        return None
    args = tuple(prepared.to_native(t) for t in (call.q, call.k, call.v))
    return prepared.fn, args


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True,
                   help="git revision of the old kernel, or a directory holding its package")
    p.add_argument("--cases", default=DEFAULT_CASES, help="variant:S,... (flex-fa4 bench variants)")
    p.add_argument("--new-config", default=None,
                   help="FwdConfig fields for the new side, as JSON: '{\"tile_overlap\": true}'")
    p.add_argument("--reps", type=int, default=80)
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--min-time", type=float, default=1.0,
                   help="seconds of timed runs per kernel and case at least (reps raised to fit)")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("kernel_ab.py needs a CUDA GPU")
    import cute_kernels
    from cute_kernels.config import choose_config

    override = json.loads(args.new_config) if args.new_config else None
    kernels = {"old": import_old(args.old, tempfile.mkdtemp(prefix="kernel_ab_")),
               "new": cute_kernels}
    device = torch.device("cuda")
    rows = []
    for spec in args.cases.split(","):
        variant, S = spec.split(":")
        seed = torch.seed()
        call, mods, flops = build_case(variant, int(S), device)
        ops, names, outs = [], [], {}
        for name, ck in kernels.items():
            config = None
            if name == "new" and override:
                q_bs = None if call.dense else call.block_sparse.block_size_q
                config = dataclasses.replace(choose_config(D, D, q_bs), **override)
            plan = plan_for(ck, call, config)
            outs[name] = plan(call.q, call.k, call.v)[0]
            ops.append((plan, [(call.q, call.k, call.v)]))
            names.append(name)
        upstream = upstream_op(call, mods)
        if upstream is not None:
            fn, native = upstream
            fn(*native)
            ops.append((fn, [native]))
            names.append("fa4_upstream")
        torch.cuda.synchronize()
        timings = time_ops(ops, device, reps=args.reps, warmup=5, rounds=args.rounds,
                           min_seconds=args.min_time)
        row = {"case": f"{variant} S{S}", "bit_equal": torch.equal(outs["old"], outs["new"]),
               "max_abs_diff": (outs["old"].float() - outs["new"].float()).abs().max().item(),
               "seed": seed}
        for name, t in zip(names, timings):
            row[name] = (round(flops / t.median_ms / 1e9, 1), round(flops / t.min_ms / 1e9, 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"kernel_ab_{os.getpid()}.json"), "w") as f:
        json.dump({"old": args.old, "new_config": override, "rows": rows}, f, indent=1)
    cols = ["old", "new", "fa4_upstream"]
    print("%-26s %10s" % ("TFLOP/s median/min", "bit-equal") + "".join("%16s" % c for c in cols))
    for r in rows:
        cells = ["%s/%s" % tuple(r[c]) if c in r else "-" for c in cols]
        print("%-26s %10s" % (r["case"], r["bit_equal"]) + "".join("%16s" % c for c in cells))
    # a config override may change numerics (lazy_rescale, tile shapes): then report only
    return 0 if override or all(r["bit_equal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
