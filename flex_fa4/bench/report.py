"""What a sweep leaves behind: the printed table, results.json, results.csv and a PNG
of TFLOP/s per variant and backend (grouped bars, one panel per mode x S x D x dtype)."""
from __future__ import annotations

import csv
import json
import os
from collections import Counter
from typing import Optional, Sequence

from .flops import CONVENTION
from .runner import Result

_KEY = ("variant", "S", "D", "dtype", "mode")
_COLUMNS = ("variant", "S", "D", "dtype", "mode", "backend", "mask ms", "1st call s", "ms", "TFLOP/s", "rel err")


def speedup_bases(results: Sequence[Result]) -> list[str]:
    """Our backends that speed-ups are quoted against: the kernels, or the reference
    when it is the only one of ours in the run."""
    ours = list(dict.fromkeys(r.backend for r in results if r.ours and r.status == "ok"))
    kernels = [b for b in ours if b != "reference"]
    return kernels or ours


def _key(r: Result) -> tuple:
    return tuple(getattr(r, k) for k in _KEY)


def speedups(results: Sequence[Result]) -> dict[tuple, dict[str, float]]:
    """{(case key, backend): {ours: backend ms / ours ms}} over cases where both ran."""
    timed = {(_key(r), r.backend): r.ms for r in results if r.status == "ok"}
    out: dict[tuple, dict[str, float]] = {}
    for (key, backend), ms in timed.items():
        for base in speedup_bases(results):
            base_ms = timed.get((key, base))
            if base != backend and base_ms:
                out.setdefault((key, backend), {})[base] = ms / base_ms
    return out


def _fmt(x: Optional[float], spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _fmt_rate(x: Optional[float]) -> str:
    """TFLOP/s: one decimal on GPUs, three significant digits for CPU-sized numbers."""
    return _fmt(x, ".1f" if x is not None and x >= 10 else ".3g")


def table(results: Sequence[Result]) -> str:
    """The sweep as a fixed-width table; skipped runs are summarized under it."""
    bases = speedup_bases(results)
    ups = speedups(results)
    header = list(_COLUMNS) + [f"x{b}" for b in bases] + ["note"]
    rows = []
    for r in results:
        if r.status == "SKIP":
            continue
        up = ups.get((_key(r), r.backend), {})
        note = "" if r.status == "ok" else f"{r.status}: {r.reason}"
        rows.append([r.variant, str(r.S), str(r.D), r.dtype, r.mode, r.backend + ("*" if r.ours else ""),
                     _fmt(r.mask_ms, ".2f"), _fmt(r.first_call_s, ".2f"), _fmt(r.ms, ".3f"),
                     _fmt_rate(r.tflops), _fmt(r.rel_err, ".1e")]
                    + [_fmt(up.get(b), ".3g") for b in bases] + [note])
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(header)]
    text_columns = {0, 3, 4, 5, len(header) - 1}  # left-aligned; numbers are right-aligned

    def line(cells):
        return "  ".join(c.ljust(w) if i in text_columns else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), line(["-" * w for w in widths])] + [line(row) for row in rows]
    out.append("")
    out.append("* ours. x<b>: this row's ms / <b>'s ms in the same case, i.e. the speed-up of <b> over this "
               "row's backend (> 1: <b> is faster). WRONG: disagrees with the reference; never timed.")
    out.append(CONVENTION)
    skipped = Counter((r.backend, r.reason) for r in results if r.status == "SKIP")
    if skipped:
        out.append("Skipped:")
        out += [f"  {b}: {why} ({n} case{'s' if n > 1 else ''})" for (b, why), n in skipped.items()]
    return "\n".join(out)


def write_json(path: str, results: Sequence[Result], meta: dict) -> None:
    with open(path, "w") as f:
        json.dump({"meta": meta, "flop_convention": CONVENTION, "results": [r.to_dict() for r in results]},
                  f, indent=1)


def read_json(path: str) -> tuple[list[Result], dict]:
    with open(path) as f:
        data = json.load(f)
    return [Result(**r) for r in data["results"]], data.get("meta", {})


def merge(paths: Sequence[str]) -> tuple[list[Result], dict]:
    """Results of several runs (a sweep split over several device calls) as one; a
    case and backend measured twice keeps the later file's row."""
    rows: dict[tuple, Result] = {}
    metas = []
    for path in paths:
        results, meta = read_json(path)
        metas.append(meta)
        rows.update({(_key(r), r.B, r.H, r.backend): r for r in results})
    meta = dict(metas[0]) if metas else {}
    meta["merged_from"] = [{"file": p, "date": m.get("date"), "command": m.get("command")}
                           for p, m in zip(paths, metas)]
    return list(rows.values()), meta


def write_csv(path: str, results: Sequence[Result]) -> None:
    rows = [r.to_dict() for r in results]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(Result.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(rows)


def write_plot(path: str, results: Sequence[Result], title: str = "") -> bool:
    """Grouped bars of TFLOP/s; False (and no file) when nothing was timed."""
    timed = [r for r in results if r.status == "ok" and r.tflops is not None]
    if not timed:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r.mode, r.S, r.D, r.dtype) for r in timed))
    variants = list(dict.fromkeys(r.variant for r in timed))
    backends = list(dict.fromkeys(r.backend for r in timed))
    value = {(r.mode, r.S, r.D, r.dtype, r.variant, r.backend): r.tflops for r in timed}
    width = 0.8 / len(backends)
    size = (max(6.0, 0.6 * len(variants) * len(backends)), 3.2 * len(panels))
    fig, axes = plt.subplots(len(panels), 1, figsize=size, squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        for j, backend in enumerate(backends):
            xs = [i + (j - (len(backends) - 1) / 2) * width for i in range(len(variants))]
            ys = [value.get((*panel, v, backend), 0.0) for v in variants]
            ax.bar(xs, ys, width, label=backend)
        ax.set_xticks(range(len(variants)), variants, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("TFLOP/s")
        mode, S, D, dtype = panel
        ax.set_title(f"{mode}  S={S}  D={D}  {dtype}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8, ncol=min(4, len(backends)))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_all(out_dir: str, results: Sequence[Result], meta: dict) -> dict[str, str]:
    """results.json, results.csv, tflops.png (when anything was timed) in `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f) for k, f in
             (("json", "results.json"), ("csv", "results.csv"), ("png", "tflops.png"))}
    write_json(paths["json"], results, meta)
    write_csv(paths["csv"], results)
    if not write_plot(paths["png"], results, title=meta.get("device_name", "")):
        paths.pop("png")
    return paths
