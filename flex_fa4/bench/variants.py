"""Named attention variants for the benchmark, plus user mods loaded as `module:function`.

A variant is a factory `(B, H, S, device) -> Mods`: the benchmark builds it once per
shape so captured tensors (document ids, ALiBi slopes) live on the right device and
match the batch. `Mods.native` says how kernels that only know causal / sliding-window
flags (upstream FA4, SDPA) can run the same variant; None means they cannot.

User mods (`--variants mymod:fn` or `path/to/file.py:fn`), convention:
  * `fn` with 5 positional parameters is a score_mod `(score, b, h, q_idx, kv_idx)`;
  * `fn` with 4 positional parameters is a mask_mod `(b, h, q_idx, kv_idx)`, unless its
    parameters are all named among `B, H, S, device`;
  * otherwise `fn` is a factory, called with the keyword arguments it names among
    `B, H, S, device`; it returns a score_mod, a mask_mod (told apart by arity as above),
    a `(score_mod, mask_mod)` pair (either may be None) or a dict with those keys.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .. import mods

FACTORY_ARGS = ("B", "H", "S", "device")


@dataclass(frozen=True)
class Native:
    """The variant as plain flags: causal, and a left window (keys kept: q - window < kv <= q)."""
    causal: bool = False
    window: Optional[int] = None


@dataclass(frozen=True)
class Mods:
    score_mod: Optional[Callable] = None
    mask_mod: Optional[Callable] = None
    native: Optional[Native] = None


VariantFactory = Callable[[int, int, int, torch.device], Mods]


def sliding_window_size(S: int) -> int:
    """1024 as in the issue's sweep; S/2 for short sequences, where 1024 would equal causal."""
    return min(1024, S // 2)


def prefix_len(S: int) -> int:
    """S/8 (1024 at S=8192)."""
    return max(1, S // 8)


def random_doc_ids(B: int, S: int, n_docs: int = 8, device=None, seed: int = 0) -> torch.Tensor:
    """[B, S] document ids, `n_docs` documents of random lengths per sequence (seeded)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(B):
        cuts = torch.randperm(S - 1, generator=g)[: n_docs - 1] + 1
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), cuts.sort().values])
        rows.append(mods.doc_ids_from_offsets(offsets, total_len=S))
    return torch.stack(rows).to(device)


def _noop(B, H, S, device):
    """No mod: plain attention."""
    return Mods(native=Native())


def _causal(B, H, S, device):
    """causal_mask."""
    return Mods(mask_mod=mods.causal_mask, native=Native(causal=True))


def _sliding_window(B, H, S, device):
    """Causal window of min(1024, S/2) keys."""
    w = sliding_window_size(S)
    return Mods(mask_mod=mods.generate_sliding_window(w), native=Native(causal=True, window=w))


def _document_causal(B, H, S, device):
    """8 documents of random lengths per sequence, causal inside each."""
    return Mods(mask_mod=mods.generate_doc_mask(random_doc_ids(B, S, device=device)))


def _prefix_lm(B, H, S, device):
    """Bidirectional over the first S/8 tokens, causal after."""
    return Mods(mask_mod=mods.generate_prefix_lm_mask(prefix_len(S)))


def _alibi_causal(B, H, S, device):
    """ALiBi bias (the paper's slopes for H heads) + causal."""
    return Mods(score_mod=mods.generate_alibi_bias(slopes=mods.alibi_slopes(H, device=device)),
                mask_mod=mods.causal_mask)


def _softcap_causal(B, H, S, device):
    """tanh soft-capping at 30 + causal."""
    return Mods(score_mod=mods.generate_tanh_softcap(30.0), mask_mod=mods.causal_mask)


VARIANTS: dict[str, VariantFactory] = {
    "noop": _noop,
    "causal": _causal,
    "sliding_window": _sliding_window,
    "document_causal": _document_causal,
    "prefix_lm": _prefix_lm,
    "alibi_causal": _alibi_causal,
    "softcap_causal": _softcap_causal,
}


def _positional_params(fn) -> list[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _mod_kind(fn) -> Optional[str]:
    """'score', 'mask' or None (a factory), by the convention in the module docstring."""
    names = _positional_params(fn)
    if len(names) == 5:
        return "score"
    if len(names) == 4 and not set(names) <= set(FACTORY_ARGS):
        return "mask"
    return None


def _as_mods(obj, where: str) -> Mods:
    if isinstance(obj, dict):
        return Mods(score_mod=obj.get("score_mod"), mask_mod=obj.get("mask_mod"))
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return Mods(score_mod=obj[0], mask_mod=obj[1])
    if callable(obj):
        kind = _mod_kind(obj)
        if kind == "score":
            return Mods(score_mod=obj)
        if kind == "mask":
            return Mods(mask_mod=obj)
    raise TypeError(f"{where} returned {type(obj).__name__}; expected a score_mod (5 args), a mask_mod "
                    f"(4 args), a (score_mod, mask_mod) pair or a dict with those keys")


def _import(module: str):
    if module.endswith(".py") or os.sep in module:
        spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(module))[0], module)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {module}")
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
        return m
    return importlib.import_module(module)


def load_user_variant(spec: str) -> VariantFactory:
    """`module:function` or `file.py:function` -> a variant factory (see the module docstring)."""
    module, sep, name = spec.rpartition(":")
    if not sep or not module or not name:
        raise ValueError(f"user variant '{spec}' must be written module:function")
    fn = getattr(_import(module), name, None)
    if not callable(fn):
        raise ValueError(f"'{name}' in {module} is not a function")
    if _mod_kind(fn) is not None:
        fixed = _as_mods(fn, spec)
        return lambda B, H, S, device: fixed
    wanted = [p for p in inspect.signature(fn).parameters if p in FACTORY_ARGS]

    def factory(B, H, S, device):
        given = dict(B=B, H=H, S=S, device=device)
        return _as_mods(fn(**{k: given[k] for k in wanted}), spec)

    return factory


def resolve(name: str) -> VariantFactory:
    """A standard variant by name, else a user variant `module:function`."""
    if name in VARIANTS:
        return VARIANTS[name]
    if ":" in name:
        return load_user_variant(name)
    raise ValueError(f"unknown variant '{name}'; standard ones: {', '.join(VARIANTS)}, "
                     f"or a user mod as module:function")
