from __future__ import annotations

import pytest

from pytest_longctx.baseline_capture import CaptureError
from pytest_longctx.gate_spec import parse_gate
from pytest_longctx.session import GateRun
from pytest_longctx.sweep import interleaved

GATE = parse_gate({
    "name": "g", "baseline": {}, "candidate": {"kv_cache_dtype": "fp8"},
    "sweep": {"lengths": [256], "depths": [0.0, 0.5], "seeds": [0]},
})


def broken_model(gate):
    raise OSError("weights are corrupt")


def test_a_failed_load_errors_every_cell_and_is_tried_once():
    calls = []
    run = GateRun(GATE, backend_factory=lambda g: calls.append(g) or broken_model(g))
    for variant, cell in interleaved(GATE):
        run.record(run.measure(variant, cell))
    assert len(calls) == 1
    assert all(c.error and "weights are corrupt" in c.error for c in run.cells)
    assert run.results().decision.verdict == "incomplete"


def test_capture_after_a_failed_load_refuses_cleanly_without_reloading():
    calls = []
    run = GateRun(GATE, backend_factory=lambda g: calls.append(g) or broken_model(g), capture=True)
    assert [v.name for v in run.variants] == ["baseline"]
    for variant, cell in interleaved(GATE):
        if variant in run.variants:
            run.record(run.measure(variant, cell))
    with pytest.raises(CaptureError, match="0 cells missing, 2 errored"):
        run.captured()
    assert len(calls) == 1
