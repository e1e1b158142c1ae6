"""A sequential gate through pytest: looks of seeds, later looks skipped once the verdict is decided."""

from __future__ import annotations

import json


def test_a_decided_gate_skips_the_later_looks_and_records_where_it_stopped(pytester, write_gate, tiny_model_dir):
    # A/A on a deterministic model: identical answers, so the first look decides every check.
    gate = write_gate(candidate={"kv_cache_dtype": "auto"},
                      sweep={"lengths": [256, 384], "depths": [0.0, 0.5, 1.0], "max_new_tokens": 4,
                             "sequential": {"batch": 1, "max_seeds": 3}, "repeats": 2},
                      thresholds={"p95_latency_ratio": {"max": 100.0}})
    result = pytester.runpytest("--longctx-gate", str(gate), "--longctx-model", str(tiny_model_dir), "-p", "no:cacheprovider",
                                "--longctx-json", "r.json", "-rs")
    assert result.ret == 0, result.stdout.str()
    # Look 1: 12 cells and its timing pass; looks 2 and 3 (24 cells, 2 passes) skipped with the reason.
    result.assert_outcomes(passed=13, skipped=26)
    result.stdout.fnmatch_lines(["*gate tiny: APPROVE*look 1 of 3, stopped early*",
                                 "SKIPPED*verdict decided after look 1 (seed 0): approve"])
    data = json.loads((pytester.path / "r.json").read_text())
    m = data["metrics"]
    assert (m["looks"], m["planned_looks"], m["seeds_used"], m["stopped_early"]) == (1, 3, [0], True)
    assert {c["seed"] for c in data["cells"]} == {0} and all(c["repeats"] == 2 for c in data["cells"])
    assert data["decision"]["verdict"] == "approve" and "answer_logprob" in data["cells"][0]
