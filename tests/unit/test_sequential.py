"""Sequential gates: looks of seeds, intervals at a corrected error rate, early stopping, and `inconclusive`."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from pytest_longctx.gate.decision import compute_metrics, decide, evaluate
from pytest_longctx.gate.results import (
    CellResult,
    Check,
    GateResults,
    load_results,
    save_results,
)
from pytest_longctx.gate.sequential import judge, look_confidence, stop_reason
from pytest_longctx.gate.spec import GateError, parse_gate
from pytest_longctx.gate.statistics import mean_delta_ci_rows, paired_difference_ci
from pytest_longctx.output.report import render_html
from pytest_longctx.output.summary import junit_properties, markdown, terminal_lines

JUDGE = {"compute_metrics": compute_metrics, "decide": decide}


def sequential_gate(**thresholds):
    return parse_gate({
        "name": "seq", "baseline": {}, "candidate": {},
        "sweep": {"lengths": [512, 1024], "depths": [0.25, 0.5, 0.75], "sequential": {"batch": 2, "max_seeds": 6}},
        "thresholds": {"p95_latency_ratio": {"max": 1.5}, **thresholds},
    })


def cell(variant, length, depth, seed, *, found=True, logprob=-1.0, total_s=1.0):
    return CellResult(
        variant=variant, task="niah", length=length, tokens=length, depth=depth, seed=seed, found=found,
        answer="x" if found else "y", expected="x", prefill_s=total_s / 2, decode_s_per_token=0.01, total_s=total_s,
        new_tokens=3, kv_bytes=1000, kv_bytes_analytic=1000, kv_tokens=length, peak_bytes=None, prompt_sha256="h",
        answer_logprob=logprob,
    )


def sweep_cells(gate, variant, seeds, **kw):
    return [cell(variant, n, d, s, **kw) for n in gate.sweep.lengths for d in gate.sweep.depths for s in seeds]


def test_sequential_takes_the_seeds_and_refuses_them_given_twice():
    gate = sequential_gate()
    assert gate.sweep.seeds == tuple(range(6)) and gate.sweep.sequential.planned_looks == 3
    assert gate.sweep.sequential.seeds_through(2) == (0, 1, 2, 3)
    raw = {"name": "seq", "baseline": {}, "candidate": {},
           "sweep": {"lengths": [512], "depths": [0.5], "seeds": [0, 1], "sequential": {"batch": 2, "max_seeds": 6}}}
    with pytest.raises(GateError, match=r"key 'sweep.seeds'.*cannot be given with sweep.sequential.*Fix: drop sweep.seeds"):
        parse_gate(raw, source="g.yaml")
    raw["sweep"] = {"lengths": [512], "depths": [0.5], "sequential": {"batch": 8, "max_seeds": 6}}
    with pytest.raises(GateError, match=r"sweep.sequential.batch"):
        parse_gate(raw, source="g.yaml")


def test_an_unchanged_candidate_is_decided_at_the_first_look_and_later_cells_are_not_needed():
    gate = sequential_gate()
    first = sweep_cells(gate, "baseline", (0, 1)) + sweep_cells(gate, "candidate", (0, 1))
    metrics, decision = evaluate(gate, first)  # seeds 2-5 never ran: not incomplete
    assert decision.verdict == "approve", decision.reasons
    assert (metrics.looks, metrics.planned_looks, metrics.seeds_used, metrics.stopped_early) == (1, 3, (0, 1), True)
    assert decision.reasons[0].startswith("verdict decided after look 1 of 3 (seeds 0-1)")
    assert stop_reason(gate, first, 2, **JUDGE) == "verdict decided after look 1 (seeds 0-1): approve"
    assert stop_reason(gate, first, 1, **JUDGE) is None


def test_an_unfinished_earlier_look_is_incomplete_and_does_not_stop_the_run():
    gate = sequential_gate()
    partial = sweep_cells(gate, "baseline", (0, 1)) + sweep_cells(gate, "candidate", (0,))
    assert evaluate(gate, partial)[1].verdict == "incomplete"
    assert stop_reason(gate, partial, 2, **JUDGE) is None  # an xdist worker sees only its share: it must not stop


def test_a_clear_regression_rejects_early():
    gate = sequential_gate(answer_logprob={"max_drop": 0.2})
    rng = np.random.default_rng(3)
    base = sweep_cells(gate, "baseline", range(6))
    cand = [dataclasses.replace(c, variant="candidate", answer_logprob=-2.0 + float(rng.normal(0, 0.1))) for c in base]
    metrics, decision = evaluate(gate, base + cand)
    assert decision.verdict == "reject" and metrics.looks == 1
    check = next(c for c in decision.checks if c.name == "answer_logprob_delta")
    assert check.state == "reject" and check.ci_high < -0.2


def noisy(gate, shift, rng):
    base = [dataclasses.replace(c, answer_logprob=float(rng.normal(-1, 1))) for c in sweep_cells(gate, "baseline", range(6))]
    cand = [dataclasses.replace(c, variant="candidate", answer_logprob=c.answer_logprob + shift + float(rng.normal(0, 0.6))) for c in base]
    return base + cand


def test_an_effect_near_the_threshold_ends_inconclusive_with_the_seeds_it_would_take():
    gate = sequential_gate(answer_logprob={"max_drop": 0.3})
    metrics, decision = evaluate(gate, noisy(gate, -0.3, np.random.default_rng(0)))
    assert decision.verdict == "inconclusive" and metrics.looks == 3 and metrics.stopped_early is False
    assert decision.reasons[0].startswith("inconclusive: no decision after all 3 looks (seeds 0-5")
    open_reason = next(r for r in decision.reasons if r.startswith("OPEN answer_logprob_delta: effect"))
    assert "more seeds" in open_reason or "no number of seeds" in open_reason


def test_inconclusive_reads_as_its_own_word_in_every_output(tmp_path):
    gate = sequential_gate(answer_logprob={"max_drop": 0.3})
    metrics, decision = evaluate(gate, noisy(gate, -0.3, np.random.default_rng(0)))
    results = GateResults(gate=gate.to_dict(), decision=decision, metrics=metrics, cells=())
    save_results(results, tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["decision"]["verdict"] == "inconclusive" and data["metrics"]["looks"] == 3
    assert data["metrics"]["seeds_used"] == [0, 1, 2, 3, 4, 5] and data["metrics"]["stopped_early"] is False
    assert load_results(tmp_path / "r.json").decision == decision
    lines = terminal_lines(results)
    assert lines[0].startswith("gate seq: INCONCLUSIVE (") and "look 3 of 3" in lines[0]
    assert any("UNDECIDED" in line and "answer log-probability" in line for line in lines)
    md = markdown(results)
    assert "**INCONCLUSIVE**" in md and "❔ UNDECIDED" in md
    props = dict(junit_properties(results))
    assert props["longctx.seq.verdict"] == "inconclusive"
    assert props["longctx.seq.check.answer_logprob_delta.state"] == "undecided"
    assert props["longctx.seq.metric.looks"] == "3"
    html = render_html(results)
    assert ">inconclusive<" in html and "undecided" in html


def test_judge_reads_the_interval_against_the_acceptable_region():
    def check(lo, hi, comparison=">=", threshold=0.0):
        return judge(Check("middle_recall_delta", (lo + hi) / 2, threshold, comparison, True, "d", lo, hi, "strict"))

    assert check(0.0, 0.0).state == "approve"
    assert check(-0.2, -0.01).state == "reject" and not check(-0.2, -0.01).passed
    assert check(-0.1, 0.1).state == "undecided"
    assert judge(Check("p95_latency_ratio", 1.2, 1.1, "<=", False, "d", 1.15, 1.3, "point")).state == "reject"
    assert judge(Check("p95_latency_ratio", 1.0, 1.1, "<=", True, "d", 0.9, 1.05, "point")).state == "approve"
    assert judge(Check("memory_ratio", 1.2, 1.05, "<=", False, "d")).state == "reject"  # deterministic: its value decides


def simulate(gates, *, looks, batch, cells_per_seed, alpha, corrected, seed=0):
    """A/A gates: both sides drawn from one distribution; returns how many the sequential rule rejected.

    Two interval checks, both with the unchanged candidate exactly on their threshold (recall strict >= 0,
    answer log-prob max_drop 0): the hardest case for the error rate.
    """
    rng = np.random.default_rng(seed)
    n_seeds = looks * batch
    base_found = rng.random((gates, n_seeds * cells_per_seed)) < 0.7
    cand_found = rng.random((gates, n_seeds * cells_per_seed)) < 0.7
    deltas = rng.normal(0, 1, (gates, n_seeds * cells_per_seed)) - rng.normal(0, 1, (gates, n_seeds * cells_per_seed))
    confidence = 1 - 2 * alpha / (looks * 2) if corrected else 1 - 2 * alpha / 2
    rejected = np.zeros(gates, dtype=bool)
    decided = np.zeros(gates, dtype=bool)
    for look in range(1, looks + 1):
        n = look * batch * cells_per_seed
        open_gates = np.flatnonzero(~decided)
        lows, highs = np.zeros(gates), np.zeros(gates)
        lows[open_gates], highs[open_gates] = mean_delta_ci_rows(deltas[open_gates, :n], confidence)
        for g in open_gates:
            b_only = int(np.sum(base_found[g, :n] & ~cand_found[g, :n]))
            c_only = int(np.sum(cand_found[g, :n] & ~base_found[g, :n]))
            lo, hi = paired_difference_ci(b_only, c_only, n, confidence)
            states = {judge(Check("middle_recall_delta", (c_only - b_only) / n, 0.0, ">=", True, "", lo, hi, "strict")).state,
                      judge(Check("answer_logprob_delta", float(deltas[g, :n].mean()), 0.0, ">=", True, "",
                                  float(lows[g]), float(highs[g]), "point")).state}
            if "reject" in states:
                rejected[g] = decided[g] = True
            elif states == {"approve"}:
                decided[g] = True
    return int(rejected.sum())


def test_the_false_reject_rate_over_repeated_looks_stays_within_alpha():
    gates, alpha = 2000, 0.05
    gate = parse_gate({"name": "s", "baseline": {}, "candidate": {},
                       "sweep": {"lengths": [512], "depths": [0.5], "sequential": {"batch": 2, "max_seeds": 6, "alpha": alpha}},
                       "thresholds": {"answer_logprob": {"max_drop": 0.0}, "p95_latency_ratio": {"max": 1.1}}})
    looks = gate.sweep.sequential.planned_looks
    # The gate splits alpha over looks x its interval checks (recall, answer log-prob, latency); the simulation
    # runs two of them with half the budget each, the strictest reading of that split.
    assert look_confidence(gate) == pytest.approx(1 - 2 * alpha / (looks * 3))
    corrected = simulate(gates, looks=looks, batch=2, cells_per_seed=6, alpha=alpha, corrected=True)
    assert corrected / gates <= alpha, f"false-reject rate {corrected / gates:.4f} above alpha {alpha}"
    # The same looks at an uncorrected level do exceed alpha: the simulation can tell the difference.
    naive = simulate(400, looks=looks, batch=2, cells_per_seed=6, alpha=alpha, corrected=False, seed=1)
    assert naive / 400 > alpha
    print(f"false-reject rate {corrected / gates:.4f} (uncorrected {naive / 400:.4f}) vs alpha {alpha}")
