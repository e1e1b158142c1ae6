"""Reading results files: schema_version 4, and 2 and 3 without the keys added since; every unknown or missing key named."""

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


def test_the_fixtures_are_the_current_schema_and_round_trip(tmp_path: Path, data: dict) -> None:
    assert SCHEMA_VERSION == 4 and data["schema_version"] == 4
    results = load_results(FP8_RESULTS)
    save_results(results, tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == data


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


def test_a_schema_2_record_reads_without_the_keys_added_since(tmp_path: Path, data: dict) -> None:
    served = {key: data["metrics"].pop(key) for key in ("cold_check", "kv_engine", "kv_capacity_tokens", "kv_capacity_ratio")}
    load = {key: data["metrics"].pop(key) for key in ("goodput_ratio", "throughput_ratio", "load_ratios", "load_note")}
    del data["load_levels"]
    for cell in data["cells"]:
        for key in ("cold_check", "kv_capacity_tokens", "kv_capacity_bytes", "kv_slots"):
            del cell[key]
    data["schema_version"] = 2

    results = _load(tmp_path, data)

    assert all(c.cold_check == "n/a" and c.kv_capacity_tokens is None for c in results.cells)
    assert results.metrics.kv_engine == {} and results.metrics.kv_capacity_ratio is None
    assert results.load_levels == () and results.metrics.goodput_ratio is None
    data.update(schema_version=3, load_levels=[])
    data["metrics"].update(load)
    assert _load(tmp_path, data).metrics.load_ratios == load["load_ratios"]
    data["schema_version"] = 4  # the current version must have them
    with pytest.raises(ResultsError, match=r"metrics: missing keys cold_check, kv_engine, kv_capacity_tokens, kv_capacity_ratio"):
        _load(tmp_path, data)
    data["metrics"].update(served)
    data["schema_version"] = 3  # and an older one must not
    with pytest.raises(ResultsError, match=r"metrics: unknown keys"):
        _load(tmp_path, data)
