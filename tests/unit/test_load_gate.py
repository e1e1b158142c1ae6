"""The load sweep in the gate: `sweep.load` and its thresholds validated, its levels decided, recorded and reported."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from pytest_longctx.gate.decision import evaluate
from pytest_longctx.gate.load import LoadLevel
from pytest_longctx.gate.load_decision import apply_load
from pytest_longctx.gate.results import SCHEMA_VERSION, CellResult, GateResults, ResultsError, load_results, save_results
from pytest_longctx.gate.spec import GateError, GateSpec, parse_gate

DATA = Path(__file__).parents[1] / "data"
LAUNCH = {"command": "{python} -m engine --port {port}"}
GATE: dict[str, Any] = {
    "name": "load",
    "model": "embedded:smollm2-135m-instruct",
    "baseline": {"backend": "openai", "launch": LAUNCH},
    "candidate": {"backend": "openai", "launch": {"command": "{python} -m engine --port {port} --type_k 8"}},
    "sweep": {"lengths": [256], "depths": [0.5], "seeds": [0],
              "load": {"concurrency": [1, 4], "requests": 8, "length": 256, "slo": {"ttft_s": 1.0, "tpot_s": 0.1}}},
    "thresholds": {"goodput_ratio": {"min": 0.9}, "throughput_ratio": {"min": 0.8}},
}


def gate(**edits: Any) -> GateSpec:
    data = copy.deepcopy(GATE)
    for dotted, value in edits.items():
        *path, last = dotted.split("__")
        node = data
        for key in path:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return parse_gate(data, source="gates/x.yaml")


@pytest.mark.parametrize("edits,key,fix", [
    ({"sweep__load__slo": {"ttft_s": 1.0}}, "sweep.load.slo.tpot_s", "give both SLOs"),
    ({"sweep__load__concurrency": [4, 1]}, "sweep.load.concurrency", "lowest to highest"),
    ({"sweep__load__concurrency": [1, 1]}, "sweep.load.concurrency", "list each value once"),
    ({"sweep__load__concurrency": [1, 512]}, "sweep.load.concurrency", "<= 256"),
    ({"sweep__load__requests": 2}, "sweep.load.requests", "at least as many requests as the highest concurrency"),
    ({"sweep__load__requests": 1000, "sweep__load__concurrency": [1, 2, 4, 8, 16]}, "sweep.load", "at most 4,096 per side"),
    ({"sweep__load__request_timeout_s": 1e9}, "sweep.load.request_timeout_s", r"\[0.001, 3600.0\]"),
    ({"sweep__load__time_budget_s": 0}, "sweep.load.time_budget_s", r"\[0.001, 86400.0\]"),
    ({"sweep__load__max_new_tokens": 1}, "sweep.load.max_new_tokens", ">= 2"),
    ({"sweep__load__rate": 3}, "sweep.load.rate", "use one of: concurrency"),
    ({"sweep__load": None}, "thresholds.goodput_ratio", "add sweep.load"),
    ({"candidate": {"backend": "openai", "base_url": "http://10.0.0.5:8000"}}, "sweep.load", "give candidate launch"),
])
def test_a_bad_load_sweep_names_the_file_the_key_and_the_fix(edits, key, fix):
    with pytest.raises(GateError, match=rf"gates/x.yaml: key '{key}': .*Fix: .*{fix}"):
        gate(**edits)


def test_the_load_spec_survives_the_results_record():
    spec = gate()
    assert GateSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).sweep.load == spec.sweep.load


def level(variant: str, concurrency: int, *, goodput: float = 2.0, throughput: float = 100.0, errors: int = 0) -> LoadLevel:
    return LoadLevel(variant=variant, concurrency=concurrency, requests=8, completed=8 - errors, errors=errors, good=int(goodput * 4),
                     output_tokens=int(throughput * 4), wall_s=4.0, throughput_tok_s=throughput, goodput_rps=goodput,
                     ttft_p50_s=0.2 * concurrency, ttft_p95_s=0.3 * concurrency, tpot_p50_s=0.02, tpot_p95_s=0.03,
                     error_samples=("HTTP 503: busy",) if errors else ())


def cells(spec: GateSpec) -> list[CellResult]:
    return [CellResult(variant=side, task="niah", length=256, tokens=256, depth=0.5, seed=0, found=True, answer="x", expected="x",
                       prefill_s=0.1, decode_s_per_token=0.01, total_s=0.2, new_tokens=3, kv_bytes=1000 if side == "baseline" else 600,
                       kv_bytes_analytic=1000, kv_tokens=256, peak_bytes=None, prompt_sha256="h", kv_source="analytic")
            for side in ("baseline", "candidate")]


def decided(spec: GateSpec, levels: list[LoadLevel]) -> tuple[Any, Any]:
    metrics, decision = evaluate(spec, cells(spec))
    assert decision.verdict == "approve", decision.reasons  # the cells alone approve: what follows is the load sweep's doing
    return apply_load(spec, metrics, decision, levels)


def test_ratios_at_or_above_the_minimums_approve_and_the_lowest_level_is_judged():
    spec = gate()
    levels = [level("baseline", 1), level("candidate", 1, goodput=2.0, throughput=95.0),
              level("baseline", 4, goodput=4.0, throughput=200.0), level("candidate", 4, goodput=3.8, throughput=190.0)]
    metrics, decision = decided(spec, levels)
    assert decision.verdict == "approve", decision.reasons
    assert metrics.goodput_ratio == pytest.approx(0.95) and metrics.throughput_ratio == pytest.approx(0.95)
    assert metrics.load_ratios == {"1": {"goodput_ratio": 1.0, "throughput_ratio": 0.95},
                                   "4": {"goodput_ratio": pytest.approx(0.95), "throughput_ratio": pytest.approx(0.95)}}
    goodput = next(c for c in decision.checks if c.name == "goodput_ratio")
    assert goodput.passed and "at concurrency 4" in goodput.detail and goodput.threshold == 0.9


def test_a_candidate_that_falls_behind_at_one_level_is_rejected():
    spec = gate()
    levels = [level("baseline", 1), level("candidate", 1), level("baseline", 4, goodput=4.0), level("candidate", 4, goodput=2.0)]
    metrics, decision = decided(spec, levels)
    assert decision.verdict == "reject"
    assert metrics.goodput_ratio == pytest.approx(0.5)
    assert any(r.startswith("FAIL load goodput") and "concurrency 4" in r for r in decision.reasons)


def test_an_errored_or_missing_level_never_approves():
    spec = gate()
    good = [level("baseline", 1), level("candidate", 1), level("baseline", 4)]
    _, decision = decided(spec, [*good, level("candidate", 4, errors=1)])
    assert decision.verdict == "incomplete"
    assert "1 of 8 load requests errored at concurrency 4 on candidate (first: HTTP 503: busy)" in decision.reasons[0]
    _, decision = decided(spec, good)
    assert decision.verdict == "incomplete" and "did not run at concurrency 4 on candidate" in decision.reasons[0]


def test_slos_no_baseline_request_met_leave_goodput_undecided_not_passed():
    spec = gate()
    levels = [level(side, c, goodput=0.0) for side in ("baseline", "candidate") for c in (1, 4)]
    _, decision = decided(spec, levels)
    assert decision.verdict == "incomplete" and "loosen sweep.load.slo" in decision.reasons[0]


def test_without_thresholds_the_ratios_are_shown_not_judged():
    spec = gate(thresholds={})
    levels = [level("baseline", c) for c in (1, 4)] + [level("candidate", c, goodput=0.5) for c in (1, 4)]
    metrics, decision = decided(spec, levels)
    assert decision.verdict == "approve" and metrics.goodput_ratio == pytest.approx(0.25)
    assert any(r.startswith("NOTE load goodput") and "not part of the rule" in r for r in decision.reasons)


def test_in_process_sides_say_the_load_sweep_does_not_apply():
    spec = gate(baseline={"kv_cache_dtype": "auto"}, candidate={"kv_cache_dtype": "fp8"})
    metrics, decision = evaluate(spec, [])
    metrics, after = apply_load(spec, metrics, decision, [])
    assert after.verdict == decision.verdict  # neither faked nor held against the candidate
    assert metrics.load_note is not None and "in-process" in metrics.load_note and metrics.goodput_ratio is None
    assert any(r.startswith("NOTE sweep.load does not apply") for r in after.reasons)


def test_results_record_the_levels_and_read_back(tmp_path):
    spec = gate()
    levels = [level(side, c) for c in (1, 4) for side in ("baseline", "candidate")]
    metrics, decision = decided(spec, levels)
    results = GateResults(gate=spec.to_dict(), decision=decision, metrics=metrics, cells=tuple(cells(spec)), load_levels=tuple(levels))
    save_results(results, tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION == 4 and len(data["load_levels"]) == 4
    read = load_results(tmp_path / "r.json")
    assert (read.load_levels, read.metrics, read.decision) == (results.load_levels, results.metrics, results.decision)
    data["load_levels"][0]["ttft_p99_s"] = 1.0
    with pytest.raises(ResultsError, match=r"load_levels\[0\]: unknown keys ttft_p99_s"):
        GateResults.from_dict(data)


def test_a_recorded_load_decision_is_recomputed_from_its_levels():
    from pytest_longctx.gate.recheck import recompute

    spec = gate()
    levels = [level("baseline", 1), level("candidate", 1), level("baseline", 4, goodput=4.0), level("candidate", 4, goodput=2.0)]
    metrics, decision = decided(spec, levels)
    results = GateResults(gate=json.loads(json.dumps(spec.to_dict())), decision=decision, metrics=metrics, cells=tuple(cells(spec)),
                          load_levels=tuple(levels))
    assert recompute(results)[1] == []
    edited = dataclasses.replace(results, load_levels=(*levels[:3], dataclasses.replace(levels[3], goodput_rps=4.0)))
    fresh, disagree = recompute(edited)
    assert fresh.decision.verdict == "approve" and "decision.verdict" in disagree and "metrics.goodput_ratio" in disagree


def test_version_2_records_still_read_without_a_load_sweep():
    old = json.loads((DATA / "fp8-results.json").read_text())
    # Written back as version 2: without the load sweep (3) and the served engines' keys (4).
    del old["load_levels"]
    for key in ("goodput_ratio", "throughput_ratio", "load_ratios", "load_note", "cold_check", "kv_engine", "kv_capacity_tokens",
                "kv_capacity_ratio"):
        del old["metrics"][key]
    for cell in old["cells"]:
        for key in ("cold_check", "kv_capacity_tokens", "kv_capacity_bytes", "kv_slots"):
            del cell[key]
    old["schema_version"] = 2
    results = GateResults.from_dict(old)
    assert results.load_levels == () and results.metrics.goodput_ratio is None and results.metrics.load_ratios == {}
    old["metrics"]["goodput_ratio"] = 1.0  # a version 2 record never had it: a stray key is still refused
    with pytest.raises(ResultsError, match="unknown keys goodput_ratio"):
        GateResults.from_dict(old)


def test_the_report_charts_p95_ttft_and_goodput_against_concurrency():
    from pytest_longctx.output.report import render_html

    spec = gate()
    levels = [level("baseline", 1), level("candidate", 1), level("baseline", 4, goodput=4.0), level("candidate", 4, goodput=1.0)]
    metrics, decision = decided(spec, levels)
    page = render_html(GateResults(gate=spec.to_dict(), decision=decision, metrics=metrics, cells=tuple(cells(spec)),
                                   load_levels=tuple(levels)))
    section = page[page.index('<section id="load">'):]
    section = section[:section.index("</section>")]
    assert "p95 time to first token (s) by concurrency" in section
    assert "goodput (requests within both SLOs) (req/s) by concurrency" in section
    assert section.count('<path class="series"') == 4  # two panels, a line per side
    assert "candidate at concurrency 4: 1 req/s" in section and "baseline at concurrency 4: 1.2 s" in section
    assert section.count("<tr><td class=\"num\">") == 4  # a table row per side and level


def test_the_report_says_plainly_when_the_load_sweep_does_not_apply():
    from pytest_longctx.output.report import render_html

    spec = gate(baseline={"kv_cache_dtype": "auto"}, candidate={"kv_cache_dtype": "fp8"})
    metrics, decision = evaluate(spec, [])
    metrics, decision = apply_load(spec, metrics, decision, [])
    page = render_html(GateResults(gate=spec.to_dict(), decision=decision, metrics=dataclasses.replace(metrics), cells=()))
    section = page[page.index('<section id="load">'):]
    assert "does not apply" in section[:section.index("</section>")] and "<svg" not in section[:section.index("</section>")]


def test_load_prompts_are_the_length_asked_and_share_no_prefix_beyond_the_template(smollm_tokenizer):
    from pytest_longctx.gate.load_run import load_prompts

    spec = gate(sweep__load__requests=4, sweep__load__concurrency=[1, 2])
    prompts = load_prompts(smollm_tokenizer, spec, spec.baseline)
    assert len(prompts) == 4 and all(len(p) == 256 for p in prompts)
    assert len({tuple(p) for p in prompts}) == 4

    def shared(a: list[int], b: list[int]) -> int:
        return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))

    template = max(shared(a, b) for i, a in enumerate(prompts) for b in prompts[i + 1:])
    # What they share is the chat template and the instructions before the haystack: a small head of the prompt.
    assert template < 64, smollm_tokenizer.decode(prompts[0][:template])
