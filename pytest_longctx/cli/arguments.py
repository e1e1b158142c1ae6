"""argparse `type=` parsers the `longctx` sub-commands share, so bad input fails at parse time."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def count(low: int) -> Callable[[str], int]:
    """An argparse `type=`: a whole number >= `low` (underscores allowed), so bad input fails at parse time."""

    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a number >= {low}, got {text}")
        return value

    return parse
