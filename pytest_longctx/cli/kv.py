"""`longctx kv`: KV-cache capacity planning from explicit numbers or a config.json, without loading weights."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..capacity.kv_budget import GIB, KvBudget, dtype_name, format_bytes

COMPARED_DTYPES = ("fp32", "bf16", "fp8")


def _positive(convert: type[int] | type[float], what: str) -> Callable[[str], int | float]:
    """An argparse `type=`: a positive number (underscores allowed), so bad input fails at parse time."""

    def parse(text: str) -> int | float:
        try:
            value = convert(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
        return value

    return parse


_positive_int = _positive(int, "a whole number")
_positive_float = _positive(float, "a number")


def _dtype(text: str) -> str:
    try:
        return dtype_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(commands: Any) -> None:
    kv = commands.add_parser(
        "kv", help="KV-cache size per token and sequence, and sequences admitted by a memory budget",
        description="KV-cache capacity planning: explicit numbers, or the config.json of a Hugging Face causal LM "
                    "(GQA, MQA, MHA; sliding-window layers counted at their window). Explicit numbers override the config.",
    )
    kv.add_argument("--config", type=Path, metavar="PATH", help="a config.json, or a model directory holding one")
    kv.add_argument("--layers", type=_positive_int, help="transformer layers that keep a KV cache")
    kv.add_argument("--kv-heads", type=_positive_int, help="key/value heads per layer (1 for MQA)")
    kv.add_argument("--head-dim", type=_positive_int, help="dimension of one head")
    kv.add_argument("--heads", type=_positive_int, help="attention (query) heads, to compare with MHA")
    kv.add_argument("--window", type=_positive_int, help="a sliding window on every layer (tokens kept per layer)")
    kv.add_argument("--tokens", type=_positive_int, required=True, help="tokens per sequence (prompt + generated)")
    kv.add_argument("--dtype", type=_dtype, default=None,
                    help="KV element type: fp32, bf16, fp16, fp8, int8, int4 (default: the config's dtype, else bf16)")
    kv.add_argument("--concurrent", type=_positive_int, default=1, metavar="N", help="sequences held at once")
    kv.add_argument("--budget-gib", type=_positive_float, metavar="GIB", help="KV memory budget in GiB: prints admitted sequences")
    kv.add_argument("--json", action="store_true", help="print the figures as JSON")


def budget_from_args(args: argparse.Namespace) -> KvBudget:
    """Explicit numbers, on top of the config when one is given."""
    import dataclasses

    if args.config is not None:
        path = args.config / "config.json" if args.config.is_dir() else args.config
        budget = KvBudget.from_json(path, dtype=args.dtype)
        shape = budget.shape
        overrides = {k: v for k, v in (("layers", args.layers), ("kv_heads", args.kv_heads), ("head_dim", args.head_dim),
                                       ("attention_heads", args.heads)) if v is not None}
        if overrides:
            shape = dataclasses.replace(shape, **overrides)
            windows = budget.windows if budget.windows is None or len(budget.windows) == shape.layers else None
            budget = dataclasses.replace(budget, shape=shape, windows=windows)
        if args.window is not None:
            budget = dataclasses.replace(budget, windows=(args.window,) * shape.layers)
        return budget
    missing = [flag for flag, value in (("--layers", args.layers), ("--kv-heads", args.kv_heads), ("--head-dim", args.head_dim))
               if value is None]
    if missing:
        raise ValueError(f"give --config PATH, or all of --layers, --kv-heads and --head-dim (missing: {', '.join(missing)})")
    return KvBudget.from_numbers(layers=args.layers, kv_heads=args.kv_heads, head_dim=args.head_dim,
                                 attention_heads=args.heads, dtype=args.dtype or "bf16", window=args.window)


def figures(budget: KvBudget, *, tokens: int, concurrent: int, budget_gib: float | None, heads_known: bool) -> dict[str, Any]:
    """Every number `longctx kv` prints, as plain data."""
    shape = budget.shape
    data: dict[str, Any] = {
        "layers": shape.layers, "kv_heads": shape.kv_heads, "head_dim": shape.head_dim,
        "attention_heads": shape.attention_heads if heads_known else None,
        "dtype": budget.dtype, "bytes_per_element": budget.bytes_per_element, "tokens": tokens,
        "windowed_layers": sum(w is not None for w in budget.windows) if budget.windows else 0,
        "bytes_per_token": budget.bytes_per_token(),
        "sequence_bytes": budget.sequence_bytes(tokens),
        "concurrent": concurrent,
        "total_bytes": budget.total_bytes(tokens, concurrent),
        "by_dtype": {d: budget.sequence_bytes(tokens, d) for d in COMPARED_DTYPES},
    }
    if heads_known and shape.kv_heads != shape.attention_heads:
        data["mha_sequence_bytes"] = budget.mha().sequence_bytes(tokens)
        data["relative_to_mha"] = budget.relative_to_mha()
    if budget_gib is not None:
        memory = budget_gib * GIB
        data["budget_bytes"] = int(memory)
        data["admitted_sequences"] = budget.admitted_sequences(memory, tokens)
        data["admitted_by_dtype"] = {d: budget.admitted_sequences(memory, tokens, d) for d in COMPARED_DTYPES}
        data["fits"] = data["total_bytes"] <= memory
    return data


def render(data: dict[str, Any]) -> list[str]:
    tokens = f"{data['tokens']:,} tokens"
    size = format_bytes
    heads = f", {data['attention_heads']} attention heads" if data["attention_heads"] else ""
    elem = data["bytes_per_element"]
    lines = [
        f"KV cache: {data['layers']} layers x {data['kv_heads']} KV heads x head dim {data['head_dim']}{heads}, "
        f"{data['dtype']} ({elem:g} byte{'s' if elem != 1 else ''} per element)",
    ]
    if data["windowed_layers"]:
        lines.append(f"sliding window: {data['windowed_layers']} of {data['layers']} layers keep at most their window")
    lines += [
        f"per token:      {size(data['bytes_per_token'])} ({data['bytes_per_token']:,.0f} bytes)",
        f"per sequence:   {size(data['sequence_bytes'])} at {tokens} ({data['sequence_bytes']:,} bytes)",
    ]
    if data["concurrent"] > 1:
        lines.append(f"{data['concurrent']} concurrent:   {size(data['total_bytes'])}")
    lines.append("by dtype:       " + " | ".join(f"{d} {size(n)}" for d, n in data["by_dtype"].items()))
    if "mha_sequence_bytes" in data:
        lines.append(f"vs MHA:         {size(data['mha_sequence_bytes'])} per sequence with {data['attention_heads']} KV heads "
                     f"(this layout stores {data['relative_to_mha']:.4g}x)")
    if "budget_bytes" in data:
        admitted = data["admitted_sequences"]
        others = ", ".join(f"{d}: {n}" for d, n in data["admitted_by_dtype"].items() if d != data["dtype"])
        lines.append(f"budget {size(data['budget_bytes'])}: admits {admitted} sequence{'s' if admitted != 1 else ''} "
                     f"of {tokens} ({others})")
        if data["concurrent"] > 1:
            verdict = "fit" if data["fits"] else f"do not fit (need {size(data['total_bytes'])})"
            lines.append(f"{data['concurrent']} concurrent sequences {verdict}")
    return lines


def run(args: argparse.Namespace) -> int:
    """Print the figures; exit 1 when `--concurrent` sequences do not fit `--budget-gib`, 2 on bad input."""
    try:
        budget = budget_from_args(args)
    except ValueError as exc:
        print(f"longctx kv: {exc}", file=sys.stderr)
        return 2
    heads_known = args.config is not None or args.heads is not None
    data = figures(budget, tokens=args.tokens, concurrent=args.concurrent, budget_gib=args.budget_gib, heads_known=heads_known)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print("\n".join(render(data)))
    return 0 if data.get("fits", True) else 1
