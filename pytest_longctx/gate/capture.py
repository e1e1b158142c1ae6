"""Captured baselines: the baseline side's cells and fingerprints, written once, compared against later runs."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .results import CellResult, record_version, require_keys, write_atomic
from .spec import GateSpec

# 2: content hashes of the weights, config and tokenizer files, and digests of the cells and of the rest of the file.
CAPTURE_VERSION = 2
PROMPT_GENERATOR_VERSION = 1  # bump whenever haystack text or layout changes: old captures stop comparing
RECAPTURE = "re-capture with pytest --longctx-gate GATE --longctx-capture --longctx-overwrite-baseline"


class CaptureError(RuntimeError):
    """A capture that cannot be written or read; the message says what to do."""


def canonical_sha256(value: Any) -> str:
    """The sha256 of a value's canonical JSON (sorted keys, no spaces): equal content, equal digest."""
    return hashlib.sha256(json.dumps(_plain(value), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class CapturedBaseline:
    """A baseline side's cells and what they were measured on, with digests that tell a hand-edited file.

    The digests guard against edits after capture (a flipped `found`, a fingerprint made to match new
    weights), not against someone who recomputes them: they are checksums, not signatures.
    """

    gate_name: str
    baseline: dict[str, Any]
    sweep: dict[str, Any]
    fingerprint: dict[str, str]
    cells: tuple[CellResult, ...]
    captured_at: str
    # The digests the file states; those of a capture built here are computed from its content.
    stated_digests: dict[str, str] | None = None

    def _header(self) -> dict[str, Any]:
        return {"gate_name": self.gate_name, "baseline": self.baseline, "sweep": self.sweep,
                "fingerprint": self.fingerprint, "captured_at": self.captured_at}

    def digests(self) -> dict[str, str]:
        """`cells`: over the cell records; `header`: over everything else but the version."""
        return {"cells": canonical_sha256([c.stable_dict() for c in self.cells]), "header": canonical_sha256(self._header())}

    def integrity_problems(self) -> list[str]:
        """Each digest the file states that its content no longer matches, naming what was edited."""
        if self.stated_digests is None:
            return []
        what = {"cells": "cells", "header": "header (gate_name, baseline, sweep, fingerprint, captured_at)"}
        return [
            f"captured baseline: {what[name]} digest mismatch (the file was edited after capture; {RECAPTURE})"
            for name, digest in self.digests().items() if self.stated_digests.get(name) != digest
        ]

    def to_dict(self) -> dict[str, Any]:
        return {"capture_version": CAPTURE_VERSION, **self._header(),
                "digests": self.digests(), "cells": [c.to_dict() for c in self.cells]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CapturedBaseline:
        version = data.get("capture_version")
        if version != CAPTURE_VERSION:
            older = isinstance(version, int) and version < CAPTURE_VERSION
            why = " (it holds no content hashes of the weights and no digest of its cells)" if older else ""
            raise CaptureError(f"capture_version {version!r} is not {CAPTURE_VERSION}{why}; {RECAPTURE}")
        require_keys(data, ("capture_version", "gate_name", "baseline", "sweep", "fingerprint", "captured_at", "digests", "cells"),
                     "capture", fix=RECAPTURE)
        missing = sorted(set(FINGERPRINT_KEYS) - set(data["fingerprint"]))
        if missing:
            raise CaptureError(f"fingerprint lacks {', '.join(missing)}; {RECAPTURE}")
        return cls(
            gate_name=data["gate_name"],
            baseline=data["baseline"],
            sweep=data["sweep"],
            fingerprint=data["fingerprint"],
            # A capture from before the served-engine cell keys lacks them; its digest covers what it has.
            cells=tuple(CellResult.from_dict(c, version=record_version("cell", c)) for c in data["cells"]),
            captured_at=data["captured_at"],
            stated_digests=dict(data["digests"]),
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


FINGERPRINT_KEYS = ("model_weights", "tokenizer", "chat_template", "prompt_generator", "torch", "transformers", "device")
FILE_KEYS = ("model_config", "tokenizer_files")  # from the model reference's files, when it is loaded in-process
HASHED = {"model_weights", "model_config", "tokenizer", "tokenizer_files", "chat_template"}


def fingerprint(backend: Any, *, ref: str | None = None) -> dict[str, str]:
    """What must match for two runs' recall to be comparable: weights, config, tokenizer, template, generator, stack.

    `model_weights` is the backend's own fingerprint (for an in-process model, the sha256 of the weight files it
    loaded); the tokenizer and chat template are hashed as loaded; with `ref`, the content hashes of its
    config.json and tokenizer files are added (cached by file identity, so a warm run does not rehash).
    """
    import torch
    import transformers

    tok = backend.tokenizer
    inner = getattr(tok, "backend_tokenizer", None)
    vocab = inner.to_str() if inner is not None else json.dumps(sorted(tok.get_vocab().items()))
    device = getattr(backend, "device", None)
    found = {
        "model_weights": str(backend.fingerprint),
        "tokenizer": _sha(vocab),
        "chat_template": _sha(getattr(tok, "chat_template", None)),
        "prompt_generator": str(PROMPT_GENERATOR_VERSION),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": "cpu" if device is None or device.type == "cpu" else torch.cuda.get_device_name(device),
    }
    if ref is not None:
        from ..backends.loading import model_files_sha256

        found.update(model_files_sha256(ref))
    return found


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
    """Read a capture; a CaptureError naming the file for one that is missing, unreadable or of another version."""
    try:
        return CapturedBaseline.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise CaptureError(f"{path}: no captured baseline; run pytest --longctx-gate GATE --longctx-capture first") from None
    except CaptureError as exc:
        raise CaptureError(f"{path}: {exc}") from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CaptureError(f"{path}: not a readable captured baseline ({exc}); {RECAPTURE}") from exc


def _shown(key: str, value: str | None) -> str:
    """A fingerprint value for a reason: hashes cut to 12 hex digits, versions and devices in full."""
    if value is None:
        return "absent"
    return f"{value[:12]}.." if key in HASHED and len(value) == 64 else repr(value)


def mismatches(capture: CapturedBaseline, gate: GateSpec, current: dict[str, str]) -> list[str]:
    """Every reason the capture cannot stand in for this run's baseline, each naming what differs.

    First the file's own integrity (a hand-edited capture), then each fingerprint key this run loaded.
    """
    spec = _plain(gate.to_dict())
    problems = capture.integrity_problems()
    for key, value in current.items():
        captured = capture.fingerprint.get(key)
        if captured != value:
            label = f"{key} sha256" if key in HASHED else key
            problems.append(f"{label} differs: captured {_shown(key, captured)}, loaded {_shown(key, value)}")
    if capture.baseline != spec["baseline"]:
        problems.append(f"baseline settings: captured {capture.baseline}, gate now {spec['baseline']}")
    if capture.sweep != spec["sweep"]:
        problems.append("sweep settings differ from the capture's")
    return problems
