from __future__ import annotations

import pytest

from pytest_longctx.gate_spec import parse_gate
from pytest_longctx.sweep import classify_miss, interleaved, plan_cells

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


@pytest.mark.parametrize(
    "answer,hit_limit,category",
    [
        ("The code is HERON-2904.", False, None),
        ("The code is 2904.", False, "partial"),
        ("The override code for the vault is HER", True, "truncated"),
        ("The override code for the vault is", True, "truncated"),
        ("The code is 2024-12-14.", False, "missing"),
        ("The override code for the vault is 2024-12-14 16:5", True, "missing"),
        ("", False, "refusal/other"),
    ],
)
def test_misses_are_classified(answer, hit_limit, category):
    assert classify_miss(answer, "HERON-2904", hit_limit=hit_limit) == category


class ScriptedBackend:
    """Returns prepared generations in turn, so timing aggregation can be checked exactly."""

    def __init__(self, totals, answers=None):
        from pytest_longctx.backend import Generation

        answers = answers or ["code HERON-2904"] * len(totals)
        self.gens = [
            Generation(answer=a, new_tokens=3, prefill_s=t / 2, decode_s_per_token=t / 10, total_s=t, kv_bytes=10,
                       kv_bytes_analytic=10, kv_tokens=5, peak_bytes=None)
            for t, a in zip(totals, answers)
        ]

    def generate(self, token_ids, *, variant, max_new_tokens, timeout_s=None):
        return self.gens.pop(0)


class FakePrompt:
    token_ids = (1, 2, 3)
    tokens = 3
    answer = "HERON-2904"
    prompt_sha256 = "h"
    needle_span = (1, 2)
    prompt_text = "x"

    class needle:  # noqa: N801 - mirrors Haystack.needle
        text = "The override code is HERON-2904."


@pytest.mark.parametrize("statistic,expected", [("min", 1.0), ("median", 2.0)])
def test_repeats_keep_the_chosen_statistic_of_each_timing(statistic, expected):
    from pytest_longctx.sweep import Cell, run_cell

    cell = run_cell(ScriptedBackend([3.0, 1.0, 2.0]), GATE.baseline, Cell("niah", 512, 0.5, 0), FakePrompt(),
                    max_new_tokens=8, repeats=3, repeat_statistic=statistic)
    assert cell.total_s == expected and cell.prefill_s == expected / 2 and cell.repeats == 3
    assert cell.found and cell.failure is None


def test_repeats_that_disagree_are_an_error():
    from pytest_longctx.sweep import Cell, run_cell

    with pytest.raises(RuntimeError, match="disagree"):
        run_cell(ScriptedBackend([1.0, 1.0], ["HERON-2904", "no"]), GATE.baseline, Cell("niah", 512, 0.5, 0), FakePrompt(),
                 max_new_tokens=8, repeats=2)
