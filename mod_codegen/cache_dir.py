"""Where every package keeps generated and compiled code: $FLEX_FA4_CACHE_DIR, or
~/.cache/flex_fa4 when it is unset or empty."""
from __future__ import annotations

import os


def cache_dir() -> str:
    return os.environ.get("FLEX_FA4_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "flex_fa4")
