"""Measurements a gate can add to its sweep, run inside a gate through pytest: the loss curve and retrieval."""

from __future__ import annotations

import json

import pytest


def _run(pytester, gate, model_dir):
    return pytester.runpytest("--longctx-gate", str(gate), "--longctx-model", str(model_dir), "--longctx-json", "out/r.json",
                              "-p", "no:cacheprovider")


def test_a_loss_curve_is_measured_per_side_inside_the_gate(pytester, write_gate, tiny_model_dir):
    gate = write_gate(
        candidate={"kv_cache_dtype": "int4"},
        sweep={"lengths": [256], "depths": [0.5], "seeds": [0], "max_new_tokens": 4, "loss": {"tokens": 512, "buckets": 4}},
        thresholds={"p95_latency_ratio": {"max": 100.0}, "loss_ratio": {"max": 1.5}},
    )
    result = _run(pytester, gate, tiny_model_dir)

    data = json.loads((pytester.path / "out" / "r.json").read_text())
    curves = data["metrics"]["loss_curves"]
    assert set(curves) == {"baseline", "candidate"}, result.stdout.str()
    for curve in curves.values():
        assert curve["tokens"] == 512 and len(curve["losses"]) == 4 and sum(curve["counts"]) == 511
        assert all(loss > 0 for loss in curve["losses"])
    # int4 K/V changes what the model predicts at every position: the two curves differ.
    assert curves["baseline"]["losses"] != curves["candidate"]["losses"]
    check = next(c for c in data["decision"]["checks"] if c["name"] == "loss_ratio")
    assert check["value"] == pytest.approx(data["metrics"]["loss_ratio"])
    assert result.ret == (0 if data["decision"]["verdict"] == "approve" else 1)


def test_retrieval_runs_inside_the_gate_on_the_very_prompts_the_other_side_reads_whole(pytester, write_gate, tiny_model_dir):
    pytest.importorskip("bm25s")
    gate = write_gate(
        baseline={}, candidate={"retrieval": {"method": "bm25", "chunk_tokens": 64, "top_k": 2}},
        sweep={"lengths": [512], "depths": [0.25, 0.75], "seeds": [0], "max_new_tokens": 4},
    )
    result = _run(pytester, gate, tiny_model_dir)

    data = json.loads((pytester.path / "out" / "r.json").read_text())
    cand = [c for c in data["cells"] if c["variant"] == "candidate"]
    base = [c for c in data["cells"] if c["variant"] == "baseline"]
    assert len(cand) == 2 and not any(c["error"] for c in data["cells"]), result.stdout.str()
    for cell in cand:
        record = cell["retrieval"]
        assert record["settings"]["method"] == "bm25" and len(record["selected"]) == 2
        # Two chunks of 64 tokens and the question replace a 512-token haystack.
        assert cell["tokens"] < 300 and 2 * 64 >= record["prefill_tokens"] > 0  # the retrieved context alone
    assert all(c["tokens"] == 512 and c["retrieval"] is None for c in base)
    assert data["metrics"]["memory_ratio"] < 0.6  # the side holds the K/V of what it read
