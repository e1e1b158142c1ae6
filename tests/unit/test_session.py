from __future__ import annotations

import pytest

from pytest_longctx.gate.capture import CaptureError
from pytest_longctx.gate.run import GateRun
from pytest_longctx.gate.spec import parse_gate
from pytest_longctx.gate.sweep import interleaved

GATE = parse_gate({
    "name": "g", "baseline": {}, "candidate": {"kv_cache_dtype": "fp8"},
    "sweep": {"lengths": [256], "depths": [0.0, 0.5], "seeds": [0]},
})


def broken_model(gate):
    raise OSError("weights are corrupt")


def test_a_failed_load_errors_every_cell_and_is_tried_once():
    calls = []
    run = GateRun(GATE, backend_factory=lambda g, v: calls.append(g) or broken_model(g))
    for variant, cell in interleaved(GATE):
        run.record(run.measure(variant, cell))
    assert len(calls) == 1
    assert all(c.error and "weights are corrupt" in c.error for c in run.cells)
    assert run.results().decision.verdict == "incomplete"


def test_capture_after_a_failed_load_refuses_cleanly_without_reloading():
    calls = []
    run = GateRun(GATE, backend_factory=lambda g, v: calls.append(g) or broken_model(g), capture=True)
    assert [v.name for v in run.variants] == ["baseline"]
    for variant, cell in interleaved(GATE):
        if variant in run.variants:
            run.record(run.measure(variant, cell))
    with pytest.raises(CaptureError, match="0 cells missing, 2 errored"):
        run.captured()
    assert len(calls) == 1


class CountingBackend:
    """A stand-in model whose timings are its call count, so which runs happened can be read off the samples."""

    def __init__(self):
        from tests.conftest import CharTokenizer

        self.tokenizer = CharTokenizer()
        self.calls = []

    def generate(self, token_ids, *, variant, max_new_tokens, timeout_s=None, **_):
        from pytest_longctx.backends.in_process import Generation

        self.calls.append(variant.name)
        t = float(len(self.calls))
        return Generation(answer="x", new_tokens=2, prefill_s=t, decode_s_per_token=t / 10, total_s=t, kv_bytes=1,
                          kv_bytes_analytic=1, kv_tokens=1, peak_bytes=None)


def test_timing_passes_rerun_every_timed_cell_and_merge_into_cells(monkeypatch):
    import dataclasses

    from pytest_longctx.gate import run as session_module

    gate = dataclasses.replace(GATE, sweep=dataclasses.replace(GATE.sweep, repeats=3))
    monkeypatch.setattr(session_module, "build_prompt", lambda tokenizer, spec, cell, variant: FakeHaystack(cell))
    backend = CountingBackend()
    run = GateRun(gate, backend_factory=lambda g, v: backend)
    for variant, cell in interleaved(gate):
        run.record(run.measure(variant, cell))
    warm = len(backend.calls)
    assert run.timing_passes == (2, 3)  # the recall runs were full runs: they are the first samples
    second = run.timing_pass(2)
    third = run.timing_pass(3)
    assert len(second) == len(third) == 4 and len(backend.calls) == warm + 8
    assert [s.variant for s in second[:2]] == ["candidate", "baseline"]  # pass 2 flips who leads
    run.record_samples(second + third)
    cells = run.merged_cells()
    assert all(c.repeats == 3 and c.error is None for c in cells)
    assert all(c.total_s == min(c.total_samples) for c in cells)


def FakeHaystack(cell):
    from pytest_longctx.tasks import TaskPrompt

    return TaskPrompt(family="niah", prompt_text=f"x {cell.id}", token_ids=(1, 2, 3), length=3, depth=cell.depth, seed=0,
                      question="q", answers=("x",), distractors=(), evidence_spans=((0, 1),), scoring="all", value_pattern="x")


def test_untimed_cells_answer_only_and_are_left_out_of_the_timing_passes(monkeypatch):
    import dataclasses

    from pytest_longctx.gate import run as session_module
    from pytest_longctx.gate.spec import TimingSpec

    sweep = dataclasses.replace(GATE.sweep, repeats=2, timing=TimingSpec(depths=(0.5,)))
    gate = dataclasses.replace(GATE, sweep=sweep)
    monkeypatch.setattr(session_module, "build_prompt", lambda tokenizer, spec, cell, variant: FakeHaystack(cell))
    run = GateRun(gate, backend_factory=lambda g, v: CountingBackend())
    for variant, cell in interleaved(gate):
        run.record(run.measure(variant, cell))
    run.record_samples(run.timing_pass(2))
    assert {(s.variant, s.depth) for s in run.samples} == {("baseline", 0.5), ("candidate", 0.5)}
    cells = {(c.variant, c.depth): c for c in run.merged_cells()}
    assert cells[("baseline", 0.0)].total_s is None and cells[("baseline", 0.0)].error is None
    assert cells[("baseline", 0.5)].repeats == 2 and cells[("baseline", 0.5)].error is None
