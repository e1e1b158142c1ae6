"""A small gate on the real embedded model (SmolLM2-135M), end to end through pytest: exit code, JSON, report."""

from __future__ import annotations

import pytest

from pytest_longctx.cli.main import main as longctx_main
from pytest_longctx.gate.decision import evaluate
from pytest_longctx.gate.results import load_results
from pytest_longctx.gate.spec import GateSpec

GATE = """\
name: fp8-small
model: embedded:smollm2-135m-instruct
baseline: {kv_cache_dtype: auto}
candidate: {kv_cache_dtype: fp8_e4m3}
sweep:
  lengths: [512, 1024]
  depths: [0.0, 0.5, 1.0]
  seeds: [1]
  middle: [0.25, 0.75]
  max_new_tokens: 24  # the model restates the question before the code
report: out/fp8-small.html
"""


@pytest.mark.slow
def test_small_fp8_gate_on_the_embedded_model(pytester):
    (pytester.path / "gate.yaml").write_text(GATE)
    result = pytester.runpytest("--longctx-gate", "gate.yaml", "-p", "no:cacheprovider")
    results = load_results(pytester.path / "out" / "fp8-small.json")
    verdict = results.decision.verdict
    # The exit status is the decision: 0 on approve, 1 otherwise (a latency blip may reject on a busy runner).
    assert result.ret == (0 if verdict == "approve" else 1), result.stdout.str()
    assert verdict in ("approve", "reject")
    result.assert_outcomes(passed=12)
    result.stdout.fnmatch_lines([f"*gate fp8-small: {verdict.upper()} (6/6 cells paired)*"])

    cells = results.cells
    assert len(cells) == 12 and all(c.error is None for c in cells)
    assert all(c.tokens == c.length for c in cells)  # token-exact prompts after the chat template
    # The real model reads its needle at these short lengths with a full-precision cache.
    assert sum(c.found for c in cells if c.variant == "baseline") >= 4
    for c in cells:
        assert abs(c.kv_bytes - c.kv_bytes_analytic) <= 0.01 * c.kv_bytes_analytic
        assert c.prefill_s > 0 and c.total_s >= c.prefill_s
    # FP8 with a float32 scale per token and head of 64: (1 + 4/64) / 4 of the fp32 cache.
    assert results.metrics.memory_ratio == pytest.approx((1 + 4 / 64) / 4, rel=0.01)

    _, recomputed = evaluate(GateSpec.from_dict(results.gate), results.cells)
    assert recomputed == results.decision
    html = (pytester.path / "out" / "fp8-small.html").read_text()
    assert "fp8-small" in html and "<svg" in html
    assert longctx_main(["decide", str(pytester.path / "out" / "fp8-small.json")]) == (0 if verdict == "approve" else 1)


WINDOW = """\
name: window-loses-recall
model: embedded:smollm2-135m-instruct
baseline: {}
candidate: {attention: {window: 128, sink_tokens: 4}}
sweep:
  lengths: [1024]
  depths: [0.25, 0.5, 0.75]
  seeds: [0, 1]
  max_new_tokens: 24
thresholds:
  p95_latency_ratio: {max: 100.0}   # the verdict is the recall's, not a busy runner's latency
report: out/window.html
"""


@pytest.mark.slow
def test_an_evicting_window_on_the_real_model_is_rejected_for_its_recall(pytester):
    """The promise itself: a change that loses the middle of the context is rejected, and the file says why."""
    (pytester.path / "gate.yaml").write_text(WINDOW)
    result = pytester.runpytest("--longctx-gate", "gate.yaml", "-p", "no:cacheprovider")
    results = load_results(pytester.path / "out" / "window.json")

    assert result.ret == 1 and results.decision.verdict == "reject", result.stdout.str()
    base = [c for c in results.cells if c.variant == "baseline"]
    cand = [c for c in results.cells if c.variant == "candidate"]
    # The full cache reads these middle needles at 1024 tokens; a 128-token window has evicted every one.
    assert sum(c.found for c in base) >= 5 and not any(c.found for c in cand)
    recall = next(c for c in results.decision.checks if c.name == "middle_recall_delta")
    assert not recall.passed and results.metrics.middle_recall["candidate"] == 0.0
    # Each lost cell's answer is less likely too, and the window holds its capacity, not the prompt.
    assert all(c.answer_logprob is not None for c in results.cells)
    assert results.metrics.answer_logprob_delta < 0
    assert all(c.kv_tokens == 4 + 128 for c in cand)
    # The decision is what the cells say, recomputed from the JSON alone.
    _, recomputed = evaluate(GateSpec.from_dict(results.gate), results.cells)
    assert recomputed.verdict == "reject"
    assert longctx_main(["decide", str(pytester.path / "out" / "window.json")]) == 1
