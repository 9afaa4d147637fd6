"""SASS of the sm90 forward kernel for one benchmark variant, compiled on the CPU.

Kernel work here is mostly counting instructions on the paths that run per KV step
(cute_kernels/NOTES.md): this compiles a variant for sm_90a without a GPU, keeps the
cubin, disassembles it with the nvdisasm that ships with Triton, and prints every loop
that issues wgmmas (HGMMA) with its instruction histogram; --segments adds the branch
structure of the KV-step loop (the smallest loop with wgmmas and a score tile's worth of
exponentials, MUFU: basic blocks and where each branch goes), which is how the executed path of a
full or a partial KV tile is read off.

    python3 tools/kernel_sass.py causal [--head-dim 128] [--config '{"lazy_rescale": false}']
        [--segments] [--out DIR]

Variants: those of `flex-fa4 bench` (noop, causal, sliding_window, document_causal, ...).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def compile_cubin(variant: str, head_dim: int, override: dict, out: str) -> str:
    """Compile the variant's kernel into `out`; returns the cubin's path."""
    os.environ.update(CUTE_DSL_ARCH="sm_90a", CUTE_DSL_KEEP="cubin", CUTE_DSL_DUMP_DIR=out,
                      FLEX_FA4_DISK_CACHE="0")
    import torch

    import cute_kernels
    from cute_kernels.config import choose_config
    from flex_fa4.bench.variants import resolve
    from mod_codegen import trace_mask_mod, trace_score_mod

    mods = resolve(variant)(1, 16, 2048, torch.device("cpu"))
    score = trace_score_mod(mods.score_mod) if mods.score_mod else None
    mask = trace_mask_mod(mods.mask_mod) if mods.mask_mod else None
    sparse = mask is not None
    cfg = dataclasses.replace(choose_config(head_dim, head_dim, 128 if sparse else None), **override)
    cute_kernels.compile_only(head_dim=head_dim, score_mod=score, mask_mod=mask, block_sparse=sparse,
                              config=cfg, options="--keep-ptx")  # options: bypass the cache
    return max(glob.glob(os.path.join(out, "**", "*.cubin"), recursive=True), key=os.path.getmtime)


def nvdisasm_path() -> Optional[str]:
    """The nvdisasm that ships with Triton's NVIDIA backend, or None without one."""
    try:
        import triton
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    return path if os.path.exists(path) else None


def disassemble(cubin: str) -> str:
    nvdisasm = nvdisasm_path()
    if nvdisasm is None:
        raise SystemExit("kernel_sass.py needs Triton's nvdisasm (pip install triton)")
    return subprocess.run([nvdisasm, "-c", "-g", cubin], capture_output=True, text=True, check=True).stdout


def parse(sass: str):
    """(instructions [(address, text)], labels {name: index of the next instruction})."""
    ins, labels, pending = [], {}, []
    for line in sass.splitlines():
        m = re.match(r"(\.L_x_\d+):", line.strip())
        if m:
            pending.append(m.group(1))
            continue
        m = re.match(r"\s+/\*([0-9a-f]+)\*/\s+(.*?);", line)
        if m:
            for name in pending:
                labels[name] = len(ins)
            pending = []
            ins.append((int(m.group(1), 16), m.group(2).strip()))
    return ins, labels


def opcode(text: str) -> str:
    parts = text.split()
    return (parts[1] if parts[0].startswith("@") else parts[0]).split(".")[0]


def histogram(body) -> str:
    return " ".join(f"{k}:{v}" for k, v in collections.Counter(opcode(t) for _, t in body).most_common(14))


def wgmma_loops(ins, labels):
    """[(first index, last index)] of every backward branch whose body issues HGMMA."""
    loops = []
    for i, (_, text) in enumerate(ins):
        m = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", text)
        if m and m.group(1) in labels and labels[m.group(1)] <= i:
            head = labels[m.group(1)]
            if any(opcode(t) == "HGMMA" for _, t in ins[head:i + 1]):
                loops.append((head, i))
    return loops


def exponentials(body) -> int:
    return sum(opcode(text) == "MUFU" for _, text in body)


def segments(ins, labels, first: int, last: int) -> list[str]:
    """The loop's basic blocks: size and histogram, and each branch's target address."""
    at_label = {i: name for name, i in labels.items()}
    out, start = [], first
    for i in range(first, last + 1):
        ends = i == last or "BRA" in ins[i][1] or (i + 1) in at_label
        if ends:
            out.append(f"  {ins[start][0]:#06x}: {i - start + 1:4d}  {histogram(ins[start:i + 1])}")
            m = re.search(r"(\.L_x_\d+)", ins[i][1]) if "BRA" in ins[i][1] else None
            if m and m.group(1) in labels:
                out.append(f"  {ins[i][0]:#06x}  {ins[i][1]}  -> {ins[labels[m.group(1)]][0]:#06x}")
            start = i + 1
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variant")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--config", default="{}", help="FwdConfig fields to override, as JSON")
    ap.add_argument("--segments", action="store_true", help="basic blocks of the innermost loop")
    ap.add_argument("--out", default=None, help="where to keep the cubin and k.sass")
    args = ap.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="kernel_sass_")
    os.makedirs(out, exist_ok=True)
    sass = disassemble(compile_cubin(args.variant, args.head_dim, json.loads(args.config), out))
    with open(os.path.join(out, "k.sass"), "w") as f:
        f.write(sass)
    ins, labels = parse(sass)
    loops = sorted(wgmma_loops(ins, labels), key=lambda loop: loop[1] - loop[0])
    print(f"{os.path.join(out, 'k.sass')}: {len(ins)} instructions; loops with wgmmas, smallest first:")
    for first, last in loops:
        print(f"{ins[first][0]:#06x}..{ins[last][0]:#06x} {last - first + 1:5d}  {histogram(ins[first:last + 1])}")
    steps = [loop for loop in loops if exponentials(ins[loop[0]:loop[1] + 1]) >= 16]
    if args.segments and steps:
        print("basic blocks of the KV-step loop:")
        print("\n".join(segments(ins, labels, *steps[0])))


if __name__ == "__main__":
    main()
