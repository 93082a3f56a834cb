"""Commands besides `run`: check, status, health (see `python -m cxi_async <command> --help`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(command: str, argv: Sequence[str]) -> int:
    print(f"cxi_async: the {command} command is not available yet", file=sys.stderr)
    return 2
