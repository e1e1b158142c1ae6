"""The `longctx` command: re-render a report, recompute a decision, plan KV capacity (`kv`), a retrieval path (`plan`) or a
recall check's cells (`power`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .arguments import count as _count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="longctx", description="pytest-longctx results and capacity-planning tools")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="render the HTML report of a results JSON file")
    report.add_argument("results", type=Path)
    report.add_argument("-o", "--output", type=Path, required=True, help="where to write the HTML")
    decide = commands.add_parser("decide", help="recompute the decision from the cells of a results JSON file (exit 0 approve, "
                                                 "1 otherwise, 2 when the file's recorded decision disagrees)")
    decide.add_argument("results", type=Path)
    from .kv import add_parser as add_kv_parser

    add_kv_parser(commands)
    _add_plan_parser(commands)
    from .power import add_parser as add_power_parser

    add_power_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "power":
        from .power import run as run_power

        return run_power(args)
    if args.command == "kv":
        from .kv import run as run_kv

        return run_kv(args)
    if args.command == "plan":
        return _run_plan(args)

    from ..gate.recheck import recompute
    from ..gate.results import load_results

    try:
        recorded = load_results(args.results)
    except (OSError, ValueError, KeyError) as exc:
        print(f"longctx: cannot read {args.results}: {exc}", file=sys.stderr)
        return 2
    results, disagree = recompute(recorded)
    if disagree:
        # A stated verdict the cells do not give is an edited file (or another version's): never render or trust it.
        print(
            f"longctx: {args.results}: the recorded {', '.join(disagree)} "
            f"{'disagrees' if len(disagree) == 1 else 'disagree'} with the decision recomputed from its cells "
            f"(recorded verdict {recorded.decision.verdict!r}, recomputed {results.decision.verdict!r}). "
            "Fix: re-run the gate to write the file again; do not edit results by hand",
            file=sys.stderr,
        )
        return 2
    if args.command == "report":
        from ..output.report import write_html

        write_html(results, args.output)  # the recomputed decision and metrics, not the file's statements
        print(f"wrote {args.output}")
        return 0
    print(json.dumps(results.decision.to_dict(), indent=2))
    return 0 if results.decision.approved else 1




def _add_plan_parser(commands: Any) -> None:
    from ..capacity.planning import ANSWER_TOKENS, DEFAULT_MODEL, LARGE_CORPUS_TOKENS, QUESTION_TOKENS, RETRIEVAL_TOKENS

    plan = commands.add_parser(
        "plan", help="recommend long context, retrieval or hybrid for a corpus and a context limit",
        description="Recommend long_context, retrieval or hybrid (retrieve, then fill the long-context budget), with the "
                    "reasons and each path's prefill tokens and KV bytes. The KV shape comes from --model (default: the "
                    "embedded model, read from its file header), --config, or --layers/--kv-heads/--head-dim.",
    )
    plan.add_argument("--corpus-tokens", type=_count(1), required=True, help="tokens of the whole corpus")
    plan.add_argument("--context-limit", type=_count(1), required=True, help="the context window in tokens")
    plan.add_argument("--global-reasoning", action="store_true",
                      help="the answer weighs evidence spread over the corpus (counting, comparing, summarising)")
    plan.add_argument("--fresh-data", action="store_true", help="the corpus changes between queries (no reusable prefix)")
    plan.add_argument("--queries", type=_count(1), default=1, metavar="N", help="queries over the same corpus (default 1)")
    plan.add_argument("--question-tokens", type=_count(0), default=QUESTION_TOKENS, metavar="N",
                      help=f"tokens of each question (default {QUESTION_TOKENS})")
    plan.add_argument("--answer-tokens", type=_count(0), default=ANSWER_TOKENS, metavar="N",
                      help=f"tokens of each answer (default {ANSWER_TOKENS})")
    plan.add_argument("--retrieval-tokens", type=_count(1), default=RETRIEVAL_TOKENS, metavar="N",
                      help=f"context tokens retrieval puts in the prompt, top_k x chunk_tokens (default {RETRIEVAL_TOKENS})")
    plan.add_argument("--large-corpus-tokens", type=_count(1), default=LARGE_CORPUS_TOKENS, metavar="N",
                      help=f"from this size, fresh data favours retrieval (default {LARGE_CORPUS_TOKENS})")
    plan.add_argument("--model", default=None, metavar="REF",
                      help=f"a model reference whose config gives the KV shape (default {DEFAULT_MODEL})")
    plan.add_argument("--config", type=Path, metavar="PATH", help="a config.json, or a model directory holding one")
    plan.add_argument("--layers", type=_count(1), help="transformer layers that keep a KV cache")
    plan.add_argument("--kv-heads", type=_count(1), help="key/value heads per layer")
    plan.add_argument("--head-dim", type=_count(1), help="dimension of one head")
    plan.add_argument("--heads", type=_count(1), help="attention (query) heads")
    plan.add_argument("--window", type=_count(1), help="a sliding window on every layer")
    plan.add_argument("--dtype", default=None,
                      help="KV element type: fp32, bf16, fp16, fp8, ... (default: the config's, else bf16)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")


def _run_plan(args: argparse.Namespace) -> int:
    """Print the plan; exit 2 on input that cannot be planned."""
    from ..backends.loading import ModelLoadError
    from ..capacity.planning import plan, render_plan

    explicit = any(v is not None for v in (args.config, args.layers, args.kv_heads, args.head_dim))
    try:
        if explicit and args.model is not None:
            raise ValueError("give --model, or --config / --layers --kv-heads --head-dim, not both")
        if explicit:
            from .kv import budget_from_args

            kv: Any = budget_from_args(args)
        else:
            kv = args.model
        result = plan(
            args.corpus_tokens, args.context_limit, global_reasoning=args.global_reasoning, fresh_data=args.fresh_data,
            repeated_queries=args.queries, kv_shape=kv, kv_dtype=args.dtype, question_tokens=args.question_tokens,
            answer_tokens=args.answer_tokens, retrieval_tokens=args.retrieval_tokens,
            large_corpus_tokens=args.large_corpus_tokens,
        )
    except (ValueError, OSError) as exc:
        print(f"longctx plan: {exc}", file=sys.stderr)
        return 2
    except ModelLoadError as exc:
        print(f"longctx plan: {exc}; or pass --layers/--kv-heads/--head-dim", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=2) if args.json else "\n".join(render_plan(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
