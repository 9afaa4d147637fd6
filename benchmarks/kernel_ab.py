"""A/B of the CuTeDSL forward kernel: an earlier commit's `cute_kernels` against the working
tree's, in one process, timed interleaved, with upstream FA4 where it runs the case.

Why one process: fresh processes on one GPU differ by a few % at S=8192 (power cap, clocks),
which is the size of most kernel changes. Interleaved in one process, both kernels see the
same clocks, and the working tree's output is checked to be bit-equal to the old one's
(a change that is not meant to change numerics must not). Needs a CUDA GPU:

    python3 benchmarks/kernel_ab.py --old HEAD~1 [--reps 80] [--rounds 16] [--out DIR]

--old is a git revision (its `git archive REV cute_kernels`) or a directory holding an old
copy of the package, for machines without the repository's .git, such as the device
tool's copy of the working tree: unpack it first with
`mkdir -p .exp/old && git archive REV cute_kernels | tar -x -C .exp/old`, carry .exp and pass
`--old .exp/old/cute_kernels`. Either way it is copied under a temporary directory and
imported as `cute_kernels_old`. The cases are the compile tests' variants
(tests/test_cute_compile.py) at B=4, H=16, D=128, bf16, 128x128 mask blocks.
"""
from __future__ import annotations

import argparse
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
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from flex_fa4.bench.timing import time_ops  # noqa: E402

CASES = [(8192, "none"), (8192, "causal"), (8192, "sliding_window"), (8192, "document"),
         (8192, "alibi"), (2048, "causal"), (2048, "sliding_window"), (2048, "document")]
# upstream FA4's native form of a variant: (causal, window_size). The tests' sliding window
# (test_cute_compile.sliding_window_variant) keeps q - 1024 <= kv <= q: 1024 keys to the left.
NATIVE = {"none": (False, (None, None)), "causal": (True, (None, None)),
          "sliding_window": (True, (1024, 0))}


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True,
                   help="git revision of the old kernel, or a directory holding its package")
    p.add_argument("--reps", type=int, default=80)
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("kernel_ab.py needs a CUDA GPU")
    import cute_kernels
    from test_cute_compile import traced, variants
    from test_cute_fwd_gpu import bench_inputs
    try:
        from flash_attn.cute import flash_attn_func
    except ImportError as e:
        flash_attn_func = None
        print(f"no upstream FA4 ({e}); timing the two kernels only")
    tmp = tempfile.mkdtemp(prefix="kernel_ab_")
    kernels = {"old": import_old(args.old, tmp), "new": cute_kernels}
    rows = []
    for S, v in CASES:
        B, H, D = 4, 16, 128
        score_fn, mask_fn = variants(device="cuda", S=S, H=H)[v]
        score_mod, mask_mod = traced(score_fn, mask_fn)
        seed = torch.seed()
        q, k, vv, sparse, density = bench_inputs(mask_fn, B, H, S, D)
        ops, names, outs = [], [], {}
        for name, ck in kernels.items():
            plan = ck.ForwardPlan(q, k, vv, scale=D ** -0.5, block_sparse=sparse,
                                  score_mod=score_mod, mask_mod=mask_mod)
            outs[name] = plan(q, k, vv)[0]
            ops.append((plan, [(q, k, vv)]))
            names.append(name)
        if flash_attn_func is not None and v in NATIVE:
            causal, window = NATIVE[v]
            qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, vv))
            fa4 = lambda: flash_attn_func(qt, kt, vt, causal=causal, window_size=window)  # noqa: E731
            fa4()
            ops.append((fa4, [()]))
            names.append("fa4_upstream")
        torch.cuda.synchronize()
        timings = time_ops(ops, torch.device("cuda"), reps=args.reps, warmup=5, rounds=args.rounds)
        flops = 4 * B * H * S * S * D * density
        row = {"case": f"{v} S{S}", "bit_equal": torch.equal(outs["old"], outs["new"]), "seed": seed}
        for name, t in zip(names, timings):
            row[name] = (round(flops / t.median_ms / 1e9, 1), round(flops / t.min_ms / 1e9, 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(os.path.join(args.out, f"kernel_ab_{os.getpid()}.json"), "w") as f:
        json.dump({"old": args.old, "rows": rows}, f, indent=1)
    cols = ["old", "new", "fa4_upstream"]
    print("%-22s %10s" % ("TFLOP/s median/min", "bit-equal") + "".join("%16s" % c for c in cols))
    for r in rows:
        cells = ["%s/%s" % tuple(r[c]) if c in r else "-" for c in cols]
        print("%-22s %10s" % (r["case"], r["bit_equal"]) + "".join("%16s" % c for c in cells))
    return 0 if all(r["bit_equal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
