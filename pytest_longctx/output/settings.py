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
_DESCRIBED = {"name", "changes", "described", "model", "dtype", "attn_implementation", "rope", "attention", "kv_cache_dtype", "kv_scale",
              "packing", "history", "retrieval", "planted_decode_delay", "planted_kv_copies", "planted_window",
              "backend", "base_urls", "launch", "api", "max_concurrency", "tokenizer", "kv_bytes_per_element"}


@dataclass(frozen=True)
class SettingRow:
    """One setting of the change under test: what each side runs with; `*_default` when a side leaves it alone."""

    setting: str
    baseline: str
    candidate: str
    baseline_default: bool
    candidate_default: bool


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _rope_text(rope: Mapping[str, Any]) -> str:
    """"yarn factor 4 (original 8192), max_position_embeddings 32768" from a recorded RopeSettings."""
    params = dict(rope.get("rope_parameters") or {})
    kind = params.pop("rope_type", None)
    parts = []
    if kind is None:
        parts.append("the model's own")
    else:
        head = str(kind)
        if "factor" in params:
            head += f" factor {_num(params.pop('factor'))}"
        if "original_max_position_embeddings" in params:
            head += f" (original {params.pop('original_max_position_embeddings')})"
        parts.append(head)
        for key, value in sorted(params.items()):
            shown = f"[{len(value)} values]" if isinstance(value, (list, tuple)) else _num(value)
            parts.append(f"{key} {shown}")
    if rope.get("max_position_embeddings") is not None:
        parts.append(f"max_position_embeddings {rope['max_position_embeddings']}")
    return ", ".join(parts)


def _attention_text(attention: Mapping[str, Any]) -> str:
    sinks = int(attention.get("sink_tokens", 0) or 0)
    tail = f" + {sinks} sink{'s' if sinks != 1 else ''}" if sinks else ", no sinks"
    return f"window {attention.get('window')}{tail}"


def _retrieval_text(retrieval: Mapping[str, Any]) -> str:
    method, chunk = retrieval.get("method"), retrieval.get("chunk_tokens")
    if retrieval.get("budget_tokens") is not None:
        picked = f"best chunks of {chunk} tokens up to {retrieval['budget_tokens']} tokens"
    else:
        picked = f"top {retrieval.get('top_k')} chunks of {chunk} tokens"
    return f"{method}, {picked}, order {retrieval.get('order')}"


def _model_text(model: Mapping[str, Any]) -> str:
    extras = [f"{k} {model[k]}" for k in ("dtype", "device") if model.get(k) not in (None, "auto")]
    extras += ["trust_remote_code"] if model.get("trust_remote_code") else []
    return str(model.get("ref", NA)) + (f" ({', '.join(extras)})" if extras else "")


def describe_variant(spec: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """(setting, text) for each setting a recorded side changes from the defaults, in `_SETTING_DEFAULTS` order.

    Reads `VariantSpec.to_dict()` records, old (kv_cache_dtype and planted_* only) and new; keys this module does
    not know are shown as they are, so a setting added later is never hidden.
    """
    described = spec.get("described")
    if isinstance(described, list):  # each change describes itself (results since changes became components)
        return tuple((str(row[0]), str(row[1])) for row in described if isinstance(row, (list, tuple)) and len(row) == 2)
    shown: dict[str, str] = {}
    if spec.get("backend", "transformers") != "transformers":
        launch = spec.get("launch")
        where = f"launched: {launch.get('command')}" if isinstance(launch, Mapping) else ", ".join(spec.get("base_urls") or ())
        extras = [f"api {spec['api']}"] if spec.get("api", "completions") != "completions" else []
        extras += [f"{spec['max_concurrency']} in flight"] if spec.get("max_concurrency", 1) != 1 else []
        extras += ["the engine's tokenizer"] if spec.get("tokenizer", "local") == "server" else []
        if spec.get("kv_bytes_per_element") is not None:
            extras.append(f"KV {_num(spec['kv_bytes_per_element'])} bytes/element")
        shown["backend"] = f"{spec['backend']} ({where})" + "".join(f", {e}" for e in extras)
    if isinstance(spec.get("model"), Mapping):
        shown["model"] = _model_text(spec["model"])
    for key in ("dtype", "attn_implementation"):
        if spec.get(key) is not None:
            shown[key] = str(spec[key])
    if isinstance(spec.get("rope"), Mapping):
        shown["rope"] = _rope_text(spec["rope"])
    if isinstance(spec.get("attention"), Mapping):
        shown["attention"] = _attention_text(spec["attention"])
    for key in ("kv_cache_dtype", "kv_scale", "packing"):
        if spec.get(key, _SETTING_DEFAULTS[key]) != _SETTING_DEFAULTS[key]:
            shown[key] = str(spec[key])
    if isinstance(spec.get("history"), Mapping):
        shown["history"] = f"budget {spec['history'].get('budget')} tokens, {spec['history'].get('policy')}"
    if isinstance(spec.get("retrieval"), Mapping):
        shown["retrieval"] = _retrieval_text(spec["retrieval"])
    planted = []
    if spec.get("planted_decode_delay"):
        planted.append(f"decode delay {_num(spec['planted_decode_delay'])}")
    if spec.get("planted_kv_copies", 1) not in (None, 1):
        planted.append(f"{spec['planted_kv_copies']} KV copies")
    if spec.get("planted_window") is not None:
        planted.append(f"window {spec['planted_window']}")
    if planted:
        shown["planted"] = ", ".join(planted)
    for key, value in spec.items():
        if key not in _DESCRIBED and value not in (None, False, {}, [], ()):
            shown[key] = fmt_value(value)
    return tuple(shown.items())


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
