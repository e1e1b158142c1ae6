"""Captured baselines: the baseline side's cells and fingerprints, written once, compared against later runs."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .spec import GateSpec
from .results import CellResult, write_atomic

CAPTURE_VERSION = 1
PROMPT_GENERATOR_VERSION = 1  # bump whenever haystack text or layout changes: old captures stop comparing


class CaptureError(RuntimeError):
    """A capture that cannot be written or read; the message says what to do."""


@dataclass(frozen=True)
class CapturedBaseline:
    gate_name: str
    baseline: dict[str, Any]
    sweep: dict[str, Any]
    fingerprint: dict[str, str]
    cells: tuple[CellResult, ...]
    captured_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "capture_version": CAPTURE_VERSION,
            "gate_name": self.gate_name,
            "baseline": self.baseline,
            "sweep": self.sweep,
            "fingerprint": self.fingerprint,
            "captured_at": self.captured_at,
            "cells": [c.to_dict() for c in self.cells],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CapturedBaseline:
        if data.get("capture_version") != CAPTURE_VERSION:
            raise CaptureError(f"capture_version {data.get('capture_version')!r} is not {CAPTURE_VERSION}; re-capture with --longctx-capture")
        return cls(
            gate_name=data["gate_name"],
            baseline=data["baseline"],
            sweep=data["sweep"],
            fingerprint=data["fingerprint"],
            cells=tuple(CellResult.from_dict(c) for c in data["cells"]),
            captured_at=data["captured_at"],
        )


def capture_path(gate: GateSpec) -> Path:
    """Where a gate's captured baseline lives: its `captured_baseline:`, else `<gate>.baseline.json` beside it."""
    if gate.captured_baseline is not None:
        return gate.captured_baseline
    if gate.path is None:
        raise CaptureError("a gate built in memory has no file to capture beside; set captured_baseline")
    return gate.path.with_name(f"{gate.path.stem}.baseline.json")


def _plain(value: Any) -> Any:
    """The JSON form of a value (tuples become lists), so settings compare equal after a round trip."""
    return json.loads(json.dumps(value))


def _sha(text: str | bytes | None) -> str:
    if text is None:
        return "none"
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def fingerprint(backend: Any) -> dict[str, str]:
    """What must match for two runs' recall to be comparable: weights, tokenizer, template, generator, stack."""
    import torch
    import transformers

    tok = backend.tokenizer
    inner = getattr(tok, "backend_tokenizer", None)
    vocab = inner.to_str() if inner is not None else json.dumps(sorted(tok.get_vocab().items()))
    device = getattr(backend, "device", None)
    return {
        "model_weights": str(backend.fingerprint),
        "tokenizer": _sha(vocab),
        "chat_template": _sha(getattr(tok, "chat_template", None)),
        "prompt_generator": str(PROMPT_GENERATOR_VERSION),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": "cpu" if device is None or device.type == "cpu" else torch.cuda.get_device_name(device),
    }


def require_complete(gate: GateSpec, cells: list[CellResult]) -> dict[tuple[str, int, float, int], CellResult]:
    """The baseline side's cells by key; a CaptureError unless every expected cell is there without error."""
    from .decision import expected_keys

    expected = set(expected_keys(gate))
    got = {c.key: c for c in cells if c.variant == gate.baseline.name}
    errored = [c for c in got.values() if c.error is not None]
    missing = expected - set(got)
    if errored or missing:
        raise CaptureError(
            f"not capturing an incomplete baseline ({len(missing)} cells missing, {len(errored)} errored); "
            "fix the errors and run --longctx-capture again without -k"
        )
    return got


def build_capture(gate: GateSpec, cells: list[CellResult], fp: dict[str, str]) -> CapturedBaseline:
    """Refuse to capture anything but a complete, error-free baseline side."""
    got = require_complete(gate, cells)
    spec = _plain(gate.to_dict())
    return CapturedBaseline(
        gate_name=gate.name, baseline=spec["baseline"], sweep=spec["sweep"], fingerprint=fp,
        cells=tuple(sorted(got.values(), key=lambda c: c.key)), captured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def write_capture(capture: CapturedBaseline, path: Path, *, overwrite: bool = False) -> None:
    """Write atomically (temp file + rename): an interrupted capture never leaves a corrupt baseline."""
    if path.exists() and not overwrite:
        raise CaptureError(f"{path} exists; pass --longctx-overwrite-baseline to replace it")
    write_atomic(path, json.dumps(capture.to_dict(), indent=2) + "\n")


def load_capture(path: Path) -> CapturedBaseline:
    try:
        return CapturedBaseline.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise CaptureError(f"{path}: no captured baseline; run pytest --longctx-gate GATE --longctx-capture first") from None
    except (ValueError, KeyError) as exc:
        raise CaptureError(f"{path}: not a readable captured baseline ({exc}); re-capture with --longctx-capture") from exc


def mismatches(capture: CapturedBaseline, gate: GateSpec, current: dict[str, str]) -> list[str]:
    """Every reason the capture cannot stand in for this run's baseline, each naming what differs."""
    spec = _plain(gate.to_dict())
    problems = [
        f"{key}: captured {capture.fingerprint.get(key, 'absent')!r}, now {value!r}"
        for key, value in current.items()
        if capture.fingerprint.get(key) != value
    ]
    if capture.baseline != spec["baseline"]:
        problems.append(f"baseline settings: captured {capture.baseline}, gate now {spec['baseline']}")
    if capture.sweep != spec["sweep"]:
        problems.append("sweep settings differ from the capture's")
    return problems
