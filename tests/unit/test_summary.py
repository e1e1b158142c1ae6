"""The terminal table, the Markdown summary and the JUnit properties: the same decision and numbers as the report."""

from __future__ import annotations

import dataclasses
import html
import json
import re
from pathlib import Path

import pytest

from pytest_longctx.gate.results import Decision, load_results
from pytest_longctx.output.report import render_html
from pytest_longctx.output.settings import describe_variant, variant_settings
from pytest_longctx.output.summary import (
    append_step_summary,
    junit_properties,
    markdown,
    md_escape,
    metric_rows,
    terminal_lines,
)

# The default gate's real run on 2 CPU cores (schema 2: tests/data/regenerate.py).
FP8_RESULTS = Path(__file__).parents[1] / "data" / "fp8-results.json"
# A made-up, schema-exact run of six task families with a YaRN candidate and a loss curve (tests/data/families_results.py)
FAMILIES_RESULTS = Path(__file__).parents[1] / "data" / "families-results.json"


def _markdown_table(text: str) -> list[list[str]]:
    """Body rows of the first Markdown table, cells unescaped."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    rows = [re.split(r"(?<!\\)\|", line.strip())[1:-1] for line in lines[1:]]
    return [[html.unescape(c.strip().replace("\\|", "|")) for c in row] for row in rows if not row[0].strip().startswith("---")]


def _html_metric_rows(page: str) -> list[list[str]]:
    table = re.search(r'<table class="metrics">(.*?)</table>', page, re.S)
    assert table
    rows = re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)[1:]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r, re.S) for r in rows]
    return [[" ".join(html.unescape(re.sub(r"<[^>]+>", " ", td)).split()) for td in row] for row in cells]


def test_markdown_shows_the_same_metrics_as_the_html_report() -> None:
    results = load_results(FP8_RESULTS)

    md_rows = _markdown_table(markdown(results))
    html_rows = _html_metric_rows(render_html(results))

    assert len(md_rows) == len(html_rows) == 9
    for md, page in zip(md_rows, html_rows, strict=True):
        assert md[:6] == page[:6]  # metric, baseline, candidate, ratio/delta, CI, threshold
        result = {"✓ pass": "✅ pass", "✗ fail": "❌ FAIL", "info": "info", "not measured": "not measured"}[page[6]]
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


FORGED = "x\n\n## ✅ APPROVE\n<img src=x onerror=alert(1)>"


def _forged(results):
    """A results file whose name, model and reasons were written by someone who wants the summary to lie."""
    reasons = ("FAIL the answer was '</code><script>steal()</script>\n## ✅ APPROVE'",
               "- [click](javascript:alert(1)) **bold** _em_ \x1b[2J\x1b[32mAPPROVE\x1b[0m")
    return dataclasses.replace(results, decision=Decision("reject", reasons, results.decision.checks),
                               gate={**results.gate, "name": FORGED, "model": {"ref": "m`` `\n# H1"}})


def test_a_forged_name_renders_as_inert_text_in_the_step_summary(tmp_path) -> None:
    markdown_it = pytest.importorskip("markdown_it")
    summary = tmp_path / "step-summary.md"

    append_step_summary([(_forged(load_results(FP8_RESULTS)), [Path("reports/x.html")])], summary)

    # Rendered as GitHub would (CommonMark with tables, raw HTML allowed): what a reader of the job summary sees.
    page = markdown_it.MarkdownIt("commonmark").enable("table").render(summary.read_text())
    assert page.count("<h3>") == 1 and "<h1>" not in page and "<h2>" not in page  # one heading: the gate's own
    heading = page.split("</h3>")[0]
    assert "<code>x ## ✅ APPROVE &lt;img src=x onerror=alert(1)&gt;</code>: <strong>REJECT</strong>" in heading
    assert "<code>m`` ` # H1</code>" in page  # the model ref, whole, in one code span that its backticks cannot close
    for active in ("<img", "<script", "<a ", "<strong>bold", "<em>", "\x1b"):
        assert active not in page
    assert "&lt;/code&gt;&lt;script&gt;steal()&lt;/script&gt; ## ✅ APPROVE" in page  # the reason, as text, on one line


def test_a_forged_name_stays_on_its_line_in_the_terminal() -> None:
    lines = terminal_lines(_forged(load_results(FP8_RESULTS)))

    assert lines[0].startswith("gate x ## ✅ APPROVE <img src=x onerror=alert(1)>: REJECT")
    assert not any(ch in line for line in lines for ch in "\n\r\x1b")
    assert any("APPROVE [0m" in line for line in lines)  # the escape sequence shown as text, not obeyed


def test_terminal_table_lines_up_metrics_thresholds_and_results() -> None:
    results = load_results(FP8_RESULTS)

    lines = terminal_lines(results, [Path("reports/fp8.json")])

    assert lines[0].startswith("gate fp8-kv-cache: REJECT (30/30 cells paired)")
    header, rule, *body = lines[1:10]
    assert header.split()[:2] == ["metric", "baseline"] and set(rule.strip()) <= {"-", " "}
    recall = next(line for line in body if "middle-band recall" in line)
    assert re.search(r"middle-band recall\s+0\.611\s+0\.500\s+-0\.111 \(delta\)\s+\[-0\.111, 0\.076\]\s+>= 0\.00\s+FAIL$", recall)
    assert re.search(r"memory \(kv_bytes\)\s+105\.86 MiB\s+28\.12 MiB\s+0\.266 \(ratio\)\s+—\s+<= 1\.05\s+pass$", lines[9])
    result_at = header.index("result")
    # one column; the answer log-probability was not measured in this run, so its row only informs
    assert [line[result_at:] for line in body] == ["FAIL", "info", "not measured", "FAIL", "info", "info", "pass"]
    for reason in results.decision.reasons:
        assert f"  {reason}" in lines
    assert lines[-1] == "  wrote reports/fp8.json"


def test_junit_properties_carry_the_verdict_checks_and_metrics() -> None:
    data = json.loads(FP8_RESULTS.read_text())

    props = dict(junit_properties(load_results(FP8_RESULTS)))

    assert props["longctx.fp8-kv-cache.verdict"] == "reject"
    for check in data["decision"]["checks"]:
        prefix = f"longctx.fp8-kv-cache.check.{check['name']}"
        if check["value"] is None:  # not measured (the answer log-probability of a run recorded before it was)
            assert f"{prefix}.value" not in props
            continue
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

    assert [r.metric for r in rows] == ["middle-band recall", "recall, all depths", "answer log-probability (nats)",
                                        "p95 latency (s)", "p95 prefill (s)",
                                        "p95 decode (ms/token)", "memory (kv_bytes)", "prompt tokens per query",
                                        "effective length (tokens, recall >= 0.85)"]
    assert [r.status for r in rows] == ["fail", "info", "unmeasured", "fail", "info", "info", "pass", "info", "info"]


def test_effective_length_and_loss_ratio_are_rows_of_every_output() -> None:
    data = json.loads(FAMILIES_RESULTS.read_text())
    results = load_results(FAMILIES_RESULTS)
    m, checks = data["metrics"], {c["name"]: c for c in data["decision"]["checks"]}

    rows = {r.metric: r for r in metric_rows(results)}

    effective = rows["effective length (tokens, recall >= 0.85)"]
    assert (effective.baseline, effective.candidate) == (str(m["effective_length"]["baseline"]), str(m["effective_length"]["candidate"]))
    assert effective.change == f"{checks['effective_length_ratio']['value']:.3f} (ratio)" and effective.threshold == ">= 1.00"
    assert effective.status == "fail"
    loss = rows["next-token loss, worst bucket (nats)"]
    worst = m["loss_worst_bucket"]
    assert (loss.baseline, loss.candidate) == tuple(f"{m['loss_curves'][s]['losses'][worst]:.3f}" for s in ("baseline", "candidate"))
    assert loss.change == f"{m['loss_ratio']:.3f} (ratio)" and loss.threshold == "<= 1.05" and loss.status == "fail"
    md_rows = _markdown_table(markdown(results).split("**Recall by task**")[0])  # the metrics table, not the tasks'
    html_rows = _html_metric_rows(render_html(results))
    assert len(md_rows) == len(html_rows) == 10 and [r[:6] for r in md_rows] == [r[:6] for r in html_rows]
    lines = terminal_lines(results)
    assert any(re.search(r"effective length \(tokens, recall >= 0\.85\)\s+4096\s+2048\s+0\.500 \(ratio\)\s+—\s+>= 1\.00\s+FAIL$", line)
               for line in lines)
    assert any(re.search(r"next-token loss, worst bucket \(nats\)\s+2\.660\s+2\.986\s+1\.123 \(ratio\)", line) for line in lines)


def test_without_a_threshold_the_loss_row_is_information_that_names_the_worst_bucket() -> None:
    results = load_results(FAMILIES_RESULTS)
    checks = tuple(c for c in results.decision.checks if c.name != "loss_ratio")
    results = dataclasses.replace(results, decision=dataclasses.replace(results.decision, checks=checks))

    loss = next(r for r in metric_rows(results) if r.metric.startswith("next-token loss"))

    assert (loss.change, loss.threshold, loss.status) == ("1.123 (ratio)", "—", "info")
    assert loss.detail == "worst bucket: positions 7168-8192; not part of the rule"


def test_terminal_lists_recall_per_task_when_the_gate_swept_several() -> None:
    data = json.loads(FAMILIES_RESULTS.read_text())

    lines = terminal_lines(load_results(FAMILIES_RESULTS))

    start = next(i for i, line in enumerate(lines) if line.split()[:3] == ["recall", "by", "task"])
    body = lines[start + 2 : start + 2 + len(data["metrics"]["recall_by_task"])]
    for line, (task, values) in zip(body, data["metrics"]["recall_by_task"].items(), strict=True):
        base, cand = values["baseline"], values["candidate"]
        assert line.split() == [task, f"{base:.3f}", f"{cand:.3f}", f"{cand - base:+.3f}"]
    assert lines[start + 2 + len(body)].startswith("  FAIL ")  # then the reasons
    assert not any("recall by task" in line for line in terminal_lines(load_results(FP8_RESULTS)))  # one task: no table


def test_markdown_has_a_recall_per_task_table_and_each_sides_changes() -> None:
    data = json.loads(FAMILIES_RESULTS.read_text())

    text = markdown(load_results(FAMILIES_RESULTS))

    assert ("**baseline**: defaults · **candidate**: rope yarn factor 4 (original 8192), max_position_embeddings 32768; "
            "kv_cache_dtype fp8_e4m3; packing edge") in text
    tasks = text.split("**Recall by task**", 1)[1]
    rows = {row[0]: row[1:] for row in _markdown_table(tasks)}
    for task, values in data["metrics"]["recall_by_task"].items():
        base, cand = values["baseline"], values["candidate"]
        assert rows[task] == [task.split("(")[0], f"{base:.3f}", f"{cand:.3f}", f"{cand - base:+.3f}"]
    assert "**Recall by task**" not in markdown(load_results(FP8_RESULTS))


def test_describe_variant_names_each_change_and_hides_the_defaults() -> None:
    from pytest_longctx.changes.retrievers import parse_retrieval
    from pytest_longctx.gate.spec import VariantSpec

    spec = VariantSpec.of(
        "candidate", kv_cache_dtype="int4", kv_scale="channel", attn_implementation="eager",
        rope_parameters={"rope_type": "linear", "factor": 2.0}, attention={"window": 512, "sink_tokens": 1},
        history={"budget": 2048}, retrieval={"method": "bm25", "top_k": 4},
        planted={"decode_delay": 0.25, "kv_copies": 3},
    )

    described = dict(describe_variant(spec.to_dict()))

    assert described == {
        "attn_implementation": "eager",
        "rope": "linear factor 2",
        "attention": "window 512 + 1 sink",
        "kv_cache_dtype": "int4",
        "kv_scale": "channel",
        "history": "budget 2048 tokens, newest_first",
        "retrieval": "bm25, top 4 chunks of 256 tokens, order rank",
        "planted": "decode delay 0.25, 3 KV copies",
    }
    assert describe_variant(VariantSpec(name="baseline").to_dict()) == ()
    assert dict(describe_variant({"name": "x", "speculative_draft": "tiny"})) == {"speculative_draft": "tiny"}  # a key added later
    budgeted = parse_retrieval({"method": "hybrid", "budget_tokens": 6000})
    assert dict(describe_variant(VariantSpec.of("c", retrieval={"method": "hybrid", "budget_tokens": 6000}).to_dict()))["retrieval"] == (
        f"hybrid, best chunks of 256 tokens up to 6000 tokens, order {budgeted.order}")
    assert variant_settings(load_results(FP8_RESULTS)) == (("baseline", "defaults"), ("candidate", "kv_cache_dtype fp8_e4m3"))


def test_describe_variant_names_a_served_side_by_where_its_engine_runs() -> None:
    from pytest_longctx.gate.spec import VariantSpec

    served = VariantSpec.of("c", backend="openai", launch={"command": "vllm serve {model} --port {port}"}, max_concurrency=4)
    assert dict(describe_variant(served.to_dict())) == {"backend": "openai (launched: vllm serve {model} --port {port}), 4 in flight"}
    remote = VariantSpec.of("b", backend="openai", base_urls=["http://a:1", "http://b:2"])
    assert dict(describe_variant(remote.to_dict())) == {"backend": "openai (http://a:1, http://b:2)"}


def _planted_results():
    results = load_results(FP8_RESULTS)
    candidate = {**results.gate["candidate"], "planted_decode_delay": 0.25, "planted_kv_copies": 3}
    return dataclasses.replace(results, gate={**results.gate, "candidate": candidate})


PLANTED = "candidate has PLANTED regressions: decode_delay +25%, kv_copies x3"


def test_every_summary_leads_with_a_candidates_planted_regressions() -> None:
    results = _planted_results()

    lines = terminal_lines(results)
    text = markdown(results)
    props = dict(junit_properties(results))
    page = render_html(results)

    assert lines[1].startswith(f"  !! {PLANTED}")  # right under the verdict, above the table
    assert f"> **{PLANTED}" in text and text.index(PLANTED) < text.index("| metric")
    assert props["longctx.fp8-kv-cache.candidate_planted"] == "decode_delay +25%,kv_copies x3"
    banner = page[page.index('<section id="decision"'):page.index("</section>")]
    assert PLANTED in html.unescape(banner)


def test_without_planted_regressions_no_summary_mentions_them() -> None:
    results = load_results(FP8_RESULTS)

    assert not any("PLANTED" in line for line in terminal_lines(results))
    assert "PLANTED" not in markdown(results) and "PLANTED" not in render_html(results)
    assert not any(name.endswith("candidate_planted") for name, _ in junit_properties(results))


def test_the_engines_kv_capacity_is_a_row_of_every_output() -> None:
    results = load_results(FP8_RESULTS)
    engine = {"capacity_tokens": 4096, "bytes": 90 * 2**20, "bytes_per_token": 23040.0, "slots": 1, "sequences": 1}
    metrics = dataclasses.replace(results.metrics, kv_capacity_tokens={"baseline": 4096, "candidate": 4096},
                                  kv_capacity_ratio=1.882, kv_engine={"baseline": engine, "candidate": engine})
    results = dataclasses.replace(results, metrics=metrics)

    row = next(r for r in metric_rows(results) if r.metric.startswith("KV capacity"))

    assert (row.baseline, row.candidate, row.change, row.status) == ("4096", "4096", "1.882 (ratio)", "info")
    assert "| KV capacity (tokens; ratio: per byte) | 4096 | 4096 | 1.882 (ratio) |" in markdown(results)
    assert "KV capacity (tokens; ratio: per byte)" in render_html(results)
