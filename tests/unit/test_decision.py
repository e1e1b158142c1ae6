from __future__ import annotations

import dataclasses

import pytest

from pytest_longctx.gate.decision import evaluate
from pytest_longctx.gate.results import CellResult
from pytest_longctx.gate.spec import parse_gate

# The candidate changes nothing the cells could show: these synthetic sides give the same answers and KV bytes,
# which under an FP8 candidate the no-op guard would (rightly) call invalid (see test_evidence.py).
GATE = parse_gate(
    {
        "name": "g",
        "baseline": {"kv_cache_dtype": "auto"},
        "candidate": {"kv_cache_dtype": "auto"},
        "sweep": {"lengths": [512, 1024], "depths": [0.0, 0.5, 1.0], "seeds": [0, 1], "middle": [0.25, 0.75]},
    }
)


def cell(variant, length, depth, seed, *, found=True, total_s=1.0, kv_bytes=1000, peak=None, error=None):
    return CellResult(
        variant=variant, task="niah", length=length, tokens=length, depth=depth, seed=seed, found=found,
        answer="x", expected="x", prefill_s=total_s / 2, decode_s_per_token=0.01, total_s=total_s, new_tokens=3,
        kv_bytes=kv_bytes, kv_bytes_analytic=kv_bytes, kv_tokens=length, peak_bytes=peak, prompt_sha256="h", error=error,
    )


def full(variant, **kw):
    return [cell(variant, n, d, s, **kw) for n in (512, 1024) for d in (0.0, 0.5, 1.0) for s in (0, 1)]


def replace(cells, match, **changes):
    return [dataclasses.replace(c, **changes) if match(c) else c for c in cells]


def test_identical_sides_approve():
    metrics, decision = evaluate(GATE, full("baseline") + full("candidate"))
    assert decision.verdict == "approve"
    assert metrics.paired_cells == 12 and metrics.middle_cells == 4
    assert metrics.p95_latency_ratio == pytest.approx(1.0) and metrics.memory_ratio == pytest.approx(1.0)
    # Notes (answer likelihood not measured, a baseline at the recall ceiling) inform; nothing fails.
    assert all(r.startswith(("PASS", "NOTE")) for r in decision.reasons) and any(r.startswith("PASS") for r in decision.reasons)


def test_one_middle_miss_rejects_but_an_edge_miss_does_not():
    base = full("baseline")
    edge_miss = replace(full("candidate"), lambda c: c.depth == 0.0 and c.seed == 0 and c.length == 512, found=False)
    assert evaluate(GATE, base + edge_miss)[1].verdict == "approve"
    mid_miss = replace(full("candidate"), lambda c: c.depth == 0.5 and c.seed == 0 and c.length == 512, found=False)
    metrics, decision = evaluate(GATE, base + mid_miss)
    assert decision.verdict == "reject"
    assert metrics.middle_recall == {"baseline": 1.0, "candidate": 0.75}
    assert any(r.startswith("FAIL middle-depth recall") for r in decision.reasons)


def test_equal_recall_passes_exactly_at_the_boundary():
    base = replace(full("baseline"), lambda c: c.depth == 0.5 and c.seed == 1, found=False)
    cand = replace(full("candidate"), lambda c: c.depth == 0.5 and c.seed == 0, found=False)
    assert evaluate(GATE, base + cand)[1].verdict == "approve"


@pytest.mark.parametrize("total_s,verdict", [(1.10, "approve"), (1.11, "reject")])
def test_p95_latency_ratio_threshold_is_inclusive(total_s, verdict):
    metrics, decision = evaluate(GATE, full("baseline") + full("candidate", total_s=total_s))
    assert metrics.p95_latency_ratio == pytest.approx(total_s)
    assert decision.verdict == verdict


def test_p95_is_read_from_the_slow_tail():
    slow_base = replace(full("baseline"), lambda c: c.length == 1024, total_s=10.0)
    slow_cand = replace(full("candidate"), lambda c: c.length == 1024, total_s=12.0)
    metrics, _ = evaluate(GATE, slow_base + slow_cand)
    assert metrics.p95_latency_s == {"baseline": 10.0, "candidate": 12.0}


def test_memory_ratio_uses_cuda_peak_when_every_cell_has_it():
    metrics, decision = evaluate(GATE, full("baseline", kv_bytes=1000, peak=100) + full("candidate", kv_bytes=300, peak=110))
    assert metrics.memory_source == "peak_bytes" and metrics.memory_ratio == pytest.approx(1.1)
    assert decision.verdict == "reject"
    metrics, decision = evaluate(GATE, full("baseline", kv_bytes=1000) + full("candidate", kv_bytes=300))
    assert metrics.memory_source == "kv_bytes" and metrics.memory_ratio == pytest.approx(0.3)


def test_a_memory_figure_from_the_formula_says_so():
    served = [dataclasses.replace(c, kv_source="analytic") for c in full("candidate", kv_bytes=530)]
    metrics, decision = evaluate(GATE, full("baseline") + served)
    assert metrics.kv_source == {"baseline": "measured", "candidate": "analytic"}
    memory = next(r for r in decision.reasons if "memory" in r)
    assert "candidate: analytic estimate" in memory and "baseline: analytic" not in memory
    metrics, decision = evaluate(GATE, full("baseline") + full("candidate"))
    assert metrics.memory_label == "kv_bytes"


def test_errored_or_missing_cells_never_approve():
    errored = replace(full("candidate"), lambda c: c.length == 1024 and c.depth == 1.0 and c.seed == 0, error="OOM")
    metrics, decision = evaluate(GATE, full("baseline") + errored)
    assert decision.verdict == "incomplete" and metrics.errored_cells == 1 and metrics.paired_cells == 11
    assert "1 cells errored" in decision.reasons[0]
    metrics, decision = evaluate(GATE, full("baseline") + full("candidate")[:-1])
    assert decision.verdict == "incomplete" and metrics.missing_cells == 1
    assert evaluate(GATE, [])[1].verdict == "incomplete"


def test_cells_of_other_variants_or_extra_keys_are_ignored():
    stray = [cell("other", 512, 0.5, 0, found=False), cell("candidate", 4096, 0.5, 0, found=False)]
    assert evaluate(GATE, full("baseline") + full("candidate") + stray)[1].verdict == "approve"


def gate_with(**thresholds):
    return parse_gate({
        "name": "g", "baseline": {}, "candidate": {},
        "sweep": {"lengths": [512, 1024], "depths": [0.0, 0.5, 1.0], "seeds": [0, 1], "middle": [0.25, 0.75]},
        "thresholds": thresholds,
    })


def test_mcnemar_and_exact_ci_on_discordant_middle_cells():
    base = full("baseline")
    cand = replace(full("candidate"), lambda c: c.depth == 0.5 and c.length == 512, found=False)
    metrics, _ = evaluate(GATE, base + cand)
    assert metrics.discordant == {"baseline_only": 2, "candidate_only": 0}
    assert metrics.mcnemar_p == pytest.approx(0.5)  # 2 of 2 discordant one way: exact two-sided p = 2 * 0.5**2
    lo, hi = metrics.middle_recall_delta_ci
    assert lo <= metrics.middle_recall_delta == -0.5 < 0.0 < hi  # 2 discordant cells cannot rule out no loss


def test_noninferiority_rejects_only_what_the_data_show():
    noisy_loss = replace(full("candidate"), lambda c: c.depth == 0.5 and c.length == 512 and c.seed == 0, found=False)
    strict = evaluate(GATE, full("baseline") + noisy_loss)[1]
    lenient = evaluate(gate_with(middle_recall={"policy": "noninferiority", "margin": 0.1}), full("baseline") + noisy_loss)[1]
    assert strict.verdict == "reject" and lenient.verdict == "approve"
    assert lenient.checks[0].policy == "noninferiority" and lenient.checks[0].ci_high >= -0.1


def test_noninferiority_needs_a_margin():
    with pytest.raises(Exception, match="thresholds.middle_recall.margin"):
        gate_with(middle_recall={"policy": "noninferiority"})


def test_decode_threshold_catches_a_decode_regression_hidden_in_end_to_end():
    base = [dataclasses.replace(c, prefill_s=9.0, decode_s_per_token=0.1, total_s=10.0) for c in full("baseline")]
    cand = [dataclasses.replace(c, prefill_s=9.0, decode_s_per_token=0.125, total_s=10.25) for c in full("candidate")]
    metrics, decision = evaluate(gate_with(p95_decode_ratio={"max": 1.10}), base + cand)
    assert metrics.p95_latency_ratio == pytest.approx(1.025) and metrics.p95_decode_ratio == pytest.approx(1.25)
    assert decision.verdict == "reject"
    assert [c.name for c in decision.checks if not c.passed] == ["p95_decode_ratio"]


def test_bound_policy_judges_the_upper_end_of_the_bootstrap_interval():
    import random

    rnd = random.Random(1)
    base = [dataclasses.replace(c, total_s=1.0 + rnd.random()) for c in full("baseline")]
    cand = [dataclasses.replace(c, total_s=1.0 + rnd.random()) for c in full("candidate")]
    point = evaluate(gate_with(p95_latency_ratio={"max": 1.5}), base + cand)
    bound = evaluate(gate_with(p95_latency_ratio={"max": 1.5, "policy": "bound"}), base + cand)
    lo, hi = point[0].p95_latency_ratio_ci
    assert lo <= point[0].p95_latency_ratio <= hi
    check = [c for c in bound[1].checks if c.name == "p95_latency_ratio"][0]
    assert check.passed == (hi <= 1.5) and check.policy == "bound"
    assert evaluate(gate_with(p95_latency_ratio={"max": 1.5}), base + cand)[0] == point[0]  # seeded: repeatable


def test_different_prompts_on_the_two_sides_make_the_gate_invalid():
    cand = replace(full("candidate"), lambda c: c.length == 512 and c.depth == 0.0 and c.seed == 0, prompt_sha256="other")
    metrics, decision = evaluate(GATE, full("baseline") + cand)
    assert metrics.prompt_mismatches == 1 and decision.verdict == "invalid"
    assert "different prompts" in decision.reasons[0]


def test_fingerprint_mismatch_is_invalid_and_named():
    _, decision = evaluate(GATE, full("baseline") + full("candidate"), fingerprint_mismatches=["chat_template: abc != def"])
    assert decision.verdict == "invalid" and "chat_template: abc != def" in decision.reasons[0]


def test_effective_length_threshold_rejects_a_candidate_that_loses_the_long_lengths():
    gate = parse_gate({
        "name": "g", "baseline": {}, "candidate": {"kv_cache_dtype": "fp8"},
        "sweep": {"lengths": [512, 1024], "depths": [0.0, 0.5, 1.0], "seeds": [0, 1]},
        "thresholds": {"effective_length_ratio": {"min": 1.0}},
    })
    long_edges_lost = replace(full("candidate"), lambda c: c.length == 1024 and c.depth != 0.5, found=False)
    metrics, decision = evaluate(gate, full("baseline") + long_edges_lost)
    assert metrics.recall_by_length == {"baseline": {"512": 1.0, "1024": 1.0}, "candidate": {"512": 1.0, "1024": pytest.approx(1 / 3)}}
    assert metrics.effective_length == {"baseline": 1024, "candidate": 512} and metrics.effective_length_ratio == 0.5
    assert decision.verdict == "reject"
    assert [c.name for c in decision.checks if not c.passed] == ["effective_length_ratio"]  # middle recall held


def test_a_baseline_without_an_effective_length_has_none_to_lose():
    """YaRN past the trained window: the unscaled baseline holds at no length, the candidate at the shortest."""
    gate = parse_gate({
        "name": "g", "baseline": {}, "candidate": {"kv_cache_dtype": "fp8"},
        "sweep": {"lengths": [512, 1024], "depths": [0.0, 0.5, 1.0], "seeds": [0, 1]},
        "thresholds": {"effective_length_ratio": {"min": 1.0}},
    })
    baseline = replace(full("baseline"), lambda c: c.depth == 0.5, found=False)
    candidate = replace(full("candidate"), lambda c: c.length == 1024 and c.depth == 0.5, found=False)
    metrics, decision = evaluate(gate, baseline + candidate)
    assert metrics.effective_length == {"baseline": None, "candidate": 512} and metrics.effective_length_ratio is None
    check = next(c for c in decision.checks if c.name == "effective_length_ratio")
    assert check.passed and "nothing to lose" in check.detail
    # Neither holding anywhere is no loss either; a candidate that loses the baseline's length still fails.
    metrics, decision = evaluate(gate, baseline + baseline_as_candidate(baseline))
    assert next(c for c in decision.checks if c.name == "effective_length_ratio").passed
    metrics, decision = evaluate(gate, full("baseline") + baseline_as_candidate(baseline))
    assert not next(c for c in decision.checks if c.name == "effective_length_ratio").passed


def baseline_as_candidate(cells):
    return [dataclasses.replace(c, variant="candidate") for c in cells]


def test_position_free_tasks_count_in_their_family_but_not_in_middle_recall():
    gate = parse_gate({
        "name": "g", "baseline": {}, "candidate": {"kv_cache_dtype": "fp8"},
        "sweep": {"lengths": [512], "depths": [0.0, 0.5, 1.0], "tasks": ["niah", "common_words"]},
    })
    def side(variant, words_found):
        cells = [dataclasses.replace(cell(variant, 512, d, 0), task="niah") for d in (0.0, 0.5, 1.0)]
        return cells + [dataclasses.replace(cell(variant, 512, 0.5, 0), task="common_words", found=words_found)]
    metrics, decision = evaluate(gate, side("baseline", True) + side("candidate", False))
    assert metrics.expected_cells == 4 and metrics.middle_cells == 1  # common_words runs once, at the middle
    assert metrics.recall_by_task["common_words"] == {"baseline": 1.0, "candidate": 0.0}
    assert metrics.middle_recall == {"baseline": 1.0, "candidate": 1.0} and decision.verdict == "approve"


def test_prompt_layout_changes_pair_on_content_not_on_identical_tokens():
    gate = parse_gate({
        "name": "g", "baseline": {}, "candidate": {"packing": "edge"},
        "sweep": {"lengths": [512, 1024], "depths": [0.0, 0.5, 1.0], "seeds": [0, 1], "tasks": ["multi_doc_qa"]},
    })
    relabel = lambda cells: [dataclasses.replace(c, task="multi_doc_qa") for c in cells]  # noqa: E731
    candidate = [dataclasses.replace(c, prompt_sha256="other") for c in relabel(full("candidate"))]
    metrics, decision = evaluate(gate, relabel(full("baseline")) + candidate)
    assert metrics.prompt_mismatches == 0 and decision.verdict == "approve"


def _curve(losses):
    return {"edges": [0, 100, 200, 300], "losses": list(losses), "counts": [99, 100, 100], "tokens": 300}


def test_loss_ratio_reads_the_worst_bucket_and_a_missing_curve_blocks_approval():
    gate = parse_gate({
        "name": "g", "baseline": {}, "candidate": {},
        "sweep": {"lengths": [512, 1024], "depths": [0.0, 0.5, 1.0], "seeds": [0, 1], "loss": {"tokens": 300, "buckets": 3}},
        "thresholds": {"loss_ratio": {"max": 1.10}},
    })
    cells = full("baseline") + full("candidate")
    curves = {"baseline": _curve([3.0, 2.5, 2.4]), "candidate": _curve([3.0, 2.6, 3.0])}
    metrics, decision = evaluate(gate, cells, loss_curves=curves)
    assert metrics.loss_ratio == pytest.approx(1.25) and metrics.loss_worst_bucket == 2
    assert decision.verdict == "reject" and "positions 200-300" in next(r for r in decision.reasons if "loss" in r)
    metrics, decision = evaluate(gate, cells, loss_curves={"baseline": curves["baseline"]})
    assert decision.verdict == "incomplete" and "loss curve was not measured" in decision.reasons[0]


def test_timings_an_engine_cannot_verify_cold_never_approve_unless_the_side_assumes_them():
    base = full("baseline")
    unverified = replace(full("candidate"), lambda c: True, cold_check="unverified")
    metrics, decision = evaluate(GATE, base + unverified)
    assert metrics.cold_check == {"baseline": "n/a", "candidate": "unverified"}
    assert decision.verdict == "inconclusive"
    assert decision.reasons[0].startswith("cannot approve: the candidate engine reports no prefix-cache counter")
    assert "cold_timing: assume" in decision.reasons[0]
    assumed = replace(full("candidate"), lambda c: True, cold_check="assumed")
    assert evaluate(GATE, base + assumed)[1].verdict == "approve"
    # A rejection stands: what failed is said, and the unverified timings too.
    slow = replace(unverified, lambda c: True, total_s=3.0)
    _, rejected = evaluate(GATE, base + slow)
    assert rejected.verdict == "reject" and any("prefix-cache counter" in r for r in rejected.reasons)


def test_memory_ratio_and_kv_capacity_come_from_the_engines_bytes_per_token_when_both_report_them():
    # llama.cpp's own log on the embedded model, n_ctx 4096: f16 K and V 90.00 MiB, q8_0 47.81 MiB.
    f16 = {"kv_capacity_tokens": 4096, "kv_capacity_bytes": round(90.00 * 2**20), "kv_slots": 1}
    q8 = {"kv_capacity_tokens": 4096, "kv_capacity_bytes": round(47.81 * 2**20), "kv_slots": 1}
    base = replace(full("baseline", kv_bytes=1000), lambda c: True, kv_source="engine", **f16)
    cand = replace(full("candidate", kv_bytes=600), lambda c: True, kv_source="engine", **q8)  # what /metrics said

    metrics, decision = evaluate(GATE, base + cand)

    assert metrics.memory_ratio == pytest.approx(47.81 / 90.00)
    assert metrics.kv_capacity_ratio == pytest.approx(90.00 / 47.81)
    assert metrics.kv_capacity_tokens == {"baseline": 4096, "candidate": 4096}
    assert metrics.kv_engine["baseline"]["bytes_per_token"] == pytest.approx(90 * 2**20 / 4096)
    assert metrics.kv_engine["baseline"]["sequences"] == 1  # 4 of 1,024 tokens fit in the cells; the engine runs one
    assert metrics.memory_label == "kv_bytes; engine-reported cache bytes per token"
    assert any("KV capacity at equal memory, candidate/baseline: 1.882" in r for r in decision.reasons)


def test_without_engine_figures_kv_capacity_reads_the_cells_and_shows_no_capacity_row():
    metrics, _ = evaluate(GATE, full("baseline", kv_bytes=1000) + full("candidate", kv_bytes=500))
    assert metrics.kv_engine == {} and metrics.kv_capacity_tokens == {}
    assert metrics.kv_capacity_ratio == pytest.approx(2.0) and metrics.memory_ratio == pytest.approx(0.5)
