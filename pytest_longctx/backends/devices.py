"""Devices: whether CUDA is usable here (else why a `gpu` test skips), and what an xdist worker gets (a GPU, CPU threads)."""

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


def worker_device(worker_id: str, visible: str | None) -> str:
    """The CUDA device an xdist worker (`gw0`, `gw1`, ...) is pinned to, as a CUDA_VISIBLE_DEVICES value.

    Worker N takes the N-th of the devices already visible (round robin when workers outnumber them), or
    device N when nothing restricts them, so `pytest -n 4` on a 4-GPU runner gives each worker its own.
    """
    if not worker_id.startswith("gw") or not worker_id[2:].isdigit():
        raise ValueError(f"not an xdist worker id: {worker_id!r}")
    number = int(worker_id[2:])
    devices = [d.strip() for d in (visible or "").split(",") if d.strip()]
    return devices[number % len(devices)] if devices else str(number)


def worker_threads(worker_count: int, cpu_count: int | None, preset: str | None) -> int | None:
    """CPU threads for each of `worker_count` xdist workers: an equal share of the cores, at least one.

    None when the user already chose (`OMP_NUM_THREADS` set) or the core count is unknown. Without a share,
    every worker's torch starts one thread per core: two workers on two cores ran the default gate's cells
    6.5 times slower (p95 76 s against 11.7 s serially), which makes the timings meaningless.
    """
    if preset or not cpu_count or worker_count < 1:
        return None
    return max(1, cpu_count // worker_count)

