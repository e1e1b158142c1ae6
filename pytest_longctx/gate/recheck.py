"""Recomputing a saved results file's decision and metrics from its cells, naming every field that disagrees."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from .results import GateResults


def _canonical(value: Any) -> str:
    # JSON text, not ==: tuples and lists compare alike, and a NaN equals itself.
    return json.dumps(value, sort_keys=True)


def recompute(results: GateResults) -> tuple[GateResults, list[str]]:
    """The results with metrics and decision recomputed from the gate, cells and load levels they record, and the dotted
    names of the recorded fields that disagree (`decision.verdict`, `decision.checks[memory_ratio].passed`,
    `metrics.middle_recall`, ...): an edited file, or one written by other code.

    The captured-baseline mismatches and loss curves are measurements, not derived from the cells, so they are
    taken as recorded.
    """
    from .decision import evaluate
    from .spec import GateSpec

    gate = GateSpec.from_dict(results.gate)
    metrics, decision = evaluate(
        gate, results.cells, fingerprint_mismatches=results.metrics.fingerprint_mismatches, loss_curves=results.metrics.loss_curves,
    )
    if gate.sweep.load is not None:  # the load sweep's levels are recorded beside the cells, and decided from them
        from .load_decision import apply_load

        metrics, decision = apply_load(gate, metrics, decision, results.load_levels)
    fresh = dataclasses.replace(results, metrics=metrics, decision=decision)
    return fresh, disagreements(results, fresh)


def disagreements(recorded: GateResults, fresh: GateResults) -> list[str]:
    """Dotted names of the decision and metric fields in which `recorded` differs from `fresh`."""
    stated, computed = recorded.decision.to_dict(), fresh.decision.to_dict()
    fields = [f"decision.{key}" for key in ("verdict", "reasons") if _canonical(stated[key]) != _canonical(computed[key])]
    stated_checks = {c["name"]: c for c in stated["checks"]}
    computed_checks = {c["name"]: c for c in computed["checks"]}
    for name in sorted(set(stated_checks) | set(computed_checks)):
        a, b = stated_checks.get(name), computed_checks.get(name)
        if a is None or b is None:
            fields.append(f"decision.checks[{name}]")
            continue
        fields.extend(f"decision.checks[{name}].{key}" for key in a if _canonical(a[key]) != _canonical(b.get(key)))
    stated_metrics, computed_metrics = recorded.metrics.to_dict(), fresh.metrics.to_dict()
    fields.extend(f"metrics.{key}" for key in stated_metrics if _canonical(stated_metrics[key]) != _canonical(computed_metrics[key]))
    return fields
