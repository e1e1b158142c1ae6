"""The HTML report: banner, metrics, recall heatmaps, escaping of model output, self-containment."""

from __future__ import annotations

import dataclasses
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest

from pytest_longctx.gate.results import CellResult, Check, Decision, GateResults, Metrics, load_results
from pytest_longctx.output.charts import latency_charts, latency_rows, loss_chart, percentile
from pytest_longctx.output.colours import diverging_colour, sequential_colour
from pytest_longctx.output.heatmaps import heatmap_panels, recall_grid
from pytest_longctx.output.report import fmt_bytes, render_html, write_html
from pytest_longctx.output.tables import environment_rows, failure_rows, length_rows, timed_runs

# The default gate's real run on 2 CPU cores (schema 2: tests/data/regenerate.py).
FP8_RESULTS = Path(__file__).parents[1] / "data" / "fp8-results.json"
# A made-up, schema-exact run of six task families with a YaRN candidate and a loss curve (tests/data/families_results.py)
FAMILIES_RESULTS = Path(__file__).parents[1] / "data" / "families-results.json"

LENGTHS = (1024, 2048)
DEPTHS = (0.0, 0.5, 1.0)
SEEDS = (0, 1)
INJECTION = "<script>alert(1)</script>"
BACKEND_ERROR = "CUDA out of memory <tried to allocate 2.00 GiB> & gave up"
REASONS = (
    "middle-band recall delta -0.250 is below the minimum 0.00",
    "p95 latency ratio 1.32 exceeds the maximum 1.10 & must not",
)


def _found(variant: str, length: int, depth: float, seed: int) -> bool:
    if variant == "baseline":
        return not (length == 2048 and depth == 0.5 and seed == 1)  # 1 of 2 found at (2048, 0.5)
    if length == 2048 and depth == 1.0:
        return False  # 0 of 2
    return not (length == 1024 and depth == 0.5 and seed == 0)  # 1 of 2 found at (1024, 0.5)


def _errored(variant: str, length: int, depth: float, seed: int) -> bool:
    return variant == "candidate" and length == 1024 and depth == 0.0  # every seed errored


def make_cells() -> tuple[CellResult, ...]:
    """2 variants x 2 lengths x 3 depths x 2 seeds, with misses, one injected answer and one errored cell."""
    cells = []
    for variant in ("baseline", "candidate"):
        for length in LENGTHS:
            for depth in DEPTHS:
                for seed in SEEDS:
                    errored = _errored(variant, length, depth, seed)
                    found = not errored and _found(variant, length, depth, seed)
                    answer = "The code is 4821." if found else "I could not find it."
                    if variant == "candidate" and length == 2048 and depth == 1.0 and seed == 0:
                        answer = INJECTION
                    cells.append(
                        CellResult(
                            variant=variant,
                            task="niah",
                            length=length,
                            tokens=length - 3,
                            depth=depth,
                            seed=seed,
                            found=found,
                            answer="" if errored else answer,
                            expected="4821",
                            prefill_s=None if errored else 0.05 * length / 1024,
                            decode_s_per_token=None if errored else 0.012,
                            total_s=None if errored else 0.4,
                            new_tokens=0 if errored else 8,
                            kv_bytes=None if errored else length * (1 if variant == "candidate" else 2) * 4096,
                            kv_bytes_analytic=length * (1 if variant == "candidate" else 2) * 4096,
                            kv_tokens=None if errored else length,
                            peak_bytes=None,
                            prompt_sha256="0" * 64,
                            error=BACKEND_ERROR if errored else None,
                        )
                    )
    return tuple(cells)


def make_results(*, verdict: str = "reject", cells: tuple[CellResult, ...] | None = None) -> GateResults:
    gate = {
        "name": "fp8-kv",
        "path": "gates/fp8.yaml",
        "model": {"ref": "embedded:smollm2-135m-instruct", "dtype": "auto", "device": "auto", "trust_remote_code": False},
        "baseline": {"name": "baseline", "kv_cache_dtype": "auto", "kv_scale": "token_head"},
        "candidate": {"name": "candidate", "kv_cache_dtype": "fp8", "kv_scale": "token_head"},
        "sweep": {
            "lengths": list(LENGTHS),
            "depths": list(DEPTHS),
            "seeds": list(SEEDS),
            "middle": [0.25, 0.75],
            "max_new_tokens": 24,
            "tasks": ["niah"],
        },
        "thresholds": {"middle_recall_min_delta": 0.0, "p95_latency_ratio_max": 1.10, "memory_ratio_max": 1.05, "memory_source": "auto"},
        "report": None,
        "results": None,
        "sha256": "ab" * 32,
    }
    checks = (
        Check("middle_recall_delta", -0.25, 0.0, ">=", False, "candidate 0.50 vs baseline 0.75", -0.5, 0.1),
        Check("p95_latency_ratio", 1.32, 1.10, "<=", False, "0.528 s vs 0.400 s"),
        Check("memory_ratio", None, 1.05, "<=", False, "no memory measured"),
    )
    metrics = Metrics(
        middle_recall={"baseline": 0.75, "candidate": 0.5},
        recall={"baseline": 0.9, "candidate": 0.6},
        p95_latency_s={"baseline": 0.4, "candidate": 0.528},
        p95_latency_ratio=1.32,
        memory_bytes={"baseline": None, "candidate": None},
        memory_ratio=None,
        memory_source="kv_bytes",
        paired_cells=10,
        middle_cells=4,
        expected_cells=12,
        errored_cells=2,
        missing_cells=0,
    )
    return GateResults(
        gate=gate,
        decision=Decision(verdict=verdict, reasons=REASONS, checks=checks),  # type: ignore[arg-type]
        metrics=metrics,
        cells=make_cells() if cells is None else cells,
        environment={"python": "3.12.1", "torch": "2.5.0", "cuda": None, "devices": ["cpu"]},
        wall_s=12.5,
    )


def _section(page: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}".*?</section>', page, re.S)
    assert match, f"no section {section_id}"
    return match.group(0)


def _text(fragment: str) -> str:
    """Visible text of an HTML fragment, entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def _heat_cell(page: str, title: str) -> str:
    """The labels drawn in the heatmap cell whose tooltip starts with `title`."""
    match = re.search(rf"<g class=\"cell\">\s*<title>{re.escape(html.escape(title))}[^<]*</title>(.*?)</g>", page, re.S)
    assert match, f"no heatmap cell titled {title!r}"
    return _text(match.group(1))


def test_banner_shows_verdict_gate_model_and_every_reason() -> None:
    banner = _text(_section(render_html(make_results()), "decision"))

    assert banner.startswith("reject ")
    assert "fp8-kv" in banner
    assert "embedded:smollm2-135m-instruct" in banner
    for reason in REASONS:
        assert reason in banner


def test_banner_colour_follows_the_verdict() -> None:
    approve = _section(render_html(make_results(verdict="approve")), "decision")
    incomplete = _section(render_html(make_results(verdict="incomplete")), "decision")

    assert "#0072b2" in approve and _text(approve).startswith("approve ")
    assert "#6b6b6b" in incomplete and _text(incomplete).startswith("incomplete ")


def test_model_answer_is_escaped_and_page_has_no_script() -> None:
    page = render_html(make_results())

    assert html.escape(INJECTION, quote=False) in page  # &lt;script&gt;alert(1)&lt;/script&gt;
    assert "&lt;script&gt;" in page
    assert "<script" not in page.lower()


def test_metrics_table_shows_both_variants_thresholds_and_na() -> None:
    rows = re.findall(r"<tr>(.*?)</tr>", _section(render_html(make_results()), "metrics"), re.S)
    by_metric = {_text(r).split(" ", 1)[0]: _text(r) for r in rows[1:]}

    recall = next(t for t in by_metric.values() if t.startswith("middle-band recall"))
    assert recall.startswith("middle-band recall 0.750 0.500 -0.250 (delta) [-0.500, 0.100] >= 0.00 ✗ fail")
    latency = next(t for t in by_metric.values() if t.startswith("p95 latency"))
    assert "0.400 0.528 1.320 (ratio) — <= 1.10 ✗ fail" in latency
    memory = next(t for t in by_metric.values() if t.startswith("memory (kv_bytes)"))
    assert memory.startswith("memory (kv_bytes) n/a n/a n/a — <= 1.05 ✗ fail")


def test_heatmap_shows_fraction_found_over_seeds() -> None:
    page = render_html(make_results())

    assert _heat_cell(page, "baseline · length 2048 · depth 0.50:") == "0.50 1/2"
    assert _heat_cell(page, "baseline · length 1024 · depth 0.50:") == "1.00 2/2"
    assert _heat_cell(page, "candidate · length 1024 · depth 0.50:") == "0.50 1/2"
    assert _heat_cell(page, "candidate · length 2048 · depth 1.00:") == "0.00 0/2"
    assert _heat_cell(page, "difference · length 2048 · depth 1.00:") == "-1.00"
    assert _heat_cell(page, "difference · length 2048 · depth 0.50:") == "+0.50"
    assert _heat_cell(page, "difference · length 1024 · depth 1.00:") == "0.00"


def test_all_errored_cell_shows_err_and_its_escaped_error() -> None:
    page = render_html(make_results())

    assert _heat_cell(page, "candidate · length 1024 · depth 0.00:") == "err"
    assert _heat_cell(page, "difference · length 1024 · depth 0.00:") == "err"
    assert _heat_cell(page, "baseline · length 1024 · depth 0.00:") == "1.00 2/2"
    assert html.escape(BACKEND_ERROR, quote=False) in _section(page, "cells")
    assert "<tried" not in page


def test_recall_grid_counts_only_error_free_cells() -> None:
    cells = make_cells()

    grid = recall_grid(cells, "candidate", "niah")

    assert grid[(1024, 0.0)].measured == 0 and grid[(1024, 0.0)].errored == 2
    assert grid[(1024, 0.0)].recall is None and grid[(1024, 0.0)].all_errored
    assert (grid[(1024, 0.5)].found, grid[(1024, 0.5)].measured) == (1, 2)
    assert grid[(2048, 0.5)].recall == 1.0


def test_heatmap_rows_are_sorted_depths_and_mark_the_middle_band() -> None:
    shuffled = tuple(reversed(make_cells()))

    (panel,) = heatmap_panels(make_results(cells=shuffled))

    baseline, candidate, difference = panel.grids
    assert [r.text for r in baseline.rows] == ["0.00", "0.50", "1.00"]
    assert [r.middle for r in baseline.rows] == [False, True, False]
    assert [c.text for c in difference.cols] == ["1024", "2048"]
    assert difference.kind == "difference" and candidate.kind == "recall"


def test_memory_section_reports_mean_kv_bytes_per_length_and_variant() -> None:
    memory = _text(_section(render_html(make_results()), "memory"))

    # baseline at 1024 tokens: 1024 * 2 * 4096 bytes = 8 MiB, candidate half of it
    # the candidate's errored cells at 1024 measured no bytes: the mean is over those that did
    assert "1024 baseline 8.00 MiB 8.00 MiB 1.000 n/a 6" in memory
    assert "1024 candidate 4.00 MiB 4.00 MiB 1.000 n/a 6" in memory
    assert "2048 baseline 16.00 MiB 16.00 MiB 1.000 n/a 6" in memory


def test_environment_and_gate_hash_are_listed() -> None:
    env = _text(_section(render_html(make_results()), "environment"))

    assert "gate sha256 " + "ab" * 32 in env
    assert "wall time (s) 12.5" in env
    assert "torch 2.5.0" in env
    assert 'devices ["cpu"]' in env
    assert "cuda null" in env


def test_page_is_self_contained() -> None:
    page = render_html(make_results())

    assert not re.search(r"https?://", page)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert not re.search(r"\ssrc=", page)


def test_render_is_pure() -> None:
    results = make_results()

    assert render_html(results) == render_html(results)


def test_colour_scales_and_byte_format() -> None:
    assert sequential_colour(0.0) == "#440154" and sequential_colour(1.0) == "#fde725"
    assert diverging_colour(-1.0) == "#b35806" and diverging_colour(1.0) == "#2166ac"
    assert diverging_colour(0.0) == "#f7f7f7"
    assert fmt_bytes(None) == "n/a" and fmt_bytes(512) == "512 B" and fmt_bytes(3 * 1024**2) == "3.00 MiB"


def test_write_html_writes_the_rendered_page(tmp_path: Path) -> None:
    results = make_results()
    target = tmp_path / "out" / "report.html"

    write_html(results, target)

    assert target.read_text(encoding="utf-8") == render_html(results)
    assert list(target.parent.iterdir()) == [target]  # no temporary file left behind


def test_invalid_verdict_has_its_own_colour_and_says_what_it_means() -> None:
    banner = _section(render_html(make_results(verdict="invalid")), "decision")

    assert "#882255" in banner
    assert _text(banner).startswith("invalid The two sides cannot be compared")


def test_banner_counts_the_thresholds_met() -> None:
    results = load_results(FP8_RESULTS)

    banner = _text(_section(render_html(results), "decision"))

    assert banner.startswith("reject The candidate missed at least one threshold of the rule: 1 of 3 thresholds met.")
    for reason in results.decision.reasons:
        assert reason in banner


def test_metrics_show_the_recorded_paired_statistics_of_a_real_run() -> None:
    results = load_results(FP8_RESULTS)

    metrics = _text(_section(render_html(results), "metrics"))

    assert "middle-band recall 0.611 0.500 -0.111 (delta) [-0.111, 0.076] >= 0.00 ✗ fail" in metrics
    assert "p95 latency (s) 12.045 14.274 1.185 (ratio) [1.077, 1.244] <= 1.10 ✗ fail" in metrics
    # measured but not judged by this gate: shown as information, with the bootstrap CI the run recorded
    assert "p95 decode (ms/token) 110.72 176.72 1.596 (ratio) [1.035, 1.693] — info" in metrics
    assert "memory (kv_bytes) 105.86 MiB 28.12 MiB 0.266 (ratio) — <= 1.05 ✓ pass" in metrics
    assert "mcnemar p 0.5000" in metrics and "discordant baseline_only=2, candidate_only=0" in metrics


def test_a_check_policy_shows_in_the_threshold_and_a_skipped_check_is_not_a_pass() -> None:
    results = make_results()
    checks = (
        Check("middle_recall_delta", -0.02, -0.05, ">=", True, "non-inferior", -0.1, 0.04, "noninferiority"),
        Check("p95_latency_ratio", 1.3, 1.1, "<=", True, "not compared: captured baseline", None, None, "skipped"),
        Check("p95_decode_ratio", 1.05, 1.2, "<=", True, "decode", 0.98, 1.12, "bound"),
        Check("tokens_per_joule", 0.9, 1.0, "<=", True, "a check this report has never heard of"),
    )
    results = dataclasses.replace(results, decision=Decision("approve", ("fine",), checks))

    metrics = _text(_section(render_html(results), "metrics"))

    assert ">= -0.05 (CI upper end) ✓ pass" in metrics
    assert "p95 latency (s) 0.400 0.528 1.300 (ratio) — <= 1.10 (not compared) not compared" in metrics
    assert "p95 decode (ms/token) n/a n/a 1.050 (ratio) [0.980, 1.120] <= 1.20 (upper CI bound) ✓ pass" in metrics
    assert "tokens_per_joule — — 0.900 — <= 1.00 ✓ pass a check this report has never heard of" in metrics


def test_results_without_the_newer_fields_still_render() -> None:
    """Results built in memory with only the first fields (as a notebook or another tool may) render without the
    sections those fields feed; a file lacking them is refused by `load_results` instead (test_results_schema)."""
    full = load_results(FP8_RESULTS)
    known = {"middle_recall", "recall", "p95_latency_s", "p95_latency_ratio", "memory_bytes", "memory_ratio",
             "memory_source", "paired_cells", "middle_cells", "expected_cells", "errored_cells", "missing_cells"}
    metrics = Metrics(**{k: v for k, v in full.metrics.to_dict().items() if k in known})
    checks = tuple(Check(c.name, c.value, c.threshold, c.comparison, c.passed, c.detail) for c in full.decision.checks)
    cells = tuple(
        CellResult(**{f.name: getattr(c, f.name) for f in dataclasses.fields(CellResult)
                      if f.name not in ("failure", "excerpt", "score", "prefill_samples", "decode_samples", "total_samples",
                                        "reused_tokens", "retrieval", "kv_source")})
        for c in full.cells
    )
    results = dataclasses.replace(full, metrics=metrics, decision=dataclasses.replace(full.decision, checks=checks), cells=cells)

    page = render_html(results)

    assert "middle-band recall 0.611 0.500 -0.111 (delta) — >= 0.00 ✗ fail" in _text(_section(page, "metrics"))
    assert "prompt around the needle" not in page and "why a cell missed" not in page
    assert '<section id="recall"' not in page and '<section id="loss"' not in page
    assert "timed run" not in page and "effective length" not in page
    assert "kv_cache_dtype auto fp8_e4m3" in _text(_section(page, "changes"))


def test_latency_charts_mark_p95_per_variant_and_length() -> None:
    results = load_results(FP8_RESULTS)

    prefill, decode = latency_charts(results)

    assert [g.text for g in prefill.groups] == ["1024", "2048", "4096"]
    assert len(prefill.strips) == 6 and all(len(s.dots) == 10 for s in prefill.strips)
    assert {s.variant for s in decode.strips} == {"baseline", "candidate"}
    baseline_4096 = [c.prefill_s for c in results.cells if c.variant == "baseline" and c.length == 4096]
    strip = prefill.strips[4]
    assert strip.variant == "baseline" and f"p95 {np.percentile(baseline_4096, 95):.3f} s" in strip.p95_title
    assert strip.p95_y <= strip.q3_y <= strip.median_y <= strip.q1_y  # higher values are drawn higher up
    assert prefill.plot_top <= min(d.y for s in prefill.strips for d in s.dots)


def test_latency_table_gives_median_and_p95_of_prefill_and_decode() -> None:
    results = load_results(FP8_RESULTS)
    decode = [c.decode_s_per_token * 1000 for c in results.cells if c.variant == "candidate" and c.length == 2048]

    row = next(r for r in latency_rows(results) if r.length == 2048 and r.variant == "candidate")

    assert row.cells == 10
    assert row.decode_p95 == f"{np.percentile(decode, 95):.2f}" and row.decode_median == f"{np.median(decode):.2f}"
    section = _text(_section(render_html(results), "latency"))
    assert "2048 candidate 10 " + f"{row.prefill_median} {row.prefill_p95} {row.decode_median} {row.decode_p95}" in section
    assert section.count("p95") >= 12  # a mark on each of 2 variants x 3 lengths in both charts


@pytest.mark.parametrize("values", [[3.0], [1.0, 2.0], [5.0, 1.0, 4.0, 2.0, 3.0], [0.1 * i for i in range(23)]])
def test_percentile_matches_numpy(values: list[float]) -> None:
    for q in (25, 50, 95):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert percentile([], 95) is None


def test_drill_down_shows_failure_needle_position_and_marked_excerpt() -> None:
    results = load_results(FP8_RESULTS)
    missed = next(c for c in results.cells if c.failure == "partial")

    cells = _section(render_html(results), "cells")

    row = next(r for r in re.findall(r"<tr class=\"missed\">(.*?)</tr>", cells, re.S) if html.escape(missed.answer, quote=False) in r)
    text = _text(row)
    assert f"token {missed.needle_start}" in text and "partial" in text and missed.expected in text
    assert f"<mark>{missed.expected}</mark>" in row
    # one task: no per-task breakdown of the misses
    assert "why a cell missed baseline candidate partial 1 1 truncated 10 12" in _text(_section(render_html(results), "recall"))


def test_prompt_excerpt_is_escaped_too() -> None:
    cell = dataclasses.replace(make_cells()[0], excerpt="log line <img src=x onerror=alert(1)> needle 4821 & more")
    page = render_html(make_results(cells=(cell,)))

    assert "&lt;img src=x onerror=alert(1)&gt; needle <mark>4821</mark> &amp; more" in page
    assert "<img" not in page


def test_environment_lists_every_key_with_nested_ones_flattened() -> None:
    rows = dict(environment_rows({"git_commit": "abc", "libraries": {"torch": "2.13.0", "transformers": "5.2"},
                                  "tokenizer_sha256": "f" * 64, "device": None}))

    assert rows == {"git_commit": "abc", "libraries.torch": "2.13.0", "libraries.transformers": "5.2",
                    "tokenizer_sha256": "f" * 64, "device": "null"}
    env = _text(_section(render_html(load_results(FP8_RESULTS)), "environment"))
    for key in ("git_commit", "gate_sha256", "model_fingerprint", "torch", "transformers", "device", "python"):
        assert key in env


def test_page_forbids_scripts_by_content_security_policy() -> None:
    page = render_html(make_results())

    assert re.search(r'<meta http-equiv="Content-Security-Policy" content="default-src \'none\';', page)


# ----------------------------------------------------------------------------- task families, loss, timed runs


def test_what_changed_lists_the_settings_each_side_changes() -> None:
    changes = _section(render_html(load_results(FAMILIES_RESULTS)), "changes")

    rows = [_text(r) for r in re.findall(r"<tr>(.*?)</tr>", changes, re.S)]
    assert rows == [
        "setting baseline candidate",
        "rope the model's own yarn factor 4 (original 8192), max_position_embeddings 32768",
        "kv_cache_dtype auto fp8_e4m3",
        "packing given edge",
    ]
    assert changes.count('class="default"') == 3 and changes.count('class="changed"') == 3  # the baseline keeps every default


def test_what_changed_shows_a_window_with_sinks_and_a_model_swap() -> None:
    from pytest_longctx.gate.spec import VariantSpec

    results = load_results(FAMILIES_RESULTS)
    baseline = VariantSpec.of("baseline", model={"ref": "hf:org/base", "dtype": "bfloat16"})
    candidate = VariantSpec.of("candidate", max_position_embeddings=32768, attention={"window": 1024, "sink_tokens": 4})
    gate = {**results.gate, "baseline": baseline.to_dict(), "candidate": candidate.to_dict()}

    changes = _text(_section(render_html(dataclasses.replace(results, gate=gate)), "changes"))

    assert "model hf:org/base (dtype bfloat16) the gate's" in changes
    assert "rope the model's own the model's own, max_position_embeddings 32768" in changes
    assert "attention full window 1024 + 4 sinks" in changes
    assert "kv_cache_dtype" not in changes and "packing" not in changes


def test_each_task_gets_its_own_heatmaps_and_a_position_free_task_one_row() -> None:
    results = load_results(FAMILIES_RESULTS)

    panels = {p.task: p for p in heatmap_panels(results)}

    assert list(panels) == [t["name"] for t in results.gate["sweep"]["tasks"]]  # in the gate's order
    assert panels["niah_single(value=uuid)"].family == "niah_single"
    niah = panels["niah"].grids[0]
    assert [r.text for r in niah.rows] == ["0.00", "0.50", "1.00"] and [r.middle for r in niah.rows] == [False, True, False]
    for task in ("variable_tracking", "common_words"):
        assert not panels[task].positioned
        for grid in panels[task].grids:
            assert [r.text for r in grid.rows] == ["all"] and not any(r.middle for r in grid.rows)
            assert len(grid.cells) == 3  # one per length
    words = panels["common_words"].grids
    assert [(c.label, c.sublabel) for c in words[1].cells] == [("1.00", "2/2"), ("0.50", "1/2"), ("0.00", "0/2")]
    assert [c.label for c in words[2].cells] == ["0.00", "-0.50", "-0.50"]
    heading = re.search(r"<h3>task common_words.*?</h3>", render_html(results), re.S)
    assert heading and "position-free" in _text(heading.group(0))


def test_recall_per_task_table_shows_the_recorded_recall_of_each_side() -> None:
    data = json.loads(FAMILIES_RESULTS.read_text())

    recall = _text(_section(render_html(load_results(FAMILIES_RESULTS)), "recall"))

    families = {t["name"]: t["family"] for t in data["gate"]["sweep"]["tasks"]}
    for task, values in data["metrics"]["recall_by_task"].items():
        base, cand = values["baseline"], values["candidate"]
        assert f"{task} {families[task]} {base:.3f} {cand:.3f} {cand - base:+.3f}" in recall
    assert "variable_tracking variable_tracking 1.000 0.667 -0.333" in recall


def test_recall_by_length_marks_each_sides_effective_length() -> None:
    results = load_results(FAMILIES_RESULTS)

    rows = length_rows(results)
    recall = _section(render_html(results), "recall")

    assert [(r.length, r.baseline, r.candidate) for r in rows] == [
        (1024, "1.000", "1.000"), (2048, "1.000", "0.929"), (4096, "0.929", "0.643"),
    ]
    assert [r.length for r in rows if r.baseline_effective] == [4096] and [r.length for r in rows if r.candidate_effective] == [2048]
    assert [r.candidate_held for r in rows] == [True, True, False] and all(r.baseline_held for r in rows)
    text = _text(recall)
    assert "2048 1.000 0.929 effective length -0.071" in text and "4096 0.929 effective length 0.643 -0.286" in text
    assert "recall stays at or above 0.85: baseline 4096 tokens, candidate 2048 tokens (ratio 0.500)" in text


def test_an_effective_length_below_the_shortest_length_says_so() -> None:
    results = load_results(FAMILIES_RESULTS)
    metrics = dataclasses.replace(
        results.metrics, effective_length={"baseline": 4096, "candidate": None}, effective_length_ratio=0.0,
        recall_by_length={**results.metrics.recall_by_length, "candidate": {"1024": 0.5, "2048": 0.9, "4096": 0.2}},
    )

    text = _text(_section(render_html(dataclasses.replace(results, metrics=metrics)), "recall"))

    assert "candidate none (recall 0.50 already at 1024) (ratio 0.000)" in text
    assert text.count("effective length") == 2  # the baseline's badge and the sentence; no badge for the candidate


def test_failure_categories_are_counted_per_side_and_per_task() -> None:
    results = load_results(FAMILIES_RESULTS)

    rows = failure_rows(results)

    assert [r.category for r in rows] == ["missing", "wrong_value", "partial", "truncated", "refusal/other"]  # results.Failure order
    for side in ("baseline", "candidate"):  # a complete run: every cell is paired, so the metrics count the same misses
        counted = {r.category: getattr(r, side) for r in rows if getattr(r, side)}
        assert counted == results.metrics.failures[side]
    wrong = next(r for r in rows if r.category == "wrong_value")
    assert wrong.by_task == "niah_single(value=uuid) 0/1 · niah_multikey 1/3"
    assert "partial 1 4 variable_tracking 0/2 · common_words 1/2" in _text(_section(render_html(results), "recall"))


def test_loss_chart_draws_both_curves_and_shades_the_worst_bucket() -> None:
    results = load_results(FAMILIES_RESULTS)

    chart = loss_chart(results)

    assert chart is not None
    baseline, candidate = chart.series
    assert (baseline.variant, candidate.variant) == ("baseline", "candidate") and (baseline.shape, candidate.shape) == ("circle", "square")
    assert len(baseline.points) == len(candidate.points) == 8
    assert [p.x for p in baseline.points] == sorted(p.x for p in baseline.points)
    assert candidate.points[-1].y < baseline.points[-1].y  # the higher loss is drawn higher up
    assert candidate.points[0].y < candidate.points[1].y  # 3.431 at the start, then falling to 3.002
    assert all(chart.plot_top <= p.y <= chart.plot_bottom for s in chart.series for p in s.points)
    assert chart.worst_x is not None and chart.worst_x < candidate.points[-1].x < chart.worst_x + chart.worst_w
    assert "positions 7168-8192: mean loss 2.986 nats over 1024 predictions" in candidate.points[-1].title
    assert baseline.path.startswith("M") and baseline.path.count("L") == 7


def test_loss_section_shows_the_loss_ratio_check_and_every_bucket() -> None:
    section = _section(render_html(load_results(FAMILIES_RESULTS)), "loss")
    text = _text(section)

    assert "loss ratio, worst bucket: 1.123 (ratio) , threshold <= 1.05 · ✗ fail" in text
    assert "worst position bucket at positions 7168-8192" in text
    assert "7168-8192 (worst) 2.660 2.986 1.123" in text and "0-1024 3.412 3.431 1.006" in text
    assert section.count('class="worst-band"') == 1 and '<path class="series"' in section


def test_a_bucket_without_a_loss_breaks_the_line() -> None:
    results = load_results(FAMILIES_RESULTS)
    curve = dict(results.metrics.loss_curves["candidate"])
    curve["losses"] = [*curve["losses"][:3], float("nan"), *curve["losses"][4:]]
    metrics = dataclasses.replace(results.metrics, loss_curves={**results.metrics.loss_curves, "candidate": curve})

    chart = loss_chart(dataclasses.replace(results, metrics=metrics))

    assert chart is not None
    candidate = chart.series[1]
    assert len(candidate.points) == 7 and candidate.path.count("M") == 2


def test_a_loss_curve_of_one_side_only_is_drawn_without_a_worst_bucket() -> None:
    results = load_results(FAMILIES_RESULTS)
    metrics = dataclasses.replace(results.metrics, loss_curves={"baseline": results.metrics.loss_curves["baseline"]},
                                  loss_ratio=None, loss_worst_bucket=None)
    checks = tuple(dataclasses.replace(c, value=None, passed=False) if c.name == "loss_ratio" else c for c in results.decision.checks)
    results = dataclasses.replace(results, metrics=metrics, decision=dataclasses.replace(results.decision, checks=checks))

    chart = loss_chart(results)
    section = _section(render_html(results), "loss")

    assert chart is not None and [s.variant for s in chart.series] == ["baseline"] and chart.worst_x is None
    assert "worst-band" not in section and "shaded band" not in section
    assert "loss ratio, worst bucket: n/a" in _text(section) and "0-1024 3.412 n/a n/a" in _text(section)


def test_drill_down_lists_timed_runs_and_marks_a_reused_prefix() -> None:
    results = load_results(FAMILIES_RESULTS)
    reused = next(c for c in results.cells if c.reused_tokens)
    cells = _section(render_html(results), "cells")

    rows = [_text(r) for r in re.findall(r"<tr class=\"(?:found|missed)\">(.*?)</tr>", cells, re.S)]
    samples = " / ".join(f"{v:.3f}" for v in reused.total_samples)
    prefill = " / ".join(f"{v:.3f}" for v in reused.prefill_samples)
    row = next(r for r in rows if f"3 timed runs: {samples} s, min used" in r)
    assert f"prefill {prefill} s" in row
    assert f"recall run reused {reused.reused_tokens} cached prompt tokens: not timed" in row
    assert sum("cached prompt tokens: not timed" in r for r in rows) == sum(1 for c in results.cells if c.reused_tokens)
    assert all("3 timed runs:" in r for r in rows)
    assert "A cell's timing is the min of its timed runs (up to 3," in _text(_section(render_html(results), "latency"))


def test_a_single_timed_run_names_no_statistic() -> None:
    cell = dataclasses.replace(make_cells()[0], total_samples=(0.5,), prefill_samples=(0.1,), decode_samples=(0.012,))

    assert timed_runs(cell, "median") == ("1 timed run: 0.500 s", "prefill 0.100 s", "decode 12.00 ms/token")
    assert timed_runs(make_cells()[0], "min") == ()


def test_partial_credit_is_shown_with_the_failure() -> None:
    cells = _text(_section(render_html(load_results(FAMILIES_RESULTS)), "cells"))

    assert "partial (0.60 credit)" in cells and "partial (0.80 credit)" in cells
    assert "wrong_value (" not in cells  # no credit to show for an all-or-nothing miss


def test_families_page_is_pure_self_contained_and_script_free() -> None:
    results = load_results(FAMILIES_RESULTS)

    page = render_html(results)

    assert page == render_html(results)
    assert "<script" not in page.lower() and not re.search(r"https?://", page) and "url(" not in page
    for section in ("decision", "changes", "metrics", "recall", "heatmaps", "loss", "latency", "memory", "cells", "environment"):
        assert f'<section id="{section}"' in page
