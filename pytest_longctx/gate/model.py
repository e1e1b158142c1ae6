"""The model a gate (or one side of it) runs: its reference and how it loads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ..changes.base import ChangeError

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
        if not raw.strip():
            raise ChangeError(key, "expected a non-empty model reference", "give a reference such as embedded:smollm2-135m-instruct")
        return ModelSpec(ref=raw)
    if not isinstance(raw, Mapping):
        raise ChangeError(key, f"expected a reference or a mapping, got {type(raw).__name__}", "write model: <ref> or model: {ref: ...}")
    allowed = ("ref", "dtype", "device", "trust_remote_code")
    for name in raw:
        if name not in allowed:
            raise ChangeError(f"{key}.{name}", "unknown key", f"use one of: {', '.join(allowed)}")
    ref = raw.get("ref", DEFAULT_MODEL)
    if not isinstance(ref, str) or not ref.strip():
        raise ChangeError(f"{key}.ref", f"expected a non-empty string, got {type(ref).__name__}", "give a model reference in quotes")
    for name, options in (("dtype", get_args(ModelDtype)), ("device", get_args(Device))):
        if raw.get(name, "auto") not in options:
            raise ChangeError(f"{key}.{name}", f"{raw[name]!r} is not supported"[:200], f"use one of: {', '.join(options)}")
    trust = raw.get("trust_remote_code", False)
    if not isinstance(trust, bool):
        raise ChangeError(f"{key}.trust_remote_code", "expected true or false", "write true or false")
    return ModelSpec(ref=ref, dtype=raw.get("dtype", "auto"), device=raw.get("device", "auto"), trust_remote_code=trust)
