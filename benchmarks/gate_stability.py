"""Does the gate approve an unchanged config every time, and reject planted regressions every time?

Runs the A/A gate (default gates/aa.yaml) N times and each planted regression built from it N times, in one
process with the model loaded once, and ends with one line: `aa_approved=A/N planted_rejected=R/M`.

    python benchmarks/gate_stability.py --runs 10
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from pytest_longctx.backends.in_process import Backend
from pytest_longctx.gate.run import GateRun
from pytest_longctx.gate.spec import GateSpec, VariantSpec, load_gate
from pytest_longctx.gate.sweep import interleaved

PLANTED = {  # the candidate's `planted:` setting of each self-check
    "decode+25%": {"decode_delay": 0.25},
    "window-64": {"window": 64},
    "kv-x2": {"kv_copies": 2},
}


def run_gate(gate: GateSpec, backend: Backend) -> tuple[str, str]:
    """As the pytest items run: per look (a sequential gate stops once a look decides), the recall pass, then
    timing passes 2..repeats over that look's cells."""
    run = GateRun(gate, backend_factory=lambda *_: backend)
    sequential = gate.sweep.sequential
    for look in range(1, (sequential.planned_looks if sequential else 1) + 1):
        if run.stop_reason(look) is not None:
            break
        for variant, cell in interleaved(gate):
            if sequential is None or sequential.look_of(cell.seed) == look:
                run.record(run.measure(variant, cell))
        for number in run.timing_passes:
            run.record_samples(run.timing_pass(number, look if sequential else None))
    results = run.results()
    m = results.metrics
    seeds = f" seeds {list(m.seeds_used)}" if m.seeds_used else ""
    summary = (
        f"recall {m.middle_recall['baseline']:.2f}->{m.middle_recall['candidate']:.2f} "
        f"p95 {m.p95_latency_ratio:.3f} decode {m.p95_decode_ratio:.3f} memory {m.memory_ratio:.2f}{seeds}"
    )
    undecided = [f"{c.name} {c.value:.3f} ({c.ci_low:.3f}..{c.ci_high:.3f})" for c in results.decision.checks
                 if c.state == "undecided" and c.value is not None and c.ci_low is not None and c.ci_high is not None]
    if undecided:
        summary += " undecided: " + ", ".join(undecided)
    return results.decision.verdict, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gate", type=Path, default=Path(__file__).resolve().parents[1] / "gates" / "aa.yaml")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--planted", default=",".join(PLANTED), help=f"comma-separated subset of {', '.join(PLANTED)}")
    args = parser.parse_args()

    gate = load_gate(args.gate)
    backend = GateRun(gate).backend()  # loaded and warmed up once, shared by every run
    approved = rejected = total_planted = 0
    started = time.perf_counter()
    for i in range(args.runs):
        verdict, summary = run_gate(gate, backend)
        approved += verdict == "approve"
        print(f"aa run {i + 1}/{args.runs}: {verdict:10s} {summary}", flush=True)
    for name in [p for p in args.planted.split(",") if p]:
        candidate = VariantSpec(gate.candidate.name, (*gate.candidate.changes, *VariantSpec.of("c", planted=PLANTED[name]).changes))
        planted = dataclasses.replace(gate, name=f"{gate.name}-{name}", candidate=candidate)
        for i in range(args.runs):
            verdict, summary = run_gate(planted, backend)
            rejected += verdict == "reject"
            total_planted += 1
            print(f"{name} run {i + 1}/{args.runs}: {verdict:10s} {summary}", flush=True)
    print(f"wall {time.perf_counter() - started:.0f} s")
    print(f"aa_approved={approved}/{args.runs} planted_rejected={rejected}/{total_planted}")


if __name__ == "__main__":
    main()
