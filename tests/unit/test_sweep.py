from __future__ import annotations

import pytest

from pytest_longctx.gate.spec import parse_gate
from pytest_longctx.gate.sweep import interleaved, plan_cells

GATE = parse_gate({
    "name": "g", "baseline": {}, "candidate": {"kv_cache_dtype": "fp8"},
    "sweep": {"lengths": [512, 1024], "depths": [0.0, 0.5], "seeds": [0, 1]},
})


def test_cells_cover_the_grid_with_readable_ids():
    cells = plan_cells(GATE.sweep)
    assert len(cells) == 8
    assert cells[0].id == "niah[512-d0.00-s0]" and cells[-1].id == "niah[1024-d0.50-s1]"


def test_variants_interleave_and_alternate_who_goes_first():
    order = [(v.name, c.id) for v, c in interleaved(GATE)]
    assert order[:4] == [
        ("baseline", "niah[512-d0.00-s0]"), ("candidate", "niah[512-d0.00-s0]"),
        ("candidate", "niah[512-d0.00-s1]"), ("baseline", "niah[512-d0.00-s1]"),
    ]
    assert sum(1 for name, _ in order if name == "candidate") == 8


class ScriptedBackend:
    """Returns prepared generations in turn, so timing aggregation can be checked exactly."""

    def __init__(self, totals, answers=None):
        from pytest_longctx.backends.in_process import Generation

        answers = answers or ["code HERON-2904"] * len(totals)
        self.gens = [
            Generation(answer=a, new_tokens=3, prefill_s=t / 2, decode_s_per_token=t / 10, total_s=t, kv_bytes=10,
                       kv_bytes_analytic=10, kv_tokens=5, peak_bytes=None)
            for t, a in zip(totals, answers, strict=True)
        ]

    def generate(self, token_ids, *, variant, max_new_tokens, timeout_s=None, **_):
        return self.gens.pop(0)


def FakePrompt():
    from pytest_longctx.tasks import TaskPrompt

    return TaskPrompt(
        family="niah", prompt_text="log line\nThe override code is HERON-2904.\nlog line", token_ids=(1, 2, 3), length=3,
        depth=0.5, seed=0, question="What is the code?", answers=("HERON-2904",), distractors=(), evidence_spans=((1, 2),),
        scoring="all", value_pattern=r"[A-Z]+-\d{4}",
    )


def _sample(total, answer="code HERON-2904", error=None, variant="baseline"):
    from pytest_longctx.gate.results import TimingSample

    return TimingSample(variant, "niah", 512, 0.5, 0, total / 2, total / 10, total, answer, error)


@pytest.mark.parametrize("statistic,expected", [("min", 1.0), ("median", 2.0)])
def test_timed_runs_fold_into_the_chosen_statistic_of_each_timing(statistic, expected):
    from pytest_longctx.gate.sweep import Cell, merge_samples, run_cell

    cell = run_cell(ScriptedBackend([3.0]), GATE.baseline, Cell("niah", 512, 0.5, 0), FakePrompt(), max_new_tokens=8)
    assert cell.total_samples == (3.0,) and cell.repeats == 1
    merged = merge_samples(cell, [_sample(1.0), _sample(2.0), _sample(9.0, variant="candidate")], repeats=3, statistic=statistic)
    assert merged.total_s == expected and merged.prefill_s == expected / 2 and merged.repeats == 3
    assert merged.total_samples == (3.0, 1.0, 2.0)
    assert merged.found and merged.failure is None and merged.error is None


def test_a_recall_run_on_a_reused_prefix_is_not_a_timing_sample():
    from dataclasses import replace

    from pytest_longctx.gate.sweep import Cell, merge_samples, run_cell

    backend = ScriptedBackend([3.0])
    backend.gens = [replace(backend.gens[0], reused_tokens=100)] if hasattr(backend.gens[0], "reused_tokens") else backend.gens
    cell = run_cell(backend, GATE.baseline, Cell("niah", 512, 0.5, 0), FakePrompt(), max_new_tokens=8)
    if cell.reused_tokens:
        assert cell.total_s is None and cell.total_samples == ()
        assert merge_samples(cell, [_sample(2.0)], repeats=1).total_s == 2.0


@pytest.mark.parametrize(
    "samples,repeats,message",
    [
        ([_sample(1.0, answer="no")], 2, "greedy runs must agree"),
        ([_sample(1.0, error="CellTimeout: too slow")], 2, "a timed run failed: CellTimeout"),
        ([], 2, "only 1 of 2 timed runs"),
    ],
)
def test_timed_runs_that_disagree_fail_or_are_missing_error_the_cell(samples, repeats, message):
    from pytest_longctx.gate.sweep import Cell, merge_samples, run_cell

    cell = run_cell(ScriptedBackend([1.0]), GATE.baseline, Cell("niah", 512, 0.5, 0), FakePrompt(), max_new_tokens=8)
    merged = merge_samples(cell, samples, repeats=repeats)
    assert merged.failure == "error" and message in merged.error


def test_timing_passes_alternate_which_side_leads():
    first = [(v.name, c.id) for v, c in interleaved(GATE)][:2]
    second = [(v.name, c.id) for v, c in interleaved(GATE, flip=True)][:2]
    assert first == [("baseline", "niah[512-d0.00-s0]"), ("candidate", "niah[512-d0.00-s0]")]
    assert second == [("candidate", "niah[512-d0.00-s0]"), ("baseline", "niah[512-d0.00-s0]")]
