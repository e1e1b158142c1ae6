"""`longctx power`: how many cells a recall check needs, or the smallest drop it can show with the cells it has."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def _fraction(low: float, high: float, *, open_low: bool = False) -> Callable[[str], float]:
    """An argparse `type=`: a number in [low, high] ((low, high] with `open_low`), so bad input fails at parse time."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (low < value <= high if open_low else low <= value <= high):
            raise argparse.ArgumentTypeError(f"expected a number in {'(' if open_low else '['}{low}, {high}], got {text}")
        return value

    return parse


def add_parser(commands: Any) -> None:
    from .arguments import count as _count

    power = commands.add_parser(
        "power", help="the smallest recall drop a gate's cells can show, and the cells a given drop needs",
        description="Exact binomial power of the paired recall check (the interval the gate reads): each of the baseline's "
                    "found cells is lost with the same probability, none gained. See docs/statistics.md.",
    )
    power.add_argument("--cells", type=_count(1), required=True, metavar="N", help="paired middle-band cells the check reads")
    power.add_argument("--baseline-recall", type=_fraction(0.0, 1.0, open_low=True), required=True, metavar="R",
                       help="the baseline's recall over those cells (0 < R <= 1)")
    power.add_argument("--alpha", type=_fraction(0.0, 0.5, open_low=True), default=0.05, metavar="A",
                       help="the check's two-sided error rate, thresholds.middle_recall.alpha (default 0.05)")
    power.add_argument("--drop", type=_fraction(0.0, 1.0, open_low=True), metavar="D",
                       help="a recall drop to plan for: how many cells would show it with 80%% power")


def run(args: argparse.Namespace) -> int:
    from ..gate.statistics import POWER, cells_needed, min_detectable_drop

    confidence, n, recall = 1 - args.alpha, args.cells, args.baseline_recall
    smallest = min_detectable_drop(n, recall, confidence=confidence)
    shown = (f"the smallest drop it shows with {POWER:.0%} power is {smallest:.3f} ({smallest * 100:.1f} points)" if smallest is not None
             else f"no drop up to the baseline's own recall shows with {POWER:.0%} power")
    print(f"with {n} cells at recall {recall:.2f} (alpha {args.alpha:g}) {shown}")
    if args.drop is not None:
        if args.drop > recall:
            print(f"a drop of {args.drop:.3f} is more than the baseline's recall {recall:.2f}: it cannot happen")
            return 2
        needed = cells_needed(args.drop, recall, confidence=confidence)
        if needed is None:
            print(f"to see a {args.drop * 100:.1f}-point drop: more than a million cells")
        else:
            print(f"to see a {args.drop * 100:.1f}-point drop you need about {needed} cells "
                  f"({needed / n:.1f}x the cells, so about {needed / n:.1f}x the seeds you run now)")
    return 0
