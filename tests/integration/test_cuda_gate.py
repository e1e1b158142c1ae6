"""A gate on CUDA, through pytest: memory is judged by each cell's peak allocation."""

from __future__ import annotations

import pytest

from pytest_longctx.backends.devices import cuda_unavailable_reason

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(cuda_unavailable_reason() is not None, reason=str(cuda_unavailable_reason()))]


def test_a_gate_on_cuda_judges_memory_by_peak_allocation(pytester, tiny_model_dir):
    import yaml

    from pytest_longctx.gate.results import load_results

    gate = pytester.path / "gate.yaml"
    gate.write_text(yaml.safe_dump({
        "name": "cuda", "baseline": {}, "candidate": {"kv_cache_dtype": "fp8_e4m3"},
        "sweep": {"lengths": [1024, 2048], "depths": [0.0, 0.5, 1.0], "max_new_tokens": 4},
        "thresholds": {"p95_latency_ratio": {"max": 100.0}, "memory_ratio": {"max": 2.0}},
    }))
    result = pytester.runpytest("--longctx-gate", str(gate), "--longctx-model", str(tiny_model_dir), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=12)
    results = load_results(pytester.path / "reports" / "cuda.json")
    assert results.metrics.memory_source == "peak_bytes"
    assert all(c.peak_bytes and c.peak_bytes > c.kv_bytes for c in results.cells)
    assert "cpu" not in results.environment["device"]
