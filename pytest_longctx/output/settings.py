"""What each side of a gate changes, in words: the settings table of the report and the summaries."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..gate.results import GateResults

NA = "n/a"
NONE = "—"


def fmt_value(value: Any) -> str:
    """Any recorded value: strings as they are, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


# The settings a side can change, in the order a reader meets them, with what a side that leaves one alone gets.
_SETTING_DEFAULTS: dict[str, str] = {
    "backend": "in-process (transformers)",
    "model": "the gate's",
    "dtype": "the gate's",
    "attn_implementation": "the model's default",
    "rope": "the model's own",
    "attention": "full",
    "kv_cache_dtype": "auto",
    "kv_scale": "token_head",
    "packing": "given",
    "history": "whole conversation",
    "retrieval": "none (whole context)",
    "planted": "none",
}
# What a side record written before changes described themselves holds when it changes nothing.
_RECORD_DEFAULTS: dict[str, Any] = {
    "backend": "transformers", "api": "completions", "max_concurrency": 1, "tokenizer": "local", "kv_cache_dtype": "auto",
    "kv_scale": "token_head", "packing": "given", "planted_decode_delay": 0.0, "planted_kv_copies": 1,
}


@dataclass(frozen=True)
class SettingRow:
    """One setting of the change under test: what each side runs with; `*_default` when a side leaves it alone."""

    setting: str
    baseline: str
    candidate: str
    baseline_default: bool
    candidate_default: bool


def describe_variant(spec: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """(setting, text) for each setting a recorded side changes from the defaults, in `_SETTING_DEFAULTS` order.

    Reads `VariantSpec.to_dict()` records, where each change described itself; a record without descriptions
    shows each setting it holds as recorded, so nothing is ever hidden.
    """
    described = spec.get("described")
    if isinstance(described, list):  # each change describes itself (results since changes became components)
        return tuple((str(row[0]), str(row[1])) for row in described if isinstance(row, (list, tuple)) and len(row) == 2)
    # Anything else (a record without descriptions, or a key added later): each setting as recorded, never hidden.
    return tuple(
        (str(key), fmt_value(value)) for key, value in spec.items()
        if key not in ("name", "changes") and value not in (None, False, {}, [], ()) and _RECORD_DEFAULTS.get(key) != value
    )


def _sides(results: GateResults) -> tuple[tuple[str, Mapping[str, Any]], ...]:
    out = []
    for role in ("baseline", "candidate"):
        spec = results.gate.get(role, {})
        spec = spec if isinstance(spec, Mapping) else {}
        out.append((str(spec.get("name", role)), spec))
    return tuple(out)


def setting_rows(results: GateResults) -> tuple[SettingRow, ...]:
    """The change under test as a table: every setting either side changes, with both sides' values."""
    (_, base), (_, cand) = _sides(results)
    b, c = dict(describe_variant(base)), dict(describe_variant(cand))
    order = list(_SETTING_DEFAULTS) + sorted((set(b) | set(c)) - set(_SETTING_DEFAULTS))
    return tuple(
        SettingRow(key, b.get(key, _SETTING_DEFAULTS.get(key, NONE)), c.get(key, _SETTING_DEFAULTS.get(key, NONE)),
                   key not in b, key not in c)
        for key in order if key in b or key in c
    )


def variant_settings(results: GateResults) -> tuple[tuple[str, str], ...]:
    """(name, "rope yarn factor 4 (original 8192); kv_cache_dtype fp8_e4m3") for the baseline and the candidate.

    Only what a side changes is listed ("defaults" when nothing); planted regressions only when planted.
    """
    return tuple(
        (name, "; ".join(f"{k} {v}" for k, v in describe_variant(spec)) or "defaults") for name, spec in _sides(results)
    )
