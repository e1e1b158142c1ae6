"""Does a sequential gate reach the fixed gate's verdict on fewer cells, without more false rejects?

Runs one gate both ways, side by side in one process: fixed (every seed up to max_seeds, one decision) and
sequential (looks of `batch` seeds, stopping once every check is decided). Scenarios: an A/A gate (the
candidate is the baseline) and planted regressions built from it. On the embedded model the cells are measured
(the model loaded once, shared); with `--synthetic` they are drawn from seeded distributions, in seconds.
The last line: `fixed_cells=N sequential_cells=M same_verdict=A/B false_rejects=F/G` (cells summed over every
run, both sides; false rejects are the sequential gate's rejections of A/A runs).

    PYTHONPATH=. python benchmarks/sequential_vs_fixed.py --synthetic --runs 25
    PYTHONPATH=. python benchmarks/sequential_vs_fixed.py --runs 1      # the embedded model, ~minutes per run
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_longctx.gate.decision import evaluate
from pytest_longctx.gate.results import CellResult
from pytest_longctx.gate.spec import GateSpec, VariantSpec, load_gate
from pytest_longctx.gate.sweep import interleaved, plan_cells

PLANTED = {
    "window-64": {"window": 64},
    "decode+25%": {"decode_delay": 0.25},
    "kv-x2": {"kv_copies": 2},
}


def scenario_gates(gate: GateSpec, name: str) -> tuple[GateSpec, GateSpec]:
    """The sequential gate of a scenario (A/A or a planted regression) and its fixed twin over every seed."""
    planted = VariantSpec.of("c", planted=PLANTED[name]).changes if name in PLANTED else ()
    candidate = VariantSpec(gate.candidate.name, (*gate.baseline.changes, *planted))
    sequential = dataclasses.replace(gate, candidate=candidate)
    return sequential, dataclasses.replace(sequential, sweep=dataclasses.replace(gate.sweep, sequential=None))


def synthetic_cells(gate: GateSpec, scenario: str, rnd: random.Random) -> list[CellResult]:
    """Both sides of every cell, drawn so that A/A sides share one distribution (a few answers flip, as on a
    non-deterministic server), and each planted regression moves what it would move on a model."""
    cells = []
    for cell in plan_cells(gate.sweep):
        p = 0.9 if cell.length <= 2048 else 0.65
        base_found = rnd.random() < p
        cand_found = base_found if rnd.random() < 0.92 else rnd.random() < p
        base_lp = rnd.gauss(-1.0, 0.8) if base_found else rnd.gauss(-4.0, 1.0)
        cand_lp = base_lp + rnd.gauss(0.0, 0.05)
        base_s = (0.5 + cell.length / 2048) * math.exp(rnd.gauss(0, 0.05))
        cand_s = base_s * math.exp(rnd.gauss(0, 0.05))
        kv = 24 * 1024 * cell.length
        cand_kv = kv
        if scenario == "window-64":  # evidence outside the window is gone: misses, and a far less likely answer
            cand_found = base_found and rnd.random() < 0.4
            cand_lp = base_lp - 1.5 + rnd.gauss(0.0, 0.3)
        elif scenario == "decode+25%":
            cand_s *= 1.25
        elif scenario == "kv-x2":
            cand_kv = 2 * kv
        for side, found, lp, seconds, kv_bytes in (("baseline", base_found, base_lp, base_s, kv),
                                                   (gate.candidate.name, cand_found, cand_lp, cand_s, cand_kv)):
            name = "baseline" if side == "baseline" else gate.candidate.name
            cells.append(CellResult(
                variant=name, task=cell.task, length=cell.length, tokens=cell.length, depth=cell.depth, seed=cell.seed,
                found=found, answer="4821" if found else "17", expected="4821", prefill_s=seconds * 0.8,
                decode_s_per_token=seconds * 0.01, total_s=seconds, new_tokens=4, kv_bytes=kv_bytes, kv_bytes_analytic=kv,
                kv_tokens=cell.length, peak_bytes=None, prompt_sha256=f"{cell}", answer_logprob=lp,
            ))
    return cells


def measured_cells(gate: GateSpec, backend: Any, *, sequential: bool) -> list[CellResult]:
    """Run the gate as its pytest items would: look by look (skipping decided looks) or the whole sweep."""
    from pytest_longctx.gate.run import GateRun

    run = GateRun(gate, backend_factory=lambda *_: backend)
    looks = gate.sweep.sequential.planned_looks if sequential and gate.sweep.sequential else 1
    for look in range(1, looks + 1):
        if sequential and run.stop_reason(look) is not None:
            break
        for variant, cell in interleaved(gate):
            if not sequential or gate.sweep.sequential is None or gate.sweep.sequential.look_of(cell.seed) == look:
                run.record(run.measure(variant, cell))
        for number in run.timing_passes:
            run.record_samples(run.timing_pass(number, look if sequential else None))
    return run.merged_cells()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gate", type=Path, default=Path(__file__).resolve().parents[1] / "gates" / "fp8.yaml",
                        help="a gate with sweep.sequential (default gates/fp8.yaml)")
    parser.add_argument("--runs", type=int, default=25, help="runs per scenario")
    parser.add_argument("--synthetic", action="store_true", help="simulated cells instead of the model")
    parser.add_argument("--planted", default=",".join(PLANTED), help=f"comma-separated subset of {', '.join(PLANTED)}")
    args = parser.parse_args()

    gate = load_gate(args.gate)
    if gate.sweep.sequential is None:
        parser.error(f"{args.gate}: needs sweep.sequential")
    scenarios = ["aa"] + [p for p in args.planted.split(",") if p]
    cells_for: Callable[[GateSpec, GateSpec, str, int], tuple[list[CellResult], list[CellResult]]]
    if args.synthetic:
        def cells_for(seq: GateSpec, fixed: GateSpec, scenario: str, i: int) -> tuple[list[CellResult], list[CellResult]]:
            drawn = synthetic_cells(fixed, scenario, random.Random(f"{scenario}-{i}"))
            return drawn, drawn  # the sequential gate reads the looks it needs of the same draws
    else:
        from pytest_longctx.gate.run import GateRun

        backend = GateRun(gate).backend()  # loaded and warmed up once, shared by every run

        def cells_for(seq: GateSpec, fixed: GateSpec, scenario: str, i: int) -> tuple[list[CellResult], list[CellResult]]:
            return measured_cells(fixed, backend, sequential=False), measured_cells(seq, backend, sequential=True)

    fixed_cells = sequential_cells = same = total = false_rejects = fixed_false = aa_runs = 0
    for scenario in scenarios:
        seq_gate, fixed_gate = scenario_gates(gate, scenario)
        for i in range(args.runs):
            fixed_run, seq_run = cells_for(seq_gate, fixed_gate, scenario, i)
            _, fixed_decision = evaluate(fixed_gate, fixed_run)
            metrics, seq_decision = evaluate(seq_gate, seq_run)
            used = 2 * sum(1 for c in plan_cells(seq_gate.sweep) if c.seed in metrics.seeds_used)
            fixed_cells += 2 * len(plan_cells(fixed_gate.sweep))
            sequential_cells += used
            total += 1
            same += fixed_decision.verdict == seq_decision.verdict
            if scenario == "aa":
                aa_runs += 1
                false_rejects += seq_decision.verdict == "reject"
                fixed_false += fixed_decision.verdict == "reject"
            print(f"{scenario:10s} run {i + 1}/{args.runs}: fixed {fixed_decision.verdict:12s} sequential "
                  f"{seq_decision.verdict:12s} after look {metrics.looks}/{metrics.planned_looks} ({used} cells)", flush=True)
    print(f"fixed gate false rejects on A/A: {fixed_false}/{aa_runs}")
    print(f"fixed_cells={fixed_cells} sequential_cells={sequential_cells} same_verdict={same}/{total} "
          f"false_rejects={false_rejects}/{aa_runs}")


if __name__ == "__main__":
    main()
