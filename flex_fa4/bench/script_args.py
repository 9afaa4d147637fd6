"""Case options and the case loop that the scripts in benchmarks/ (host_time.py,
sustained.py) share with each other: variants, sequence lengths, backends and shape,
resolved the way `flex-fa4 bench` resolves them. Importing this registers the peers."""
from __future__ import annotations

import argparse
from typing import Iterator

import torch

from . import peers  # noqa: F401 - registers the peer runners
from .backends import Case
from .variants import Mods, resolve


def add_case_options(parser: argparse.ArgumentParser, *, variants: str, seqlens: str,
                     backends: str) -> None:
    """--variants, --seqlens, --backends (comma lists, with these defaults) and
    --batch / --heads / --head-dim (4, 16, 128)."""
    parser.add_argument("--variants", default=variants)
    parser.add_argument("--seqlens", default=seqlens)
    parser.add_argument("--backends", default=backends)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)


def cases(args: argparse.Namespace, device: torch.device,
          dtype: torch.dtype = torch.bfloat16) -> Iterator[tuple[Case, Mods]]:
    """(forward Case, its Mods) per variant and sequence length of add_case_options'."""
    for variant in args.variants.split(","):
        for S in map(int, args.seqlens.split(",")):
            case = Case(variant, S, args.head_dim, args.batch, args.heads, dtype, "fwd", device)
            yield case, resolve(variant)(case.B, case.H, S, device)
