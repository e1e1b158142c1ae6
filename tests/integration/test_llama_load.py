"""The load sweep on a real engine: gates/llama-cpp-load.yaml, small, through pytest (llama-cpp-python's server, f16 vs q8_0 KV)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.integration.test_llama_server import _needs_the_engine  # noqa: F401 - the autouse skip (or CI failure) without the engine

pytestmark = pytest.mark.slow


def test_the_shipped_load_gate_records_every_level_and_decides(pytester):
    """Both sides launched, two levels (1 and 2 in flight) of two 256-token requests each, in ABBA order. The engine
    serves one request at a time, so at concurrency 2 one request queues behind the other: its TTFT holds a whole
    other request. Everything else is the shipped file; one depth, one seed, to keep it short."""
    from pytest_longctx.gate.results import load_results

    gate = yaml.safe_load((Path(__file__).parents[2] / "gates" / "llama-cpp-load.yaml").read_text())
    gate["sweep"]["depths"] = [0.5]
    gate["sweep"]["load"].update(concurrency=[1, 2], requests=2, length=256, max_new_tokens=4, time_budget_s=120,
                                 slo={"ttft_s": 60.0, "tpot_s": 5.0})
    gate["report"] = "out/llama-cpp-load.html"
    (pytester.path / "gate.yaml").write_text(yaml.safe_dump(gate, sort_keys=False))
    result = pytester.runpytest("--longctx-gate", "gate.yaml", "-p", "no:cacheprovider", "-v")
    results = load_results(pytester.path / "out" / "llama-cpp-load.json")
    verdict = results.decision.verdict
    assert verdict in ("approve", "reject"), results.decision.reasons
    assert result.ret == (0 if verdict == "approve" else 1), result.stdout.str()
    result.assert_outcomes(passed=6)  # one cell per side, and two load levels per side

    ran = re.findall(r"::(baseline|candidate)::load\[c(\d)\] PASSED", result.stdout.str())
    assert ran == [("baseline", "1"), ("candidate", "1"), ("candidate", "2"), ("baseline", "2")]  # ABBA across levels

    levels = {(lv.variant, lv.concurrency): lv for lv in results.load_levels}
    assert set(levels) == {(side, c) for side in ("baseline", "candidate") for c in (1, 2)}
    for level in levels.values():
        assert (level.requests, level.completed, level.errors, level.good) == (2, 2, 0, 2)  # within the loose SLOs
        assert 2 <= level.output_tokens <= 8 and level.wall_s > 0
        assert level.throughput_tok_s == pytest.approx(level.output_tokens / level.wall_s)
        assert level.goodput_rps == pytest.approx(2 / level.wall_s)
        assert 0 < level.ttft_p50_s <= level.ttft_p95_s < level.wall_s
    for side in ("baseline", "candidate"):
        # Queued: the later request of the pair at concurrency 2 waited for the other one's prefill and decode.
        assert levels[(side, 2)].ttft_p95_s > levels[(side, 1)].ttft_p50_s

    m = results.metrics
    assert set(m.load_ratios) == {"1", "2"}
    for c in (1, 2):
        base, cand = levels[("baseline", c)], levels[("candidate", c)]
        assert m.load_ratios[str(c)]["goodput_ratio"] == pytest.approx(cand.goodput_rps / base.goodput_rps)
        assert m.load_ratios[str(c)]["throughput_ratio"] == pytest.approx(cand.throughput_tok_s / base.throughput_tok_s)
    assert m.goodput_ratio == pytest.approx(min(r["goodput_ratio"] for r in m.load_ratios.values()))
    checks = {c.name: c for c in results.decision.checks}
    assert checks["goodput_ratio"].threshold == 0.90 and checks["throughput_ratio"].threshold == 0.90
    assert checks["goodput_ratio"].passed == (m.goodput_ratio >= 0.90)
    page = (pytester.path / "out" / "llama-cpp-load.html").read_text()
    assert '<section id="load">' in page and "p95 time to first token (s) by concurrency" in page
