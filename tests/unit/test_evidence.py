"""The answer-likelihood check, sensitivity at a recall ceiling or floor, misses the gate caused, the no-op guard,
and the recall power the checks state."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pytest_longctx.cli.main import main
from pytest_longctx.gate.decision import evaluate
from pytest_longctx.gate.results import CellResult
from pytest_longctx.gate.spec import parse_gate
from pytest_longctx.gate.statistics import (
    cells_needed,
    min_detectable_drop,
    paired_difference_ci,
    recall_power,
)


def gate(candidate=None, sweep=None, **thresholds):
    return parse_gate({
        "name": "g", "baseline": {}, "candidate": candidate if candidate is not None else {"kv_cache_dtype": "fp8"},
        "sweep": {"lengths": [512, 1024], "depths": [0.25, 0.5, 0.75], "seeds": [0, 1, 2, 3], **(sweep or {})},
        "thresholds": {"p95_latency_ratio": {"max": 2.0}, **thresholds},
    })


def cells(g, variant, *, found=True, logprob=None, kv_bytes=1000, failure=None, answer=None):
    out = []
    for n in g.sweep.lengths:
        for d in g.sweep.depths:
            for s in g.sweep.seeds:
                hit = found(n, d, s) if callable(found) else found
                out.append(CellResult(
                    variant=variant, task="niah", length=n, tokens=n, depth=d, seed=s, found=hit,
                    answer=answer or ("4821" if hit else "17"), expected="4821", prefill_s=0.5, decode_s_per_token=0.01,
                    total_s=1.0, new_tokens=3, kv_bytes=kv_bytes, kv_bytes_analytic=kv_bytes, kv_tokens=n, peak_bytes=None,
                    prompt_sha256="h", failure=None if hit else failure,
                    answer_logprob=None if logprob is None else float(logprob(n, d, s) if callable(logprob) else logprob),
                ))
    return out


def test_a_likelihood_drop_with_identical_recall_rejects_and_an_unchanged_one_approves():
    g = gate(answer_logprob={"max_drop": 0.25})
    rng = np.random.default_rng(0)
    base_lp = {(n, d, s): float(rng.normal(-1.0, 0.5)) for n in (512, 1024) for d in (0.25, 0.5, 0.75) for s in range(4)}
    base = cells(g, "baseline", logprob=lambda *k: base_lp[k], kv_bytes=1000)
    dropped = cells(g, "candidate", logprob=lambda *k: base_lp[k] - 0.8 + float(rng.normal(0, 0.1)), kv_bytes=530)
    metrics, decision = evaluate(g, base + dropped)
    assert metrics.middle_recall == {"baseline": 1.0, "candidate": 1.0}  # found/missed identical
    check = next(c for c in decision.checks if c.name == "answer_logprob_delta")
    assert decision.verdict == "reject" and not check.passed
    assert metrics.answer_logprob_wilcoxon_p < 0.01 and metrics.answer_logprob_delta == pytest.approx(-0.8, abs=0.1)
    assert check.ci_high < -0.25
    unchanged = cells(g, "candidate", logprob=lambda *k: base_lp[k] + float(rng.normal(0, 0.1)), kv_bytes=530)
    metrics, decision = evaluate(g, base + unchanged)
    check = next(c for c in decision.checks if c.name == "answer_logprob_delta")
    assert decision.verdict == "approve" and check.passed
    assert check.ci_low <= metrics.answer_logprob_delta <= check.ci_high and check.ci_low < 0 < check.ci_high
    bound = evaluate(gate(answer_logprob={"max_drop": 0.25, "policy": "bound"}), base + unchanged)[1]
    assert next(c for c in bound.checks if c.name == "answer_logprob_delta").policy == "bound"


def test_an_unmeasured_likelihood_blocks_only_when_a_threshold_asks_for_it():
    g = gate()
    _, decision = evaluate(g, cells(g, "baseline") + cells(g, "candidate", kv_bytes=530))
    check = next(c for c in decision.checks if c.name == "answer_logprob_delta")
    assert decision.verdict == "approve" and check.policy == "not measured" and "not measured on baseline and candidate" in check.detail
    served = gate(answer_logprob={"max_drop": 0.5})
    _, decision = evaluate(served, cells(served, "baseline", logprob=-1.0) + cells(served, "candidate", kv_bytes=530))
    assert decision.verdict == "incomplete"
    assert "answer log-probability, which was not measured on candidate" in decision.reasons[0]


def test_a_baseline_at_the_ceiling_is_named_and_require_sensitivity_makes_it_incomplete():
    g = gate()
    both = cells(g, "baseline") + cells(g, "candidate", kv_bytes=530)
    _, decision = evaluate(g, both)
    assert decision.verdict == "approve"
    assert ("NOTE niah at 1024: baseline 1.00 in every cell; a recall drop cannot show here, "
            "and the answer likelihood was not measured") in decision.reasons
    strict = gate(sweep={"require_sensitivity": True})
    _, decision = evaluate(strict, both)
    assert decision.verdict == "incomplete" and "sweep.require_sensitivity" in decision.reasons[0]
    # One length where the baseline sometimes misses: the sweep can show a change there, so it is not blocked.
    mixed = cells(strict, "baseline", found=lambda n, d, s: n == 512 or s % 2 == 0)
    _, decision = evaluate(strict, mixed + cells(strict, "candidate", found=lambda n, d, s: n == 512 or s % 2 == 0, kv_bytes=530))
    assert decision.verdict == "approve" and any(r.startswith("NOTE niah at 512: baseline 1.00") for r in decision.reasons)


def test_misses_cut_off_by_max_new_tokens_are_named_as_a_configuration_problem():
    g = gate(sweep={"max_new_tokens": 16})
    base = cells(g, "baseline", found=lambda n, d, s: s > 1 or n == 512, failure="truncated")  # 6 misses
    base = [dataclasses.replace(c, failure="wrong_value") if not c.found and c.depth == 0.25 else c for c in base]  # 2 of them not cut off
    _, decision = evaluate(g, base + cells(g, "candidate", kv_bytes=530))
    assert "CONFIG 4 of 6 baseline misses were truncated at max_new_tokens=16: raise sweep.max_new_tokens" in decision.reasons


def test_a_candidate_change_that_changed_nothing_is_invalid():
    rope = {"rope_parameters": {"rope_type": "linear", "factor": 2.0}}
    g = gate(candidate=rope)
    same = cells(g, "baseline", logprob=-1.25) + cells(g, "candidate", logprob=-1.25)
    _, decision = evaluate(g, same)
    assert decision.verdict == "invalid"
    assert decision.reasons[0] == ("candidate `rope_parameters` had no effect: identical answers and answer "
                                   "log-probabilities in every cell")
    moved = cells(g, "baseline", logprob=-1.25) + cells(g, "candidate", logprob=-1.2)
    assert evaluate(g, moved)[1].verdict == "approve"  # same answers, yet the computation changed
    # Without log-probabilities the guard reads answers and KV bytes only, and says it is weaker.
    _, decision = evaluate(g, cells(g, "baseline") + cells(g, "candidate"))
    assert decision.verdict == "invalid" and "guard is weaker" in decision.reasons[0]
    # Different KV bytes (an FP8 cache that did store less) or an unchanged candidate: no guard.
    fp8 = gate()
    assert evaluate(fp8, cells(fp8, "baseline") + cells(fp8, "candidate", kv_bytes=530))[1].verdict == "approve"
    aa = gate(candidate={})
    assert evaluate(aa, cells(aa, "baseline") + cells(aa, "candidate"))[1].verdict == "approve"


def test_recall_power_matches_the_exact_interval_and_grows_with_cells():
    # The closed form the power uses is the interval paired_difference_ci computes.
    from pytest_longctx.gate.statistics import _rejecting_losses

    rejecting = _rejecting_losses(40, 40, 0.95, 0.0)
    assert [b for b in range(1, 41) if paired_difference_ci(b, 0, 40, 0.95)[1] < 0] == rejecting and rejecting[0] == 6
    margin = _rejecting_losses(40, 40, 0.95, -0.1)
    assert [b for b in range(1, 41) if paired_difference_ci(b, 0, 40, 0.95)[1] < -0.1] == margin
    assert recall_power(200, 0.9, 0.10) > recall_power(50, 0.9, 0.10) > recall_power(12, 0.9, 0.10)
    small, large = min_detectable_drop(18, 0.61), min_detectable_drop(180, 0.61)
    assert large < small and recall_power(180, 0.61, large) >= 0.8
    assert min_detectable_drop(4, 0.5) is None  # 2 cells at risk cannot show any drop
    needed = cells_needed(0.05, 0.61)
    assert recall_power(needed, 0.61, 0.05) >= 0.8 > recall_power(needed // 2, 0.61, 0.05)


def test_every_recall_check_states_its_detectable_drop():
    g = gate()
    baseline = cells(g, "baseline", found=lambda n, d, s: s != 0)
    _, decision = evaluate(g, baseline + cells(g, "candidate", found=lambda n, d, s: s != 0, kv_bytes=530))
    recall = next(c for c in decision.checks if c.name == "middle_recall_delta")
    assert "with 24 cells at baseline 0.75 its interval shows a drop of" in recall.detail and "80 % power" in recall.detail


def test_power_command_answers_the_planning_question(capsys):
    assert main(["power", "--cells", "18", "--baseline-recall", "0.61", "--drop", "0.05"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("with 18 cells at recall 0.61 (alpha 0.05) the smallest drop it shows with 80% power is 0.")
    assert out[1].startswith("to see a 5.0-point drop you need about ") and "x the seeds you run now" in out[1]
    assert main(["power", "--cells", "18", "--baseline-recall", "0.3", "--drop", "0.5"]) == 2
    with pytest.raises(SystemExit):
        main(["power", "--cells", "0", "--baseline-recall", "0.5"])
    with pytest.raises(SystemExit):
        main(["power", "--cells", "10", "--baseline-recall", "1.5"])


def test_the_report_shows_the_log_prob_change_beside_the_recall_heatmaps_and_json_cells_carry_it(tmp_path):
    from pytest_longctx.gate.results import GateResults, load_results, save_results
    from pytest_longctx.output.report import render_html

    g = gate()
    both = cells(g, "baseline", logprob=-1.0) + cells(g, "candidate", logprob=-1.5, kv_bytes=530)
    metrics, decision = evaluate(g, both)
    results = GateResults(gate=g.to_dict(), decision=decision, metrics=metrics, cells=tuple(both))
    html = render_html(results)
    assert "answer log-prob change (candidate − baseline), nats" in html and ">-0.50<" in html
    save_results(results, tmp_path / "r.json")
    assert {c.answer_logprob for c in load_results(tmp_path / "r.json").cells} == {-1.0, -1.5}
