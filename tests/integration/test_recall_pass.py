"""The recall pass through pytest: untimed cells reuse cached prefixes and stop early, with unchanged answers."""

from __future__ import annotations

from pytest_longctx.gate.results import load_results


def test_untimed_cells_reuse_prefixes_and_answer_as_a_full_run_does(pytester, write_gate, tiny_model_dir):
    sweep = {"lengths": [384], "depths": [0.0, 0.5, 1.0], "seeds": [0], "max_new_tokens": 6}
    full = write_gate("full.yaml", sweep=sweep)
    subset = write_gate("subset.yaml", sweep={**sweep, "timing": {"depths": [0.5]}})
    common = ("--longctx-model", str(tiny_model_dir), "-p", "no:cacheprovider")
    pytester.runpytest("--longctx-gate", str(full), "--longctx-json", "full.json", *common).assert_outcomes(passed=6)
    pytester.runpytest("--longctx-gate", str(subset), "--longctx-json", "subset.json", *common).assert_outcomes(passed=6)
    a, b = load_results(pytester.path / "full.json"), load_results(pytester.path / "subset.json")
    assert [(c.variant, c.depth, c.answer) for c in a.cells] == [(c.variant, c.depth, c.answer) for c in b.cells]
    untimed = [c for c in b.cells if c.depth != 0.5]
    assert all(c.total_s is None and c.total_samples == () for c in untimed)
    assert any(c.reused_tokens > 100 for c in untimed)  # depth cells share the haystack up to the needle
    assert all(c.reused_tokens == 0 and c.total_s is not None for c in b.cells if c.depth == 0.5)
    assert b.metrics.p95_latency_ratio is not None  # latency from the timed cells alone
