"""Start-up checks that need more than the gate file: the models it names (located, their config.json read, never
their weights), settings that would change nothing on those models, and where its outputs would be written."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .reader import GateError, gate_error
from .spec import GateSpec, VariantSpec

if TYPE_CHECKING:
    from ..backends.model_config import ModelPositions

# RoPE types whose `factor` stretches the positions a model handles (dynamic: past its trained length).
_STRETCHING = ("linear", "dynamic", "yarn", "llama3", "longrope")


def check_gate(gate: GateSpec, *, model_option: str | None = None) -> None:
    """Every model reference located; lengths within each side's positions (unless the sweep says it means to
    go past them); no attention window that evicts nothing; no dynamic RoPE that never scales.

    Raises:
        GateError: naming the gate file, the key and the fix.
    """
    source = str(gate.path) if gate.path is not None else "<gate>"
    positions = {}
    for side in gate.variants:
        own = side.find("model_swap") is not None
        key = f"{side.name}.model" if own else "model"
        ref = side.model_spec(gate.model).ref
        if ref not in positions:
            positions[ref] = _locate(source, key, ref, from_option=model_option is not None and not own)
    for side in gate.variants:
        trained = positions[side.model_spec(gate.model).ref]
        _changes_act(source, side, gate, trained.max_position_embeddings)
        if trained.max_position_embeddings is not None:
            _within_positions(source, side, gate, trained)


def _locate(source: str, key: str, ref: str, *, from_option: bool) -> ModelPositions:
    from ..backends.loading import ModelLoadError, resolve
    from ..backends.model_config import model_positions

    try:
        return model_positions(resolve(ref))
    except ModelLoadError as exc:
        where = "--longctx-model" if from_option and source == "<gate>" else source
        fix = "pass --longctx-model with a model that exists here" if from_option else f"point {key} at a model that exists here"
        raise GateError(f"{where}: key '{key}': {exc}. Fix: {fix}.") from None


def _longest(gate: GateSpec) -> int:
    """The most positions one run of the gate uses: the longest prompt and its answer, or the loss text."""
    sweep = gate.sweep
    return max(max(sweep.lengths) + sweep.max_new_tokens, sweep.loss.tokens if sweep.loss is not None else 0)


def _rope(side: VariantSpec) -> Any:
    change = side.find("rope")
    return None if change is None else change.settings  # type: ignore[attr-defined]


def side_positions(side: VariantSpec, trained: int) -> int:
    """The positions `side` handles: its own max_position_embeddings, else the model's, stretched by a RoPE factor."""
    rope = _rope(side)
    if rope is None:
        return trained
    if rope.max_position_embeddings is not None:
        return rope.max_position_embeddings
    factor = rope.get("factor")
    if rope.rope_type in _STRETCHING and isinstance(factor, (int, float)) and factor > 1:
        return int((rope.get("original_max_position_embeddings") or trained) * factor)
    return trained


def _within_positions(source: str, side: VariantSpec, gate: GateSpec, trained: ModelPositions) -> None:
    if gate.sweep.beyond_trained_positions or trained.max_position_embeddings is None:
        return
    limit, longest = side_positions(side, trained.max_position_embeddings), _longest(gate)
    if longest <= limit:
        return
    rope = _rope(side)
    own = "its max_position_embeddings" if rope is not None and rope.max_position_embeddings else "the model's trained length"
    raise gate_error(
        source, "sweep.lengths",
        f"the longest run uses {longest:,} positions (prompt and answer, or the loss text), past {side.name}'s {limit:,} "
        f"({own}, from {trained.source})",
        f"sweep at most {max(limit - gate.sweep.max_new_tokens, 0):,} tokens, extend {side.name}'s positions "
        f"(max_position_embeddings, rope_parameters), or set sweep.beyond_trained_positions: true to measure past them on purpose",
    )


def _changes_act(source: str, side: VariantSpec, gate: GateSpec, trained: int | None) -> None:
    """Each change's own no-op check on this sweep and model: a setting that would compute what the model does
    without it (a window that evicts nothing, dynamic RoPE that never scales) is refused, naming the key."""
    from ..changes.base import ChangeError

    for change in side.changes:
        try:
            change.refuse_noop(longest_prompt=max(gate.sweep.lengths), longest_run=_longest(gate), trained=trained)
        except ChangeError as exc:
            raise gate_error(source, f"{side.name}.{exc.key}", exc.problem, exc.fix) from None


def check_capture(gate: GateSpec, *, capture: bool, overwrite: bool) -> None:
    """Capture conflicts surface before minutes of sweeping, not after."""
    from .capture import CaptureError, capture_path

    try:
        path = capture_path(gate)
    except CaptureError as exc:
        raise GateError(f"{gate.path}: {exc}") from None
    if capture and path.exists() and not overwrite:
        raise GateError(f"{gate.path}: captured baseline {path} exists. Fix: pass --longctx-overwrite-baseline to replace it")
    if not capture and gate.captured_baseline is not None and not path.exists():
        raise GateError(
            f"{gate.path}: key 'captured_baseline': {path} does not exist. "
            f"Fix: run pytest --longctx-gate {gate.path} --longctx-capture first"
        )


def check_capture_readable(gate: GateSpec, *, capture: bool) -> None:
    """A capture of an older version, or one that cannot be read, is refused before the sweep (its digests and
    fingerprints are checked after the run, into an `invalid` verdict)."""
    from .capture import CaptureError, capture_path, load_capture

    if capture or gate.captured_baseline is None:
        return
    try:
        load_capture(capture_path(gate))
    except CaptureError as exc:
        raise GateError(f"{gate.path}: key 'captured_baseline': {exc}") from None


OutputKind = Literal["gate", "capture", "results", "report"]
_WHAT: dict[str, str] = {"gate": "gate file", "capture": "captured baseline", "results": "results JSON", "report": "HTML report"}


@dataclass(frozen=True)
class Output:
    """A file a run reads or writes: the gate file, its capture, its results JSON, its HTML report."""

    gate: GateSpec
    kind: OutputKind
    path: Path  # absolute
    label: str  # how the user set it: "key 'report'", "--longctx-json", "the default report path"
    given: Literal["gate", "cli", "default"]
    note: str = ""  # what the path is when the label names another setting ("the results JSON, beside the report")


def check_outputs(outputs: Sequence[Output], *, roots: Sequence[Path]) -> None:
    """Paths a gate file sets stay under the working tree (`roots`: pytest's rootdir and the directory it was
    started from, which relative paths resolve against; the command line may point anywhere), and no two files of
    a run are one: a report over the results, or either over a captured baseline, would destroy it.

    Raises:
        GateError: naming the gate file, the key (or option) and the fix.
    """
    for out in outputs:
        if out.given == "gate" and out.kind != "gate" and not _inside(out, roots):
            raise GateError(
                f"{out.gate.path}: {out.label}: {out.path} is outside the working tree {roots[0]}. "
                f"Fix: write it under {roots[0]}, or pass the path on the command line to write elsewhere on purpose."
            )
    order: dict[OutputKind, int] = {"gate": 0, "capture": 1, "results": 2, "report": 3}
    seen: dict[Path, Output] = {}
    for out in sorted(outputs, key=lambda o: order[o.kind]):
        key = Path(os.path.realpath(out.path))
        first = seen.setdefault(key, out)
        if first is out:
            continue
        # Blame the one the user wrote: the later unless it is a default, which the earlier then displaces.
        blamed, other = (first, out) if out.given == "default" and first.given != "gate" and first.kind != "gate" else (out, first)
        if other.gate is blamed.gate and other.label == blamed.label:  # `report: x.json`, its results beside it
            raise GateError(
                f"{blamed.gate.path}: {blamed.label}: {blamed.path} would be both the {_WHAT[other.kind]} and the "
                f"{_WHAT[blamed.kind]}. Fix: give the report an .html name, or set the results JSON's own path."
            )
        whose = "" if other.gate is blamed.gate else f" of gate {other.gate.name}"
        what = f" ({blamed.note})" if blamed.note else ""
        theirs = f" ({other.note})" if other.note else ""
        raise GateError(
            f"{blamed.gate.path}: {blamed.label}: {blamed.path}{what} is also {other.label}{whose}{theirs}; writing one "
            f"would destroy the other. Fix: give the report, the results and the captured baseline each their own file."
        )


def _inside(out: Output, roots: Sequence[Path]) -> bool:
    """Under a root as written (a symlinked folder inside it is the user's choice) or once resolved; a capture may
    also sit beside its gate file."""
    allowed = list(roots)
    if out.kind == "capture" and out.gate.path is not None:
        allowed.append(Path(os.path.abspath(out.gate.path)).parent)
    written, real = Path(os.path.abspath(out.path)), Path(os.path.realpath(out.path))
    return any(written.is_relative_to(os.path.abspath(root)) or real.is_relative_to(os.path.realpath(root)) for root in allowed)
