"""mod_codegen.affine and the split forms emit_cute prints from it.

The generated CuTeDSL functions are plain Python over a few names (Int32, _where, ...),
so with Python stand-ins for those names they run on the CPU: the split form
(kv_base, kv_off given) must give exactly what the plain form gives at
kv_idx = kv_base + kv_off, for every mod here, on fresh random indices."""
import math
import random
import types

import pytest
import torch

from flex_fa4.mods import (causal_mask, generate_alibi_bias, generate_doc_mask, generate_prefix_lm_mask,
                           generate_relative_bias, generate_sliding_window)
from mod_codegen import trace_mask_mod, trace_score_mod
from mod_codegen.affine import kv_splits
from mod_codegen.emit_cute import CuteEmitter, runtime_buffers, runtime_scalars
from mod_codegen.ir import Op


def _mods():
    doc = torch.arange(300) // 37
    return {
        "causal": trace_mask_mod(causal_mask),
        "sliding": trace_mask_mod(generate_sliding_window(100)),
        "prefix": trace_mask_mod(generate_prefix_lm_mask(40)),
        "document": trace_mask_mod(generate_doc_mask(doc)),
        "alibi": trace_score_mod(generate_alibi_bias(4)),
        "relative": trace_score_mod(generate_relative_bias(torch.randn(4, 64), max_distance=31)),
        "scaled_diff": trace_mask_mod(lambda b, h, q, kv: (q - 2 * kv + 3 * h >= -5 - b) & (kv * 3 - q != 4)),
        "neg_eq": trace_mask_mod(lambda b, h, q, kv: (-kv + q == 3) | (kv - q > h)),
        "cast_mix": trace_score_mod(lambda s, b, h, q, kv: s + (kv * 2 - q + 7) * 0.5 - (q - kv) * h),
        "nonaffine": trace_mask_mod(lambda b, h, q, kv: (kv * q < 900) & ((q - kv) % 4 == 0)),
        "huge_coef": trace_mask_mod(lambda b, h, q, kv: kv * 123456789 > q),
    }


# which nodes must be split (the kernels' speed rests on these)
EXPECTED_SPLITS = {
    "causal": {Op.GE: 1}, "sliding": {Op.GE: 1, Op.LT: 1}, "prefix": {Op.GE: 1, Op.LT: 1},
    "document": {Op.GE: 1}, "alibi": {Op.CAST: 1}, "scaled_diff": {Op.GE: 1, Op.NE: 1},
    "neg_eq": {Op.EQ: 1, Op.GT: 1},
    "cast_mix": {Op.CAST: 1},  # (q - kv) * h has a run-time coefficient: not split
    "nonaffine": {}, "huge_coef": {},
}


def test_expected_nodes_are_split():
    for name, traced in _mods().items():
        if name not in EXPECTED_SPLITS:
            continue
        counts: dict = {}
        for split in kv_splits(traced.graph).values():
            counts[split.op] = counts.get(split.op, 0) + 1
        assert counts == EXPECTED_SPLITS[name], (name, counts, str(traced.graph))


class _Buf:
    """What the generated code reads of a captured tensor: shape, stride, iterator."""

    def __init__(self, t: torch.Tensor):
        self.shape, self.stride = tuple(t.shape), tuple(t.stride())
        self.flat = t.flatten().tolist()


def _python_function(traced):
    """The emitted function, run with Python stand-ins for the CuTeDSL names."""
    fmath = types.SimpleNamespace(
        exp=lambda x, fastmath=True: math.exp(x), exp2=lambda x, fastmath=True: 2.0 ** x,
        log=lambda x, fastmath=True: math.log(x), tanh=lambda x, fastmath=True: math.tanh(x),
        abs=abs, floor=math.floor)
    namespace = {
        "Int32": int, "Float32": float, "Boolean": bool,
        "_where": lambda c, a, b, T: T(a) if c else T(b),
        "_floordiv": lambda a, b: a // b, "_mod": lambda a, b: a % b, "_not": lambda x: not x,
        "_load": lambda t, offset, T: T(t.flat[offset]),
        "cute": types.SimpleNamespace(math=fmath, arch=types.SimpleNamespace(rcp_approx=lambda x: 1.0 / x)),
    }
    exec(CuteEmitter(traced.graph).function("f"), namespace)
    bufs = tuple(_Buf(t) for t in runtime_buffers(traced))
    return namespace["f"], bufs, tuple(runtime_scalars(traced))


@pytest.mark.parametrize("name", list(_mods()))
def test_split_form_matches_plain_form(name):
    traced = _mods()[name]
    fn, bufs, scalars = _python_function(traced)
    seed = random.randrange(2 ** 31)
    rng = random.Random(seed)
    score_args = (rng.uniform(-3, 3),) if traced.kind == "score_mod" else ()
    for _ in range(400):
        b, h = rng.randrange(2), rng.randrange(4)
        q, kv_base = rng.randrange(0, 300), rng.randrange(-130, 300)
        kv_off = rng.choice([0, 1, 8, 9, 16, 57, 120, 121])
        args = score_args + (b, h, q, kv_base + kv_off, bufs, scalars)
        plain, split = fn(*args), fn(*args, kv_base, kv_off)
        assert plain == split, f"{name}: b={b} h={h} q={q} kv_base={kv_base} kv_off={kv_off}: " \
                               f"{plain} != {split} (seed {seed})"
