"""`longctx report results.json -o report.html`: the report re-rendered from saved results alone."""

from __future__ import annotations

from pathlib import Path

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
