"""`flex-fa4 bench` / `python -m flex_fa4 bench`: parse flags, run the sweep, report.

Defaults follow the machine: on CUDA the issue's sweep (B=4, H=16, D=128, bf16,
S=2048 and 8192, every standard variant, fwd and fwd+bwd, our kernels and every
peer); on CPU a small sweep that finishes in about a minute (B=1, H=2, D=64, fp32,
S=256 and 512, forward, the reference backend and uncompiled torch flex_attention).
Any flag given overrides its default; --quick shrinks the defaults further.
Exit status 1 when one of our backends is WRONG or fails with an error.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from typing import Optional, Sequence

import torch

from . import peers  # noqa: F401 - registers the peer runners
from .backends import RUNNERS, check_runner_names
from .report import merge, table, write_all, write_json
from .runner import MODES, SweepConfig, run_sweep
from .variants import VARIANTS

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32, "fp64": torch.float64, "float64": torch.float64}

DEFAULTS = {
    "cuda": dict(variants=list(VARIANTS), seqlens=[2048, 8192], head_dims=[128], batch=4, heads=16,
                 dtypes=["bf16"], modes=["fwd", "fwdbwd"], reps=30, warmup=5, min_time=0.5,
                 backends=["fa4", "triton", "torch_flex", "torch_flex_flash", "fa4_upstream",
                           "sdpa_cudnn", "sdpa_flash"]),
    "cpu": dict(variants=["noop", "causal", "sliding_window", "document_causal", "alibi_causal", "softcap_causal"],
                seqlens=[256, 512], head_dims=[64], batch=1, heads=2, dtypes=["fp32"], modes=["fwd"],
                reps=10, warmup=2, min_time=0.0, backends=["reference", "torch_flex_eager"]),
}
QUICK = {
    "cuda": dict(variants=["noop", "causal", "sliding_window", "document_causal", "alibi_causal"],
                 seqlens=[2048], modes=["fwd"], reps=10, warmup=2, min_time=0.0),
    "cpu": dict(variants=["noop", "causal", "document_causal"], seqlens=[256], reps=3, warmup=1),
}


def _list(kind=str):
    """Comma- or space-separated values: `--seqlens 2048,8192` or `--seqlens 2048 8192`."""
    def parse(text: str):
        return [kind(x) for x in text.split(",") if x.strip()]
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flex-fa4 bench", description=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Variants: " + ", ".join(VARIANTS) + ", or a user mod as module:function "
                                       "(see flex_fa4/bench/variants.py).\nBackends: " + ", ".join(RUNNERS) + ".")
    lists = (("--variants", str, "variant names or module:function user mods"),
             ("--seqlens", int, "sequence lengths (Sq = Skv)"), ("--head-dims", int, "head dims"),
             ("--dtypes", str, "bf16, fp16, fp32"), ("--modes", str, "fwd, fwdbwd"),
             ("--backends", str, "ours and peers by name (--list)"))
    for flag, kind, text in lists:
        p.add_argument(flag, nargs="+", type=_list(kind), default=None, metavar="X",
                       help=text + ", comma- or space-separated")
    p.add_argument("--batch", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--reps", type=int, help="timed runs per measurement (the median is reported)")
    p.add_argument("--warmup", type=int)
    p.add_argument("--min-time", type=float, metavar="SECONDS",
                   help="raise --reps so each backend's timed runs take at least this long "
                        "(default 0.5 on CUDA, 0 with --quick and on CPU; at most 2000 runs)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="start no run after this many seconds; the rest are listed as not run (for device calls)")
    p.add_argument("--out", default="bench_results", help="output folder (default ./bench_results)")
    p.add_argument("--quick", action="store_true", help="a short sweep: fewer variants, one length, forward only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list", action="store_true", help="list the variants and backends, then exit")
    p.add_argument("--merge", nargs="+", metavar="RESULTS_JSON",
                   help="run nothing: combine the results.json of earlier runs into one table, JSON, CSV and "
                        "plot in --out (for a sweep split over several device calls)")
    return p


def _flatten(values):
    return None if values is None else [x for group in values for x in group]


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kind = "cuda" if device.type == "cuda" else "cpu"
    opts = dict(DEFAULTS[kind], **(QUICK[kind] if args.quick else {}))
    for name in ("variants", "seqlens", "head_dims", "dtypes", "modes", "backends"):
        given = _flatten(getattr(args, name))
        if given is not None:
            opts[name] = given
    for name in ("batch", "heads", "reps", "warmup", "min_time"):
        if getattr(args, name) is not None:
            opts[name] = getattr(args, name)
    bad = [d for d in opts["dtypes"] if d not in DTYPES]
    if bad:
        raise SystemExit(f"unknown dtype(s) {bad}; choose from {', '.join(DTYPES)}")
    modes = ["fwdbwd" if m in ("fwd+bwd", "fwd_bwd") else m for m in opts["modes"]]
    if set(modes) - set(MODES):
        raise SystemExit(f"unknown mode(s) {sorted(set(modes) - set(MODES))}; choose from fwd, fwdbwd")
    check_runner_names(opts["backends"])
    return SweepConfig(variants=opts["variants"], seqlens=opts["seqlens"], head_dims=opts["head_dims"],
                       batch=opts["batch"], heads=opts["heads"], dtypes=[DTYPES[d] for d in opts["dtypes"]],
                       modes=modes, backends=opts["backends"], device=device, reps=opts["reps"],
                       warmup=opts["warmup"], min_time_s=opts["min_time"], time_limit_s=args.time_limit)


def _version(dist: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_revision() -> Optional[str]:
    """The checkout's commit, with "+dirty" when the working tree differs from it."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment(cfg: SweepConfig, argv: Sequence[str]) -> dict:
    """What a recorded run needs to be reproduced and compared."""
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "flex-fa4 bench " + " ".join(argv),
        "device": str(cfg.device),
        "device_name": (torch.cuda.get_device_name(cfg.device) if cfg.device.type == "cuda"
                        else f"CPU ({platform.machine()})"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "config": dict(vars(cfg), device=str(cfg.device), dtypes=[str(d).removeprefix("torch.") for d in cfg.dtypes]),
    }
    from .. import __version__

    meta["flex_fa4"] = __version__
    meta["git"] = _git_revision()
    for dist in ("triton", "nvidia-cutlass-dsl", "flash-attn-4"):
        meta[dist] = _version(dist)
    return meta


def list_everything() -> str:
    lines = ["variants:"] + [f"  {name:18s} {fn.__doc__}" for name, fn in VARIANTS.items()]
    lines += ["  module:function    a user mod (flex_fa4/bench/variants.py says how)", "backends:"]
    lines += [f"  {r.name:18s} {'ours  ' if r.ours else 'peer  '}{r.about}" for r in RUNNERS.values()]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.list:
        print(list_everything())
        return 0
    if args.merge:
        results, meta = merge(args.merge)
        return _report(results, meta, args.out)
    cfg = config_from_args(args)
    meta = environment(cfg, argv)
    print(f"flex-fa4 bench on {meta['device_name']} ({cfg.device}); torch {meta['torch']}; "
          f"{len(cfg.variants)} variants x S {list(cfg.seqlens)} x D {list(cfg.head_dims)} "
          f"x {meta['config']['dtypes']} x {list(cfg.modes)}; B={cfg.batch} H={cfg.heads}; "
          f"backends {list(cfg.backends)}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    partial = os.path.join(args.out, "results.json")
    results = run_sweep(cfg, progress=not args.no_progress, on_case=lambda rs: write_json(partial, rs, meta))
    return _report(results, meta, args.out)


def _report(results, meta: dict, out_dir: str) -> int:
    print(table(results))
    paths = write_all(out_dir, results, meta)
    print("wrote " + ", ".join(paths.values()))
    from .runner import VARIANT_FAILED

    failed = [r for r in results if r.ours and (r.status == "WRONG" or
                                                (r.status == "ERROR" and not r.reason.startswith(VARIANT_FAILED)))]
    return 1 if failed else 0
