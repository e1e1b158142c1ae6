"""What a gate run tells CI besides its exit status: the terminal table, GitHub's job summary and JUnit properties."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from pytest_longctx.gate.results import load_results
from pytest_longctx.output.summary import markdown


def test_a_gate_run_reports_to_the_terminal_the_job_summary_and_junit(pytester, write_gate, tiny_model_dir, monkeypatch):
    summary = pytester.path / "step-summary.md"
    summary.write_text("# earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))  # the pytester subprocess inherits it
    gate = write_gate(baseline={"kv_cache_dtype": "fp8"}, candidate={"kv_cache_dtype": "auto"})  # memory 3.2x: reject

    result = pytester.runpytest("--longctx-gate", str(gate), "--longctx-model", str(tiny_model_dir), "-p", "no:cacheprovider",
                                "--longctx-json", "out/r.json", "--junitxml", "out/junit.xml")

    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "*gate tiny: REJECT (6/6 cells paired)*",
        "*metric*baseline*candidate*ratio / delta*CI*threshold*result",
        "*middle-band recall*>= 0.00*",
        "*memory (kv_bytes)*3.200 (ratio)*<= 1.05*FAIL",
        "*FAIL memory (kv_bytes)*ratio 3.200*",
    ])
    results = load_results(pytester.path / "out" / "r.json")
    text = summary.read_text()
    assert text.startswith("# earlier step\n")
    assert markdown(results, [pytester.path / "out" / "r.json", Path("reports/tiny.html")]) in text

    root = ET.parse(pytester.path / "out" / "junit.xml").getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["longctx.tiny.verdict"] == "reject"
    assert props["longctx.tiny.check.memory_ratio.passed"] == "false"
    assert float(props["longctx.tiny.check.memory_ratio.value"]) == results.metrics.memory_ratio
    assert float(props["longctx.tiny.metric.memory_bytes.baseline"]) == results.metrics.memory_bytes["baseline"]
    # Each cell still carries its own record, which is how results travel from workers to the controller.
    case = suite.find("testcase")
    cell = {p.get("name"): p.get("value") for p in case.find("properties")}
    assert "longctx_cell" in cell and "'variant'" in cell["longctx_cell"]
    assert len(suite.findall("testcase")) == 12
    json.loads((pytester.path / "out" / "r.json").read_text())  # the JSON is complete, not cut off by the summary
