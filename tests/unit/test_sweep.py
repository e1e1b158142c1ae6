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
        ("", False, "refusal/other"),
    ],
)
def test_misses_are_classified(answer, hit_limit, category):
    assert classify_miss(answer, "HERON-2904", hit_limit=hit_limit) == category
