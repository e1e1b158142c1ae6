"""The terminal table, the Markdown summary and the JUnit properties: the same decision and numbers as the report."""

from __future__ import annotations

import dataclasses
import html
import json
import re
from pathlib import Path

from pytest_longctx.report import render_html
from pytest_longctx.results import Decision, load_results
from pytest_longctx.summary import (
    append_step_summary,
    junit_properties,
    markdown,
    md_escape,
    metric_rows,
    terminal_lines,
)

FP8_RESULTS = Path(__file__).parents[1] / "data" / "fp8-results.json"  # the default gate's real run on 2 CPU cores


def _markdown_table(text: str) -> list[list[str]]:
    """Body rows of the first Markdown table, cells unescaped."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    rows = [re.split(r"(?<!\\)\|", line.strip())[1:-1] for line in lines[1:]]
    return [[html.unescape(c.strip().replace("\\|", "|")) for c in row] for row in rows if not row[0].strip().startswith("---")]


def _html_metric_rows(page: str) -> list[list[str]]:
    table = re.search(r'<table class="metrics">(.*?)</table>', page, re.S)
    assert table
    rows = re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)[1:]
    return [[" ".join(html.unescape(re.sub(r"<[^>]+>", " ", td)).split()) for td in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)] for r in rows]


def test_markdown_shows_the_same_metrics_as_the_html_report() -> None:
    results = load_results(FP8_RESULTS)

    md_rows = _markdown_table(markdown(results))
    html_rows = _html_metric_rows(render_html(results))

    assert len(md_rows) == len(html_rows) == 6
    for md, page in zip(md_rows, html_rows):
        assert md[:6] == page[:6]  # metric, baseline, candidate, ratio/delta, CI, threshold
        result = {"✓ pass": "✅ pass", "✗ fail": "❌ FAIL", "info": "info"}[page[6]]
        assert md[6] == result


def test_markdown_shows_the_decision_and_numbers_of_the_json() -> None:
    data = json.loads(FP8_RESULTS.read_text())

    text = markdown(load_results(FP8_RESULTS))

    assert text.startswith(f"### ❌ longctx gate `{data['gate']['name']}`: **{data['decision']['verdict'].upper()}**")
    for reason in data["decision"]["reasons"]:
        assert f"- {md_escape(reason)}" in text
    rows = {row[0]: row for row in _markdown_table(text)}
    m, checks = data["metrics"], {c["name"]: c for c in data["decision"]["checks"]}
    recall = rows["middle-band recall"]
    assert recall[1:4] == [f"{m['middle_recall']['baseline']:.3f}", f"{m['middle_recall']['candidate']:.3f}",
                           f"{checks['middle_recall_delta']['value']:+.3f} (delta)"]
    ci = checks["middle_recall_delta"]
    assert recall[4] == f"[{ci['ci_low']:.3f}, {ci['ci_high']:.3f}]" and recall[5] == f">= {ci['threshold']:.2f}"
    latency = rows["p95 latency (s)"]
    assert latency[3] == f"{m['p95_latency_ratio']:.3f} (ratio)" and latency[5] == f"<= {checks['p95_latency_ratio']['threshold']:.2f}"
    assert [rows[k][6] for k in ("middle-band recall", "p95 latency (s)", "memory (kv_bytes)")] == [
        "✅ pass" if checks[n]["passed"] else "❌ FAIL" for n in ("middle_recall_delta", "p95_latency_ratio", "memory_ratio")]


def test_markdown_escapes_what_could_break_the_table_or_inject_html() -> None:
    results = load_results(FP8_RESULTS)
    reasons = ("FAIL a | b <script>alert(1)</script>",)
    results = dataclasses.replace(results, decision=Decision("incomplete", reasons, results.decision.checks),
                                  gate={**results.gate, "name": "g|<b>"})

    text = markdown(results)

    assert "<script>" not in text
    assert "- FAIL a \\| b &lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert text.startswith("### ⚠️ longctx gate `g|<b>`: **INCOMPLETE**")  # a code span shows its text literally
    assert md_escape("a\nb | c") == "a b \\| c"


def test_terminal_table_lines_up_metrics_thresholds_and_results() -> None:
    results = load_results(FP8_RESULTS)

    lines = terminal_lines(results, [Path("reports/fp8.json")])

    assert lines[0].startswith("gate fp8-kv-cache: REJECT (30/30 cells paired)")
    header, rule, *body = lines[1:9]
    assert header.split()[:2] == ["metric", "baseline"] and set(rule.strip()) <= {"-", " "}
    recall = next(line for line in body if "middle-band recall" in line)
    assert re.search(r"middle-band recall\s+0\.611\s+0\.500\s+-0\.111 \(delta\)\s+\[-0\.111, 0\.076\]\s+>= 0\.00\s+FAIL$", recall)
    assert re.search(r"memory \(kv_bytes\)\s+105\.86 MiB\s+28\.12 MiB\s+0\.266 \(ratio\)\s+—\s+<= 1\.05\s+pass$", lines[8])
    result_at = header.index("result")
    assert [line[result_at:] for line in body] == ["FAIL", "info", "FAIL", "info", "info", "pass"]  # one column
    for reason in results.decision.reasons:
        assert f"  {reason}" in lines
    assert lines[-1] == "  wrote reports/fp8.json"


def test_junit_properties_carry_the_verdict_checks_and_metrics() -> None:
    data = json.loads(FP8_RESULTS.read_text())

    props = dict(junit_properties(load_results(FP8_RESULTS)))

    assert props["longctx.fp8-kv-cache.verdict"] == "reject"
    for check in data["decision"]["checks"]:
        prefix = f"longctx.fp8-kv-cache.check.{check['name']}"
        assert float(props[f"{prefix}.value"]) == check["value"]
        assert float(props[f"{prefix}.threshold"]) == check["threshold"]
        assert props[f"{prefix}.passed"] == str(check["passed"]).lower()
    assert float(props["longctx.fp8-kv-cache.metric.middle_recall.baseline"]) == data["metrics"]["middle_recall"]["baseline"]
    assert float(props["longctx.fp8-kv-cache.metric.p95_latency_ratio"]) == data["metrics"]["p95_latency_ratio"]
    assert props["longctx.fp8-kv-cache.metric.paired_cells"] == "30"


def test_step_summary_is_appended_and_skipped_without_a_path(tmp_path: Path) -> None:
    results = load_results(FP8_RESULTS)
    target = tmp_path / "summary.md"
    target.write_text("earlier step\n")

    assert append_step_summary([(results, [Path("r.html")])], target)
    assert append_step_summary([(results, [])], str(target))
    assert not append_step_summary([(results, [])], None) and not append_step_summary([(results, [])], "")

    text = target.read_text()
    assert text.startswith("earlier step\n") and text.count("longctx gate `fp8-kv-cache`") == 2
    assert "Written: `r.html`" in text


def test_rows_are_one_list_for_every_output() -> None:
    results = load_results(FP8_RESULTS)

    rows = metric_rows(results)

    assert [r.metric for r in rows] == ["middle-band recall", "recall, all depths", "p95 latency (s)", "p95 prefill (s)",
                                        "p95 decode (ms/token)", "memory (kv_bytes)"]
    assert [r.status for r in rows] == ["fail", "info", "fail", "info", "info", "pass"]
