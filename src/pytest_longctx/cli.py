"""The `longctx` command: re-render a report, recompute a decision from its cells, or plan KV capacity (`kv`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="longctx", description="pytest-longctx results and capacity-planning tools")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="render the HTML report of a results JSON file")
    report.add_argument("results", type=Path)
    report.add_argument("-o", "--output", type=Path, required=True, help="where to write the HTML")
    decide = commands.add_parser("decide", help="recompute the decision from the cells of a results JSON file")
    decide.add_argument("results", type=Path)
    from .kv_command import add_parser as add_kv_parser

    add_kv_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "kv":
        from .kv_command import run as run_kv

        return run_kv(args)

    from .results import load_results

    try:
        results = load_results(args.results)
    except (OSError, ValueError, KeyError) as exc:
        print(f"longctx: cannot read {args.results}: {exc}", file=sys.stderr)
        return 2
    if args.command == "report":
        from .report import write_html

        write_html(results, args.output)
        print(f"wrote {args.output}")
        return 0
    from .decision import evaluate
    from .gate_spec import GateSpec

    gate = GateSpec.from_dict(results.gate)
    _, decision = evaluate(gate, results.cells, fingerprint_mismatches=results.metrics.fingerprint_mismatches)
    print(json.dumps(decision.to_dict(), indent=2))
    if decision.to_dict() != results.decision.to_dict():
        print(f"longctx: the recorded verdict {results.decision.verdict!r} does not match the cells", file=sys.stderr)
        return 3
    return 0 if decision.approved else 1


if __name__ == "__main__":
    raise SystemExit(main())
