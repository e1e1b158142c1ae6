"""The plugin's state for one pytest run: the gate runs, their items, outputs, summary and exit status."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .gate.results import CellResult, GateResults, TimingSample
from .gate.spec import GateError, GateSpec, load_gate


@dataclass
class LongctxSession:
    gates: list[GateSpec]
    report: Path | None = None
    json_path: Path | None = None
    runs: dict[str, Any] = field(default_factory=dict)
    finished: list[tuple[GateResults, list[Path]]] = field(default_factory=list)
    capture: bool = False
    overwrite_baseline: bool = False
    captures: list[str] = field(default_factory=list)

    @classmethod
    def from_options(
        cls, paths: list[str], *, report: str | None, json_path: str | None, model: str | None, base_dir: Path,
        rootdir: Path | None = None, capture: bool = False, overwrite_baseline: bool = False,
    ) -> LongctxSession:
        """Load every gate and run the start-up checks (gate/preflight.py) before any model loads; GateError if not."""
        from .gate import preflight

        gates = [load_gate(base_dir / p, base_dir=base_dir) for p in paths]
        if model:
            gates = [g.with_model(model) for g in gates]
        names = [g.name for g in gates]
        if len(set(names)) != len(names):
            raise GateError(f"two gates share a name ({', '.join(names)}); Fix: give each gate file a distinct `name:`")
        for gate in gates:
            preflight.check_gate(gate, model_option=model)
            preflight.check_capture(gate, capture=capture, overwrite=overwrite_baseline)

        def resolve(p: str | Path | None) -> Path | None:
            return None if p is None else base_dir / p

        session = cls(gates, report=resolve(report), json_path=resolve(json_path), capture=capture, overwrite_baseline=overwrite_baseline)
        preflight.check_outputs(session.planned_outputs(base_dir), roots=[rootdir or base_dir, base_dir])
        for gate in gates:  # after the paths: a results file over the capture is the first thing to say
            preflight.check_capture_readable(gate, capture=capture)
        return session

    def output_paths(self, gate: GateSpec) -> tuple[Path, Path]:
        """Command-line paths win over the gate's; with several gates each file gets the gate's name."""
        def pick(cli: Path | None, own: Path | None, suffix: str) -> Path:
            if cli is not None:
                return cli if len(self.gates) == 1 else cli.with_name(f"{cli.stem}-{gate.name}{cli.suffix}")
            if own is not None:
                return own
            return Path("reports") / f"{gate.name}{suffix}"

        report = pick(self.report, gate.report, ".html")
        json_default = gate.results if gate.results is not None or self.json_path is not None else report.with_suffix(".json")
        return report, pick(self.json_path, json_default, ".json")

    def planned_outputs(self, base_dir: Path) -> list[Any]:
        """Every file this run reads or writes per gate, absolute, with how it was set (for preflight.check_outputs)."""
        from .gate.capture import capture_path
        from .gate.preflight import Output

        def absolute(path: Path) -> Path:
            return path if path.is_absolute() else base_dir / path

        planned = []
        for gate in self.gates:
            report, json_path = self.output_paths(gate)
            if gate.path is not None:
                planned.append(Output(gate, "gate", absolute(gate.path), "the gate file", "gate"))
                planned.append(Output(gate, "capture", absolute(capture_path(gate)), "key 'captured_baseline'" if gate.captured_baseline
                                      else "the default capture path (beside the gate file)",
                                      "gate" if gate.captured_baseline else "default"))
            beside = "the results JSON, beside the report"  # a results path set by where the report goes
            if self.json_path is not None:
                planned.append(Output(gate, "results", absolute(json_path), "--longctx-json", "cli"))
            elif gate.results is not None:
                planned.append(Output(gate, "results", absolute(json_path), "key 'results'", "gate"))
            elif self.report is not None:
                planned.append(Output(gate, "results", absolute(json_path), "--longctx-report", "cli", note=beside))
            elif gate.report is not None:
                planned.append(Output(gate, "results", absolute(json_path), "key 'report'", "gate", note=beside))
            else:
                planned.append(Output(gate, "results", absolute(json_path), "the default results path (reports/<name>.json)", "default"))
            if self.report is not None:
                planned.append(Output(gate, "report", absolute(report), "--longctx-report", "cli"))
            elif gate.report is not None:
                planned.append(Output(gate, "report", absolute(report), "key 'report'", "gate"))
            else:
                planned.append(Output(gate, "report", absolute(report), "the default report path (reports/<name>.html)", "default"))
        return planned

    def __post_init__(self) -> None:
        # Runs exist from start-up, not from collection: under xdist the controller collects nothing,
        # yet it is the one that records every worker's cells and decides.
        from .gate.run import GateRun

        for gate in self.gates:
            log_dir = self.output_paths(gate)[0].parent
            self.runs.setdefault(gate.name, GateRun(gate, capture=self.capture, log_dir=log_dir))

    def items(self, session: Any) -> list[Any]:
        from .items import make_gate_items

        return [item for gate in self.gates for item in make_gate_items(session, self.runs[gate.name])]

    def record(self, nodeid: str, user_properties: list[tuple[str, Any]]) -> None:
        from .gate.results import load_level_from_dict
        from .items import CELL_PROPERTY, LOAD_PROPERTY, LOSS_PROPERTY, TIMING_PROPERTY

        gate_name = nodeid.split("::", 1)[0]
        run = self.runs.get(gate_name)
        for name, value in user_properties:
            if run is not None and name == CELL_PROPERTY:
                run.record(CellResult.from_dict(value))
            elif run is not None and name == TIMING_PROPERTY:
                run.record_samples([TimingSample.from_dict(v) for v in value])
            elif run is not None and name == LOSS_PROPERTY:
                run.record_loss(value)
            elif run is not None and name == LOAD_PROPERTY:
                run.record_load(load_level_from_dict(value))

    def finish(self) -> int:
        """Decide every gate, write its outputs; return 0 when all approve, else 1."""
        from .gate.run import write_outputs

        status = 0
        for gate in self.gates:
            run = self.runs.get(gate.name)
            if run is None:
                continue
            if self.capture:
                status |= self._write_capture(run)
                continue
            results = run.results()
            report, json_path = self.output_paths(gate)
            self.finished.append((results, write_outputs(results, report=report, json_path=json_path)))
            status |= 0 if results.decision.approved else 1
        from .output.summary import append_step_summary

        append_step_summary(self.finished, os.environ.get("GITHUB_STEP_SUMMARY"))  # GitHub Actions' job summary
        return status

    def close(self) -> None:
        """Stop whatever the runs started (servers of served variants); idempotent."""
        for run in self.runs.values():
            run.close()

    def _write_capture(self, run: Any) -> int:
        from .gate.capture import CaptureError, capture_path, write_capture

        path = capture_path(run.gate)
        try:
            write_capture(run.captured(), path, overwrite=self.overwrite_baseline)
        except CaptureError as exc:
            self.captures.append(f"gate {run.gate.name}: baseline NOT captured: {exc}")
            return 1
        self.captures.append(f"gate {run.gate.name}: captured baseline written to {path}")
        return 0

    def summary_lines(self) -> list[str]:
        from .output.escape import one_line
        from .output.summary import terminal_lines

        lines = [one_line(line) for line in self.captures]  # an error's text may quote a path or a value
        for results, written in self.finished:
            lines.extend(terminal_lines(results, written))
        return lines

    def junit_properties(self) -> list[tuple[str, str]]:
        """Each decided gate's verdict, checks and metrics, for `--junitxml` readers."""
        from .output.summary import junit_properties

        return [prop for results, _ in self.finished for prop in junit_properties(results)]
