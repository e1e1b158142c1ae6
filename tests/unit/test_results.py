"""Reading results files: schema_version 2 exactly, with every unknown or missing key named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_longctx.gate.results import (
    SCHEMA_VERSION,
    GateResults,
    ResultsError,
    load_results,
    save_results,
)

FP8_RESULTS = Path(__file__).parents[1] / "data" / "fp8-results.json"


@pytest.fixture
def data() -> dict:
    return json.loads(FP8_RESULTS.read_text())


def _load(tmp_path: Path, data: dict) -> GateResults:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    return load_results(path)


def test_the_fixtures_read_and_write_back_as_the_current_schema(tmp_path: Path, data: dict) -> None:
    # The fixtures were written by version 2, before the load sweep: they read as runs without one.
    assert SCHEMA_VERSION == 3 and data["schema_version"] == 2
    results = load_results(FP8_RESULTS)
    save_results(results, tmp_path / "again.json")
    load_keys = {"goodput_ratio": None, "throughput_ratio": None, "load_ratios": {}, "load_note": None}
    assert json.loads((tmp_path / "again.json").read_text()) == {
        **data, "schema_version": 3, "metrics": {**data["metrics"], **load_keys}, "load_levels": []}


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.update(comment="hand-written"), "top level: unknown keys comment"),
    (lambda d: d.pop("environment"), "top level: missing keys environment"),
    (lambda d: d["cells"][3].update(foundd=True), r"cells\[3\]: unknown keys foundd"),
    (lambda d: d["cells"][0].pop("kv_source"), r"cells\[0\]: missing keys kv_source"),
    (lambda d: (d["metrics"].pop("prefill_tokens"), d["metrics"].update(tokens_per_joule=1.0)),
     "metrics: unknown keys tokens_per_joule; missing keys prefill_tokens"),
    (lambda d: d["decision"].pop("checks"), "decision: missing keys checks"),
    (lambda d: d["decision"]["checks"][1].pop("policy"), r"decision.checks\[1\]: missing keys policy"),
])
def test_unknown_or_missing_keys_are_named(tmp_path: Path, data: dict, edit, message: str) -> None:
    edit(data)
    with pytest.raises(ResultsError, match=message + r"\. Fix: re-run the gate"):
        _load(tmp_path, data)


def test_schema_1_is_refused_with_the_fix(tmp_path: Path, data: dict) -> None:
    data["schema_version"] = 1
    with pytest.raises(ResultsError, match=r"schema_version 1 is older than 2.*Fix: re-run the gate to write the file again"):
        _load(tmp_path, data)
