"""The model a gate, or one side of it (a model swap), runs: its reference and how it loads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ..gate.limits import shown
from .errors import ChangeError, settings_mapping

ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]
DEFAULT_MODEL = "embedded:smollm2-135m-instruct"


@dataclass(frozen=True)
class ModelSpec:
    ref: str = DEFAULT_MODEL
    dtype: ModelDtype = "auto"
    device: Device = "auto"
    trust_remote_code: bool = False


def parse_model(raw: Any, key: str) -> ModelSpec:
    """A `model:` value (a reference, or {ref, dtype, device, trust_remote_code}); ChangeError names `key.*`."""
    if raw is None:
        return ModelSpec()
    if isinstance(raw, str):
        return ModelSpec(ref=_reference(raw, key))
    if not isinstance(raw, Mapping):
        raise ChangeError(key, f"expected a reference or a mapping, got {type(raw).__name__}", "write model: <ref> or model: {ref: ...}")
    settings_mapping(raw, key, ("ref", "dtype", "device", "trust_remote_code"), "write model: <ref> or model: {ref: ...}")
    ref = _reference(raw.get("ref", DEFAULT_MODEL), f"{key}.ref")
    for name, options in (("dtype", get_args(ModelDtype)), ("device", get_args(Device))):
        if raw.get(name, "auto") not in options:
            raise ChangeError(f"{key}.{name}", f"{shown(raw[name])} is not supported", f"use one of: {', '.join(options)}")
    trust = raw.get("trust_remote_code", False)
    if not isinstance(trust, bool):
        raise ChangeError(f"{key}.trust_remote_code", "expected true or false", "write true or false")
    return ModelSpec(ref=ref, dtype=raw.get("dtype", "auto"), device=raw.get("device", "auto"), trust_remote_code=trust)


def _reference(ref: Any, key: str) -> str:
    """A model reference: one line of printable text (it is shown in summaries and passed to loaders)."""
    if not isinstance(ref, str) or not ref.strip():
        raise ChangeError(key, f"expected a non-empty model reference, got {shown(ref)}",
                          "give a reference such as embedded:smollm2-135m-instruct")
    if len(ref) > 4096:
        raise ChangeError(key, f"is {len(ref):,} characters long", "give a model reference of at most 4096 characters")
    bad = next((c for c in ref if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ChangeError(key, f"contains the control character {bad!r}", "give the model reference on one line")
    return ref
