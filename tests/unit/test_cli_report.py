"""`longctx report results.json -o report.html`: the report re-rendered from saved results alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_longctx.cli.main import main
from pytest_longctx.gate.results import load_results
from pytest_longctx.output.report import render_html

FP8_RESULTS = Path(__file__).parents[1] / "data" / "fp8-results.json"


def test_report_command_rerenders_the_saved_results(tmp_path: Path, capsys) -> None:
    out = tmp_path / "nested" / "report.html"

    assert main(["report", str(FP8_RESULTS), "-o", str(out)]) == 0

    assert out.read_text(encoding="utf-8") == render_html(load_results(FP8_RESULTS))
    assert capsys.readouterr().out.strip() == f"wrote {out}"


def test_report_command_names_a_file_it_cannot_read(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "results.json"
    bad.write_text('{"schema_version": 99}')

    assert main(["report", str(bad), "-o", str(tmp_path / "r.html")]) == 2

    assert f"longctx: cannot read {bad}: results schema_version 99 is not supported" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def _edited(tmp_path: Path, edit) -> Path:
    data = json.loads(FP8_RESULTS.read_text())
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


def _flip_verdict(data: dict) -> None:
    data["decision"]["verdict"] = "approve"


def _flip_check(data: dict) -> None:
    data["decision"]["checks"][0]["passed"] = True


def _flip_a_middle_cell(data: dict) -> None:
    cell = next(c for c in data["cells"] if c["variant"] == "candidate" and c["depth"] == 0.5 and not c["found"])
    cell.update(found=True, failure=None, score=1.0)


@pytest.mark.parametrize(("edit", "fields"), [
    (_flip_verdict, "decision.verdict"),
    (_flip_check, "decision.checks[middle_recall_delta].passed"),
    (_flip_a_middle_cell, "decision.reasons, decision.checks[middle_recall_delta].value"),
])
@pytest.mark.parametrize("command", ["report", "decide"])
def test_a_recorded_decision_the_cells_do_not_give_is_refused(tmp_path: Path, capsys, edit, fields: str, command: str) -> None:
    path = _edited(tmp_path, edit)
    out = tmp_path / "r.html"

    assert main([command, str(path)] + (["-o", str(out)] if command == "report" else [])) == 2

    err = capsys.readouterr().err
    assert err.startswith(f"longctx: {path}: the recorded {fields}")
    assert "disagree" in err and "Fix: re-run the gate" in err
    assert not out.exists()


def test_an_edited_number_that_decides_nothing_is_refused_too(tmp_path: Path, capsys) -> None:
    path = _edited(tmp_path, lambda d: d["metrics"]["recall"].update(candidate=0.99))  # information only, no threshold

    assert main(["report", str(path), "-o", str(tmp_path / "r.html")]) == 2

    assert f"longctx: {path}: the recorded metrics.recall disagrees" in capsys.readouterr().err


def test_decide_prints_the_recomputed_decision_and_exits_by_verdict(capsys) -> None:
    assert main(["decide", str(FP8_RESULTS)]) == 1  # the recorded run rejects fp8
    assert json.loads(capsys.readouterr().out)["verdict"] == "reject"
