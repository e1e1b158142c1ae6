"""RoPE scaling as a change under test: `rope_parameters` validated up front, then merged into a model config before load."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from .base import Change, ChangeError, LoadPlan, Reuse

RopeType = Literal["default", "linear", "dynamic", "yarn", "llama3", "longrope"]

_NUMBER = "number"
_POSITIVE = "positive number"
_FACTOR = "number > 1"
_FACTOR_OR_ONE = "number >= 1"
_LENGTH = "positive integer"
_FLAG = "true or false"
_FACTORS = "list of positive numbers"

# Per rope_type: key -> (kind, required). Mirrors the keys transformers' RotaryEmbeddingConfigMixin._validate_*
# methods require and accept (5.17 and 5.24 agree). `rope_theta` is accepted everywhere as an explicit override;
# left out, the model's own value is kept. `partial_rotary_factor` is not accepted: it changes which dimensions
# rotate, i.e. the architecture, not the scaling. Key order is the order the messages list them in.
_Schema = dict[str, tuple[str, bool]]
_THETA: _Schema = {"rope_theta": (_POSITIVE, False)}
_SCALED: _Schema = {**_THETA, "factor": (_FACTOR, True)}
_ORIGINAL: _Schema = {"original_max_position_embeddings": (_LENGTH, True)}  # the length the model was trained to
_SCHEMA: dict[str, _Schema] = {
    "default": _THETA,
    "linear": _SCALED,
    "dynamic": _SCALED,
    "yarn": {
        **_SCALED,
        **_ORIGINAL,
        "attention_factor": (_POSITIVE, False),
        "beta_fast": (_POSITIVE, False),
        "beta_slow": (_POSITIVE, False),
        "mscale": (_NUMBER, False),
        "mscale_all_dim": (_NUMBER, False),
        "truncate": (_FLAG, False),
    },
    "llama3": {**_SCALED, **_ORIGINAL, "low_freq_factor": (_POSITIVE, True), "high_freq_factor": (_POSITIVE, True)},
    "longrope": {
        **_THETA,
        "short_factor": (_FACTORS, True),
        "long_factor": (_FACTORS, True),
        **_ORIGINAL,
        "factor": (_FACTOR_OR_ONE, False),
        "attention_factor": (_POSITIVE, False),
    },
}
ROPE_TYPES: tuple[str, ...] = tuple(_SCHEMA)
_PREFIX = "rope_parameters"


class RopeError(ChangeError):
    """A RoPE setting that cannot be applied; `key` is dotted from the variant (`rope_parameters.factor`)."""


@dataclass(frozen=True)
class RopeSettings:
    """One validated RoPE configuration: what a variant asks the model to be loaded with.

    `parameters` are the `rope_parameters` keys other than `rope_type`, as sorted (key, value) pairs with lists
    turned into tuples, so settings hash and compare by value (the session loads one backend per distinct one).
    A `rope_type` of None keeps the model's own RoPE (a variant that changes only `max_position_embeddings`).
    """

    rope_type: RopeType | None
    parameters: tuple[tuple[str, Any], ...] = ()
    max_position_embeddings: int | None = None

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.parameters).get(key, default)

    def rope_parameters(self) -> dict[str, Any]:
        """The `rope_parameters` dict transformers expects (lists, not tuples), without the model's own keys."""
        if self.rope_type is None:
            return {}
        return {"rope_type": self.rope_type, **{k: list(v) if isinstance(v, tuple) else v for k, v in self.parameters}}

    def as_record(self) -> dict[str, Any]:
        """JSON-ready description; `parse_rope(r["rope_parameters"], r.get("max_position_embeddings"))` reads it back."""
        record: dict[str, Any] = {"rope_parameters": self.rope_parameters()}
        if self.max_position_embeddings is not None:
            record["max_position_embeddings"] = self.max_position_embeddings
        return record


def parse_rope(raw: object, max_position_embeddings: int | None = None) -> RopeSettings:
    """Validate a variant's `rope_parameters` (and `max_position_embeddings`) before any model is loaded.

    Checks what needs no model: the rope_type, missing/unknown keys, types and ranges, factor > 1, list lengths
    that must agree with each other, yarn/llama3/longrope's original length against `max_position_embeddings`.
    What needs the model (longrope lists against head_dim/2, lengths against the model's own) is
    `check_against_config`, which `apply_rope` runs.

    An empty `raw` with a `max_position_embeddings` keeps the model's own RoPE and changes only that length.

    Raises:
        RopeError: naming the key, the problem and the fix.
    """
    if not isinstance(raw, Mapping):
        fix = "write rope_parameters as a mapping, e.g. {rope_type: linear, factor: 2.0}"
        raise RopeError(_PREFIX, f"must be a mapping, got {_shown(raw)}", fix)
    if max_position_embeddings is not None and not _is_int(max_position_embeddings, minimum=1):
        problem = f"must be a positive integer, got {_shown(max_position_embeddings)}"
        raise RopeError("max_position_embeddings", problem, "give the context length in tokens, e.g. 32768")
    if not raw:
        if max_position_embeddings is None:
            fix = f"give a rope_type ({', '.join(ROPE_TYPES)}) and its keys, or leave rope_parameters out"
            raise RopeError(_PREFIX, "is empty, so nothing changes", fix)
        return RopeSettings(None, (), max_position_embeddings)
    if "rope_type" not in raw:
        if "type" in raw:
            raise RopeError(f"{_PREFIX}.type", "'type' is the legacy spelling", "rename it to rope_type")
        raise RopeError(f"{_PREFIX}.rope_type", "is missing", f"set rope_type to one of {', '.join(ROPE_TYPES)}")
    rope_type = raw["rope_type"]
    if rope_type not in ROPE_TYPES:  # a tuple: `in` compares, so a list or mapping here is refused, not a TypeError
        problem = f"unknown rope_type {_shown(rope_type)}"
        raise RopeError(f"{_PREFIX}.rope_type", problem, f"use one of {', '.join(ROPE_TYPES)}")
    schema = _SCHEMA[rope_type]
    for key in raw:
        if key != "rope_type" and key not in schema:
            problem = f"is not a {rope_type} parameter{_belongs_to(key)}"
            raise RopeError(f"{_PREFIX}.{key}", problem, f"remove it; {rope_type} accepts {_accepted(rope_type)}")
    for key, (kind, required) in schema.items():
        if required and key not in raw:
            raise RopeError(f"{_PREFIX}.{key}", f"{rope_type} requires {key} ({kind})", f"add {key}: <{kind}>")
    values = {key: _checked(key, kind, raw[key]) for key, (kind, _) in schema.items() if key in raw}
    settings = RopeSettings(rope_type, tuple(sorted(values.items())), max_position_embeddings)
    _check_relations(settings)
    return settings


def check_against_config(settings: RopeSettings, config: Any) -> None:
    """Check what depends on the model: a single RoPE to replace, longrope list lengths, and context lengths.

    Raises:
        RopeError: naming the key, the problem and the fix.
    """
    current = getattr(config, "rope_parameters", None)
    if not isinstance(current, Mapping) or not current:
        problem = f"the model ({type(config).__name__}) has no rope_parameters to scale"
        raise RopeError(_PREFIX, problem, "drop rope_parameters from this variant, or use a RoPE model")
    if any(isinstance(v, Mapping) for v in current.values()):
        kinds = ", ".join(k for k, v in current.items() if isinstance(v, Mapping))
        problem = f"the model keeps one RoPE per layer type ({kinds}); per-layer scaling is not supported"
        raise RopeError(_PREFIX, problem, "drop rope_parameters from this variant")
    if settings.rope_type == "longrope":
        rotary_dim = int(_head_dim(config) * current.get("partial_rotary_factor", 1.0))
        for key in ("short_factor", "long_factor"):
            got, needed = len(settings.get(key)), rotary_dim // 2
            if got != needed:
                problem = f"has {got} entries; this model rotates {rotary_dim} dims per head, so it needs {needed}"
                raise RopeError(f"{_PREFIX}.{key}", problem, f"give exactly {needed} factors (one per frequency)")
    model_max = int(config.max_position_embeddings)
    wanted = settings.max_position_embeddings
    if (settings.rope_type or current.get("rope_type")) == "dynamic" and wanted is not None and wanted > model_max:
        raise RopeError(
            "max_position_embeddings",
            f"dynamic NTK scales only past max_position_embeddings; {wanted} is above the model's trained length "
            f"{model_max}, so positions {model_max}..{wanted} would run unscaled",
            f"leave max_position_embeddings out (or at most {model_max}) for dynamic",
        )
    if settings.max_position_embeddings is None:
        _check_original_length(settings, model_max, "the model's max_position_embeddings")


def apply_rope(config: Any, settings: RopeSettings) -> Any:
    """A copy of `config` with `settings` applied, to pass to `from_pretrained(config=...)`.

    The model's rope_parameters are replaced, keeping only its `rope_theta` (unless the settings give one) and
    `partial_rotary_factor`: keys of the model's own scaling type (say llama3's) must not leak into another. It has
    to happen at load time: the rotary embedding computes `inv_freq` in its constructor, so editing
    `model.config` afterwards changes nothing.
    """
    check_against_config(settings, config)
    scaled = copy.deepcopy(config)
    if settings.rope_type is not None:
        current = dict(config.rope_parameters)
        kept = {key: current[key] for key in ("rope_theta", "partial_rotary_factor") if key in current}
        if "rope_theta" not in kept and getattr(config, "rope_theta", None) is not None:
            kept["rope_theta"] = config.rope_theta  # configs that still keep it beside rope_parameters
        scaled.rope_parameters = {**kept, **settings.rope_parameters()}
    if settings.max_position_embeddings is not None:
        scaled.max_position_embeddings = settings.max_position_embeddings
    return scaled


def reset_rope_state(model: Any) -> None:
    """Undo dynamic NTK's memory of the longest sequence seen, so the next prompt is scaled as in a fresh model.

    transformers' dynamic rotary embedding raises its base when a sequence grows past the cached length and only
    resets it for one shorter than the original length: a prompt between the two keeps the scaling of whatever
    longer prompt ran before, so a sweep's answers would depend on cell order. Call before each prompt; a no-op
    for every other rope type (longrope picks its factors per call).
    """
    for module in model.modules():
        rope_type = getattr(module, "rope_type", None)
        if isinstance(rope_type, str) and "dynamic" in rope_type and hasattr(module, "original_inv_freq"):
            original = module.original_inv_freq.to(module.inv_freq.device)
            module.register_buffer("inv_freq", original, persistent=False)
            module.max_seq_len_cached = module.original_max_seq_len


def _check_relations(settings: RopeSettings) -> None:
    get = settings.get
    if settings.rope_type == "yarn" and get("beta_fast", 32) <= get("beta_slow", 1):
        problem = f"beta_fast ({get('beta_fast', 32)}) must be above beta_slow ({get('beta_slow', 1)}); defaults are 32 and 1"
        raise RopeError(f"{_PREFIX}.beta_fast", problem, "raise beta_fast or lower beta_slow")
    if settings.rope_type == "llama3" and get("high_freq_factor") <= get("low_freq_factor"):
        problem = f"high_freq_factor ({get('high_freq_factor')}) must be above low_freq_factor ({get('low_freq_factor')})"
        raise RopeError(f"{_PREFIX}.high_freq_factor", problem, "use e.g. low_freq_factor: 1.0, high_freq_factor: 4.0 (Llama 3.1's)")
    if settings.rope_type == "longrope" and len(get("short_factor")) != len(get("long_factor")):
        problem = f"has {len(get('long_factor'))} entries but short_factor has {len(get('short_factor'))}"
        raise RopeError(f"{_PREFIX}.long_factor", problem, "give both lists one factor per rotary frequency (head_dim / 2)")
    if settings.max_position_embeddings is not None:
        _check_original_length(settings, settings.max_position_embeddings, "max_position_embeddings")


def _check_original_length(settings: RopeSettings, maximum: int, what: str) -> None:
    original = settings.get("original_max_position_embeddings")
    if original is not None and original > maximum:
        raise RopeError(
            f"{_PREFIX}.original_max_position_embeddings",
            f"the pre-scaling length {original} is above {what} ({maximum}), so nothing is extended",
            "set original_max_position_embeddings to the trained length and max_position_embeddings to the extended one",
        )


def _checked(key: str, kind: str, value: Any) -> Any:
    where = f"{_PREFIX}.{key}"
    if kind == _FLAG:
        if not isinstance(value, bool):
            raise RopeError(where, f"must be true or false, got {_shown(value)}", f"write {key}: true or {key}: false")
        return value
    if kind == _LENGTH:
        if not _is_int(value, minimum=1):
            raise RopeError(where, f"must be a positive integer, got {_shown(value)}", "give a length in tokens, e.g. 8192")
        return value
    if kind == _FACTORS:
        if not isinstance(value, (list, tuple)) or not value or not all(_is_number(v) and v > 0 for v in value):
            problem = f"must be a non-empty list of positive numbers, got {_shown(value)}"
            raise RopeError(where, problem, "give one factor per rotary frequency (head_dim / 2 of them)")
        return tuple(float(v) for v in value)
    if not _is_number(value):
        raise RopeError(where, f"must be a number, got {_shown(value)}", f"write {key} as a number, e.g. {key}: 2.0")
    if kind == _POSITIVE and value <= 0:
        raise RopeError(where, f"must be positive, got {value}", f"use a {key} above 0")
    if kind == _FACTOR and value <= 1:
        problem = f"must be above 1, got {value} (1 scales nothing; transformers expects at least 1)"
        raise RopeError(where, problem, "use the context extension ratio, e.g. factor: 2.0 to double the context")
    if kind == _FACTOR_OR_ONE and value < 1:
        raise RopeError(where, f"must be at least 1, got {value}", "use the context extension ratio, e.g. factor: 4.0, or leave it out")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any, *, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _accepted(rope_type: str) -> str:
    return ", ".join(f"{key}{'' if required else ' (optional)'}" for key, (_, required) in _SCHEMA[rope_type].items())


def _belongs_to(key: str) -> str:
    owners = [name for name, schema in _SCHEMA.items() if key in schema]
    if key == "partial_rotary_factor":
        return " (it changes which dimensions rotate, the architecture; the model's own value is kept)"
    return f" (it belongs to {', '.join(owners)})" if owners else ""


def _shown(value: Any) -> str:
    # Bounded: repr() of a 5000-digit int raises, and of a huge list takes its time.
    from ..gate.limits import shown

    return f"{type(value).__name__} {shown(value)}"


@dataclass(frozen=True)
class RopeChange(Change):
    """`rope_parameters` and `max_position_embeddings`, applied to the config before the weights load.

    Dynamic NTK and longrope scale by the length seen, so their K/V depend on more than a prefix's own tokens
    (never reused), and the state dynamic NTK keeps is reset before each prompt so answers do not depend on cell
    order."""

    kind = "rope"
    order = 40
    keys = ("rope_parameters", "max_position_embeddings")
    stage = "load"

    settings: RopeSettings

    @classmethod
    def parse(cls, side: Mapping[str, Any]) -> RopeChange | None:
        if side.get("rope_parameters") is None and side.get("max_position_embeddings") is None:
            return None
        try:
            # max_position_embeddings alone keeps the model's own RoPE and changes only the length it accepts.
            return cls(parse_rope(side.get("rope_parameters") or {}, side.get("max_position_embeddings")))
        except RopeError as exc:
            raise ChangeError(exc.key, exc.problem, exc.fix) from None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RopeChange | None:
        rope = record.get("rope")  # results files record the settings whole, under "rope"
        if isinstance(rope, Mapping):
            return cls(parse_rope(rope.get("rope_parameters") or {}, rope.get("max_position_embeddings")))
        return super().from_record(record)  # type: ignore[return-value]

    def record(self) -> dict[str, Any]:
        return {"rope": self.settings.as_record()}

    def describe(self) -> tuple[tuple[str, str], ...]:
        params = dict(self.settings.parameters)
        parts = []
        if self.settings.rope_type is None:
            parts.append("the model's own")
        else:
            head = str(self.settings.rope_type)
            if "factor" in params:
                head += f" factor {params.pop('factor'):g}"
            if "original_max_position_embeddings" in params:
                head += f" (original {params.pop('original_max_position_embeddings')})"
            parts.append(head)
            for key, value in sorted(params.items()):
                parts.append(f"{key} " + (f"[{len(value)} values]" if isinstance(value, (list, tuple)) else f"{value:g}"
                                          if isinstance(value, float) else str(value)))
        if self.settings.max_position_embeddings is not None:
            parts.append(f"max_position_embeddings {self.settings.max_position_embeddings}")
        return (("rope", ", ".join(parts)),)

    @property
    def position_dependent(self) -> bool:
        return self.settings.rope_type in ("dynamic", "longrope")

    @property
    def reuse(self) -> Reuse:  # type: ignore[override]
        return "never" if self.position_dependent else "any"

    @property
    def drafts(self) -> bool:  # type: ignore[override]
        return not self.position_dependent

    @property
    def batch(self) -> bool:  # type: ignore[override]
        return not self.position_dependent

    def load(self, plan: LoadPlan) -> LoadPlan:
        return replace(plan, rope=self.settings)

    def refuse_noop(self, *, longest_prompt: int, longest_run: int, trained: int | None) -> None:
        # Dynamic NTK leaves every position up to the trained length as it was: a sweep that stays inside measures
        # the model's own RoPE under another name.
        if self.settings.rope_type != "dynamic" or trained is None:
            return
        start = self.settings.max_position_embeddings or trained
        if longest_run <= start:
            raise ChangeError(
                "rope_parameters",
                f"dynamic scaling only changes positions past {start:,}, and the longest run uses {longest_run:,}: "
                "this side computes what the model's own RoPE does",
                f"sweep lengths past {start:,} (sweep.lengths), or test another rope_type such as linear or yarn",
            )

    def before_prompt(self, model: Any) -> None:
        if self.position_dependent:
            reset_rope_state(model)


CHANGE = RopeChange
