"""fallback_triton on a GPU: correctness against torch flex_attention at real sizes, then
forward and forward+backward speed side by side with torch.compile(flex_attention).

    python benchmarks/triton_gpu_check.py [--sizes 2048 8192] [--variants noop causal ...]
                                          [--budget-s 500] [--out DIR]
    python benchmarks/triton_gpu_check.py --sweep [--api causal] ...   # tile candidates

B=4, Hq=Hkv=16, D=128, bf16, BlockMask 128x128 built by torch's create_block_mask
(both libraries read the same block lists). TFLOP/s counts unmasked pairs only:
forward 4*B*H*S*S*D*density, forward+backward 3.5x that. Times are medians of
triton.testing.do_bench. Each row also checks our out/dq/dk/dv against flex's
(relative Frobenius error; both bf16, so ~1e-2 is expected). Rows stop being
started once --budget-s seconds have passed, so a device lease is never overrun;
the table and a JSON file go to --out (default $OUT or .). Per row it also reports the
host time per queued call (fwd and fwd+bwd), which bounds any timing loop that does not
flush L2 between calls (flex_fa4's bench). --sweep times our backward alone and forward
alone under each of BWD_CANDIDATES / FWD_CANDIDATES (forced, autotuning off) next to
flex's; --api adds fwd+bwd through flex_fa4.flex_attention(backend="triton").
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import triton
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fallback_triton  # noqa: E402
from fallback_triton import configs  # noqa: E402
from mod_codegen.kernel_args import BlockSparseTensors  # noqa: E402
from mod_codegen.trace import trace_mask_mod, trace_score_mod  # noqa: E402

B, H, D = 4, 16, 128
DTYPE = torch.bfloat16


def variants(S: int, device) -> dict:
    """name -> (mask_mod or None, score_mod or None); each a plain torch-style function."""
    docs = (torch.arange(S, device=device) // (S // 8)).to(torch.int32)
    slopes = torch.exp2(-8.0 * torch.arange(1, H + 1, device=device, dtype=torch.float32) / H)

    def causal(b, h, q, k):
        return q >= k

    def sliding_window_1024(b, h, q, k):
        return (q >= k) & (q - k < 1024)

    def document_causal_8(b, h, q, k):
        return (docs[q] == docs[k]) & (q >= k)

    def prefix_lm_1024(b, h, q, k):
        return (k < 1024) | (q >= k)

    def alibi(score, b, h, q, k):
        return score + slopes[h] * (k - q)

    def softcap_30(score, b, h, q, k):
        return torch.tanh(score / 30.0) * 30.0

    return {
        "noop": (None, None),
        "causal": (causal, None),
        "sliding_window_1024": (sliding_window_1024, None),
        "document_causal_8": (document_causal_8, None),
        "prefix_lm_1024": (prefix_lm_1024, None),
        "alibi_causal": (causal, alibi),
        "softcap30_causal": (causal, softcap_30),
    }


def to_sparse(bm) -> BlockSparseTensors:
    bq, bkv = bm.BLOCK_SIZE
    return BlockSparseTensors(bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices,
                              bm.q_num_blocks, bm.q_indices, bm.full_q_num_blocks, bm.full_q_indices, bq, bkv)


def density(mask_mod, S: int, device) -> float:
    if mask_mod is None:
        return 1.0
    total = 0
    k = torch.arange(S, device=device)[None, :]
    for start in range(0, S, 1024):
        q = torch.arange(start, min(start + 1024, S), device=device)[:, None]
        total += int(mask_mod(0, 0, q, k).sum())
    return total / (S * S)


def rel(a, b) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def host_us(fn, n: int = 20) -> float:
    """CPU time per queued call (the GPU runs behind): above the GPU time, the host
    is what a timing loop without L2 flushes measures."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    us = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return us


def setup(S, mask_fn, score_fn, device):
    """Inputs, both libraries' block masks and our traced mods for one row."""
    torch.manual_seed(0)
    q, k, v, do = (torch.randn(B, H, S, D, device=device, dtype=DTYPE) for _ in range(4))
    bm = create_block_mask(mask_fn if mask_fn is not None else (lambda b, h, q, k: q >= 0),
                           None, None, S, S, device=device)
    tm = trace_mask_mod(mask_fn) if mask_fn is not None else None
    ts = trace_score_mod(score_fn) if score_fn is not None else None
    return q, k, v, do, bm, to_sparse(bm), tm, ts


def run_row(name, S, mask_fn, score_fn, flex_c, device) -> dict:
    q, k, v, do, bm, bs, tm, ts = setup(S, mask_fn, score_fn, device)
    scale = D ** -0.5
    flops = 4 * B * H * S * S * D * density(mask_fn, S, device)
    row = {"variant": name, "S": S, "density": flops / (4 * B * H * S * S * D)}

    def ours_fwd():
        return fallback_triton.attention_forward(q, k, v, scale=scale, block_sparse=bs, score_mod=ts, mask_mod=tm)

    # flex computes no gradient for captured tensors that do not require grad (our
    # slopes): skip ours too for the side-by-side, and time them separately below
    no_buf_grads = [False] * len(ts.buffers) if ts is not None else None

    def ours_fwd_bwd(wanted=no_buf_grads):
        out, lse, _ = ours_fwd()
        return fallback_triton.attention_backward(q, k, v, out, lse, do, scale=scale, block_sparse=bs,
                                                  score_mod=ts, mask_mod=tm, buffer_requires_grad=wanted)

    flex_bm = None if mask_fn is None else bm
    qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))

    def flex_fwd():
        return flex_c(q, k, v, score_mod=score_fn, block_mask=flex_bm, scale=scale)

    def flex_fwd_bwd():
        out = flex_c(qg, kg, vg, score_mod=score_fn, block_mask=flex_bm, scale=scale)
        out.backward(do)

    before = set(configs._CHOSEN)  # to report the tiles autotuning picks for this row
    t0 = time.time()
    out, lse, _ = ours_fwd()
    dq, dk, dv, _ = fallback_triton.attention_backward(q, k, v, out, lse, do, scale=scale, block_sparse=bs,
                                                       score_mod=ts, mask_mod=tm)
    torch.cuda.synchronize()
    row["ours_first_call_s"] = round(time.time() - t0, 1)
    t0 = time.time()
    ref = flex_c(qg, kg, vg, score_mod=score_fn, block_mask=flex_bm, scale=scale)
    ref.backward(do)
    torch.cuda.synchronize()
    row["flex_first_call_s"] = round(time.time() - t0, 1)
    row["err_out"] = rel(out, ref)
    row["err_dq"], row["err_dk"], row["err_dv"] = rel(dq, qg.grad), rel(dk, kg.grad), rel(dv, vg.grad)
    assert max(row["err_out"], row["err_dq"], row["err_dk"], row["err_dv"]) < 2e-2, row
    del ref
    for key, fn, mult in (("ours_fwd", ours_fwd, 1.0), ("flex_fwd", flex_fwd, 1.0),
                          ("ours_fwd_bwd", ours_fwd_bwd, 3.5), ("flex_fwd_bwd", flex_fwd_bwd, 3.5)):
        ms = bench(fn)
        row[key + "_ms"] = ms
        row[key + "_tflops"] = mult * flops / (ms * 1e-3) / 1e12
    if ts is not None and ts.buffers:
        row["ours_fwd_bwd_with_buffer_grads_ms"] = bench(lambda: ours_fwd_bwd(None))
    # do_bench flushes L2 before each call, so host time beyond that flush shows in
    # short launches; the CPU time per queued call and a CUDA-graph replay (GPU time
    # alone) separate the kernel from the Python around it
    for key, fn in (("ours_fwd_bwd", ours_fwd_bwd), ("flex_fwd_bwd", flex_fwd_bwd)):
        row[key + "_host_us"] = host_us(fn)
    for key, fn in (("ours", ours_fwd), ("flex", flex_fwd)):
        row[key + "_fwd_host_us"] = host_us(fn)
        torch.cuda.synchronize()
        try:
            row[key + "_fwd_graph_ms"] = triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")
        except Exception as e:  # noqa: BLE001 - a measurement we can live without
            row[key + "_fwd_graph_ms"] = f"{type(e).__name__}: {e}"[:200]
    row["tiles"] = sorted(f"{getattr(k[0], '__name__', k[0])}:{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']}"
                          f"w{c.num_warps}s{c.num_stages}" for k, c in configs._CHOSEN.items() if k not in before)
    return row


# --sweep: backward launch shapes (configs.BwdTile args: m1 n1 m2 n2 warps stages), each
# forced (autotuning off) and checked against flex's gradients.
BWD_CANDIDATES = (
    ("bwd 32x128/128x64 w8s2", (32, 128, 128, 64, 8, 2)),
    ("bwd 64x128/128x64 w8s2", (64, 128, 128, 64, 8, 2)),
    ("bwd 64x128/128x64 w8s3", (64, 128, 128, 64, 8, 3)),
)
FWD_CANDIDATES = (  # configs.Tile args: m n warps stages
    ("fwd 128x128 w8s3", (128, 128, 8, 3)),
    ("fwd 128x64 w8s3", (128, 64, 8, 3)),
)


def sweep_row(name, S, mask_fn, score_fn, flex_c, device, deadline: float) -> list[dict]:
    """Our backward alone (and forward alone) under each candidate, next to flex's times."""
    q, k, v, do, bm, bs, tm, ts = setup(S, mask_fn, score_fn, device)
    scale = D ** -0.5
    flex_bm = None if mask_fn is None else bm
    qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref = flex_c(qg, kg, vg, score_mod=score_fn, block_mask=flex_bm, scale=scale)
    ref.backward(do)
    ref_grads = (qg.grad.clone(), kg.grad.clone(), vg.grad.clone())

    def flex_fwd_bwd():
        flex_c(qg, kg, vg, score_mod=score_fn, block_mask=flex_bm, scale=scale).backward(do)

    flex_fwd_ms = bench(lambda: flex_c(q, k, v, score_mod=score_fn, block_mask=flex_bm, scale=scale))
    flex_bwd_ms = bench(flex_fwd_bwd) - flex_fwd_ms
    out, lse, _ = fallback_triton.attention_forward(q, k, v, scale=scale, block_sparse=bs, score_mod=ts,
                                                    mask_mod=tm)
    wanted = [False] * len(ts.buffers) if ts is not None else None
    saved = (configs.backward_tiles, configs.forward_tiles, os.environ.get("FLEX_FA4_TRITON_AUTOTUNE"))
    os.environ["FLEX_FA4_TRITON_AUTOTUNE"] = "0"
    rows = []
    try:
        for label, t in BWD_CANDIDATES:
            if time.time() > deadline:
                break
            configs.backward_tiles = lambda d, size, t=t: (configs.BwdTile(*t),)

            def ours_bwd():
                return fallback_triton.attention_backward(q, k, v, out, lse, do, scale=scale, block_sparse=bs,
                                                          score_mod=ts, mask_mod=tm, buffer_requires_grad=wanted)
            try:
                dq, dk, dv, _ = ours_bwd()
                err = max(rel(a, b) for a, b in zip((dq, dk, dv), ref_grads))
                ms = bench(ours_bwd)
                rows.append(dict(variant=name, S=S, config=label, ms=ms, flex_ms=flex_bwd_ms, err=err,
                                 host_us=host_us(ours_bwd, 10)))
            except Exception as e:  # noqa: BLE001 - one failing candidate must not lose the rest
                rows.append(dict(variant=name, S=S, config=label, error=f"{type(e).__name__}: {e}"[:300]))
            print(json.dumps(rows[-1]), flush=True)
        for label, t in FWD_CANDIDATES:
            if time.time() > deadline:
                break
            configs.forward_tiles = lambda d, size, t=t: (configs.Tile(*t),)

            def ours_fwd():
                return fallback_triton.attention_forward(q, k, v, scale=scale, block_sparse=bs, score_mod=ts,
                                                         mask_mod=tm)
            try:
                err = rel(ours_fwd()[0], ref)
                rows.append(dict(variant=name, S=S, config=label, ms=bench(ours_fwd), flex_ms=flex_fwd_ms, err=err))
            except Exception as e:  # noqa: BLE001
                rows.append(dict(variant=name, S=S, config=label, error=f"{type(e).__name__}: {e}"[:300]))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        configs.backward_tiles, configs.forward_tiles, autotune = saved
        if autotune is None:
            os.environ.pop("FLEX_FA4_TRITON_AUTOTUNE", None)
        else:
            os.environ["FLEX_FA4_TRITON_AUTOTUNE"] = autotune
    return rows


def sweep_table(rows: list[dict]) -> str:
    """One line per (variant, S): each candidate's time as flex_ms / ours_ms (>1: ours faster)."""
    labels = [c[0] for c in BWD_CANDIDATES] + [c[0] for c in FWD_CANDIDATES]
    lines = ["| variant | S | flex bwd ms | flex fwd ms | " + " | ".join(labels) + " |",
             "|---" * (4 + len(labels)) + "|"]
    keys = sorted({(r["variant"], r["S"]) for r in rows}, key=lambda x: (x[1], x[0]))
    for key in keys:
        by = {r["config"]: r for r in rows if (r["variant"], r["S"]) == key}
        fb = next((r["flex_ms"] for r in by.values() if "flex_ms" in r and not r["config"].startswith("fwd")), 0)
        ff = next((r["flex_ms"] for r in by.values() if "flex_ms" in r and r["config"].startswith("fwd")), 0)
        cells = []
        for lab in labels:
            r = by.get(lab)
            if r is None:
                cells.append("-")
            elif "error" in r:
                cells.append("ERR")
            else:
                bad = "" if r["err"] < 2e-2 else " WRONG"
                cells.append(f"{r['ms']:.3f} ({r['flex_ms'] / r['ms']:.2f}){bad}")
        lines.append(f"| {key[0]} | {key[1]} | {fb:.3f} | {ff:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def api_row(name, S, mask_fn, score_fn, device) -> dict:
    """Forward+backward through flex_fa4.flex_attention(backend="triton") (autograd, validation,
    block-mask handling): its time next to its host time per call."""
    import flex_fa4

    q, k, v, do = (torch.randn(B, H, S, D, device=device, dtype=DTYPE, requires_grad=True) for _ in range(4))
    bm = flex_fa4.create_block_mask(mask_fn, B, H, S, S, device=device) if mask_fn is not None else None

    def fwd_bwd():
        out = flex_fa4.flex_attention(q, k, v, score_mod=score_fn, block_mask=bm, backend="triton")
        return torch.autograd.grad(out, (q, k, v), do)

    fwd_bwd()
    return dict(variant=name, S=S, api_fwd_bwd_ms=bench(fwd_bwd), api_fwd_bwd_host_us=host_us(fwd_bwd))


def run_decode(Sq: int, Skv: int, flex_c, device) -> dict:
    """Decoding: Sq queries (1..64) against a long KV, GQA 32/8 heads, no mask; ours
    takes the split-KV path. Reports time and the K/V read bandwidth it implies."""
    Bd, Hq, Hkv = 8, 32, 8
    q = torch.randn(Bd, Hq, Sq, D, device=device, dtype=DTYPE)
    k, v = (torch.randn(Bd, Hkv, Skv, D, device=device, dtype=DTYPE) for _ in range(2))
    bm = create_block_mask(lambda b, h, q_, k_: q_ >= 0, None, None, Sq, Skv, device=device)
    bs = to_sparse(bm)
    scale = D ** -0.5
    out, _, _ = fallback_triton.attention_forward(q, k, v, scale=scale, block_sparse=bs, score_mod=None, mask_mod=None)
    ref = flex_c(q, k, v, scale=scale, enable_gqa=True)
    row = {"variant": f"decode_gqa32/8_q{Sq}", "S": Skv, "err_out": rel(out, ref)}
    assert row["err_out"] < 2e-2, row
    kv_bytes = 2 * Bd * Hkv * Skv * D * 2
    for key, fn in (("ours", lambda: fallback_triton.attention_forward(q, k, v, scale=scale, block_sparse=bs,
                                                                       score_mod=None, mask_mod=None)),
                    ("flex", lambda: flex_c(q, k, v, scale=scale, enable_gqa=True))):
        ms = bench(fn)
        row[key + "_ms"], row[key + "_kv_GBps"] = ms, kv_bytes / (ms * 1e-3) / 1e9
    return row


def graph_ratio(r: dict) -> str:
    """flex / ours forward time under CUDA-graph replay (>1: ours faster)."""
    a, b = r.get("ours_fwd_graph_ms"), r.get("flex_fwd_graph_ms")
    return f"{b / a:.2f}" if isinstance(a, float) and isinstance(b, float) else "-"



def selected_rows(args, device, start: float):
    """(variant, S, mask_fn, score_fn) of the rows asked for, in order; rows that would start
    after --budget-s are skipped with a message, so a device lease is never overrun."""
    for S in args.sizes:
        for name, (mask_fn, score_fn) in variants(S, device).items():
            if args.variants is not None and name not in args.variants:
                continue
            if time.time() - start > args.budget_s:
                print(f"budget reached: skipping {name} S={S}", flush=True)
                continue
            yield name, S, mask_fn, score_fn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--variants", nargs="*", default=None, help="names to run (none: only --decode)")
    ap.add_argument("--budget-s", type=float, default=500.0)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--decode", action="store_true", help="also time split-KV decoding")
    ap.add_argument("--sweep", action="store_true",
                    help="instead of the side-by-side rows: time BWD_CANDIDATES / FWD_CANDIDATES per variant")
    ap.add_argument("--api", nargs="*", default=None,
                    help="with --sweep: also time fwd+bwd through flex_fa4.flex_attention for these variants")
    args = ap.parse_args()
    start = time.time()
    device = torch.device("cuda")
    torch._dynamo.config.cache_size_limit = 128
    flex_c = torch.compile(flex_attention, dynamic=False)
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}", flush=True)
    rows = []
    if args.sweep:
        for name, S, mask_fn, score_fn in selected_rows(args, device, start):
            rows += sweep_row(name, S, mask_fn, score_fn, flex_c, device, start + args.budget_s)
            with open(os.path.join(args.out, "triton_sweep.json"), "w") as f:
                json.dump(rows, f, indent=1)
        table = sweep_table(rows)
        for name in args.api or ():  # our defaults, as the sweep left the tile caches
            for S in args.sizes:
                try:
                    r = api_row(name, S, *variants(S, device)[name], device)
                except Exception as e:  # noqa: BLE001
                    r = {"variant": name, "S": S, "error": f"{type(e).__name__}: {e}"[:500]}
                table += "\n" + json.dumps(r)
        with open(os.path.join(args.out, "triton_sweep.md"), "w") as f:
            f.write(table + "\n")
        print(f"\nms (flex / ours), B={B} H={H} D={D} bf16; total {time.time() - start:.0f} s\n{table}")
        return
    for name, S, mask_fn, score_fn in selected_rows(args, device, start):
        try:
            row = run_row(name, S, mask_fn, score_fn, flex_c, device)
        except Exception as e:  # keep going: one broken row must not lose the others
            row = {"variant": name, "S": S, "error": f"{type(e).__name__}: {e}"[:500]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(os.path.join(args.out, "triton_gpu_check.json"), "w") as f:
            json.dump(rows, f, indent=1)
    if args.decode:
        for Sq in (1, 16):
            for Skv in (8192, 32768):
                try:
                    row = run_decode(Sq, Skv, flex_c, device)
                except Exception as e:  # noqa: BLE001
                    row = {"variant": f"decode_q{Sq}", "S": Skv, "error": f"{type(e).__name__}: {e}"[:500]}
                print(json.dumps(row), flush=True)
                rows.append(row)
    with open(os.path.join(args.out, "triton_gpu_check.json"), "w") as f:
        json.dump(rows, f, indent=1)
    lines = ["| variant | S | density | ours fwd | flex fwd | ratio | ours f+b | flex f+b | ratio | max err"
             " | fwd graph ratio | host us ours/flex |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "ours_ms" in r:  # a decoding row
            lines.append(f"| {r['variant']} | {r['S']} | - | {r['ours_ms'] * 1e3:.0f} us ({r['ours_kv_GBps']:.0f} GB/s)"
                         f" | {r['flex_ms'] * 1e3:.0f} us ({r['flex_kv_GBps']:.0f} GB/s)"
                         f" | {r['flex_ms'] / r['ours_ms']:.2f}"
                         f" | - | - | - | {r['err_out']:.1e} | - | - |")
            continue
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['S']} | ERROR {r['error'][:80]} |")
            continue
        err = max(r["err_out"], r["err_dq"], r["err_dk"], r["err_dv"])
        lines.append(
            f"| {r['variant']} | {r['S']} | {r['density']:.3f} | {r['ours_fwd_tflops']:.0f}"
            f" | {r['flex_fwd_tflops']:.0f}"
            f" | {r['ours_fwd_tflops'] / r['flex_fwd_tflops']:.2f} | {r['ours_fwd_bwd_tflops']:.0f}"
            f" | {r['flex_fwd_bwd_tflops']:.0f} | {r['ours_fwd_bwd_tflops'] / r['flex_fwd_bwd_tflops']:.2f}"
            f" | {err:.1e} | {graph_ratio(r)} | {r['ours_fwd_host_us']:.0f}/{r['flex_fwd_host_us']:.0f} |")
    table = "\n".join(lines)
    with open(os.path.join(args.out, "triton_gpu_check.md"), "w") as f:
        f.write(table + "\n")
    print(f"\nTFLOP/s, B={B} H={H} D={D} bf16; total {time.time() - start:.0f} s\n{table}")


if __name__ == "__main__":
    main()
