"""Whether a CUDA device is usable here, and if not, the reason a `gpu`-marked test is skipped."""

from __future__ import annotations

import functools

GPU_MARKER_HELP = "gpu: needs a CUDA device; skipped with the reason where torch sees none"


@functools.cache
def cuda_unavailable_reason() -> str | None:
    """None when torch sees a CUDA device; else why not, in words fit for a skip reason."""
    try:
        import torch
    except ImportError:
        return "needs a CUDA device: torch is not installed"
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
        return f"needs a CUDA device: torch.cuda.is_available() is False ({build})"
    return None
