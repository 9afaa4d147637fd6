"""`flex-fa4 <command>` / `python -m flex_fa4 <command>`. Commands:

  bench   benchmark flex_fa4's backends against peers (flex-fa4 bench --help)
"""
from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

COMMANDS = {"bench": "flex_fa4.bench.cli"}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] not in COMMANDS:
        print(f"flex-fa4: unknown command {argv[0]!r}\n\n{__doc__.strip()}", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
