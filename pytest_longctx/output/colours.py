"""Colour scales of the report: verdict and variant colours, the sequential and diverging scales, readable ink."""

from __future__ import annotations

from collections.abc import Sequence

# Okabe-Ito blue and vermillion, a neutral grey and Tol's wine: told apart by colour-blind readers, and
# always shown next to the word they stand for.
VERDICT_COLOURS = {"approve": "#0072b2", "reject": "#c04f00", "incomplete": "#6b6b6b", "invalid": "#882255", "inconclusive": "#6a4c93"}
# Okabe-Ito blue and orange for the two variants in the latency charts, each with its own marker shape too.
VARIANT_COLOURS = ("#0072b2", "#e69f00")

# Viridis at five stops: perceptually uniform and readable with any colour-vision deficiency.
_SEQUENTIAL = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")
# Orange (candidate worse) through near-white to blue (candidate better).
_DIVERGING = ("#b35806", "#f1a340", "#f7f7f7", "#67a9cf", "#2166ac")
ERRORED_FILL = "#bdbdbd"
MISSING_FILL = "#ffffff"


# ----------------------------------------------------------------------------- colour scales


def _hex_to_rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _interpolate(stops: Sequence[str], t: float) -> str:
    t = min(1.0, max(0.0, t))
    pos = t * (len(stops) - 1)
    i = min(int(pos), len(stops) - 2)
    frac = pos - i
    a, b = _hex_to_rgb(stops[i]), _hex_to_rgb(stops[i + 1])
    r, g, bl = (round(x + (y - x) * frac) for x, y in zip(a, b, strict=True))
    return f"#{r:02x}{g:02x}{bl:02x}"


def sequential_colour(value: float) -> str:
    """Fill for a recall in [0, 1] on the viridis scale (0 dark purple, 1 yellow)."""
    return _interpolate(_SEQUENTIAL, value)


def diverging_colour(delta: float) -> str:
    """Fill for a recall difference in [-1, 1]: orange below zero, blue above, near-white at zero."""
    return _interpolate(_DIVERGING, (delta + 1.0) / 2.0)


def ink_for(fill: str) -> str:
    """Black or white text, whichever reads better on `fill` (relative luminance)."""

    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in _hex_to_rgb(fill))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "#000000" if luminance > 0.179 else "#ffffff"
