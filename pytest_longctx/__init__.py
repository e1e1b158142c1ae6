"""pytest-longctx: a pytest plugin and CI gate that decides whether a long-context change to an LLM stack may merge."""

from __future__ import annotations

from .capacity.kv_math import KvShape
from .gate.decision import decide, evaluate
from .gate.results import CellResult, Check, Decision, GateResults, Metrics, load_results, save_results
from .gate.run import GateRun
from .gate.spec import GateError, GateSpec, VariantSpec, load_gate, parse_gate

__version__ = "0.2.0"

__all__ = [
    "CellResult",
    "Check",
    "Decision",
    "GateError",
    "GateResults",
    "GateRun",
    "GateSpec",
    "KvShape",
    "Metrics",
    "VariantSpec",
    "__version__",
    "decide",
    "evaluate",
    "load_gate",
    "load_results",
    "parse_gate",
    "save_results",
]
