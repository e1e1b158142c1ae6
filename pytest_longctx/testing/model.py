"""The `model` fixture's object: one loaded model and tokenizer, timed greedy generation, and cheap variants."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..capacity.kv_math import KvShape
from ..gate.spec import DEFAULT_MODEL, GateSpec, ModelSpec, VariantSpec

if TYPE_CHECKING:
    from ..backends.in_process import Backend, Generation
    from ..tasks.haystack import Haystack, MultiHaystack

    Prompt = str | Sequence[int] | Haystack | MultiHaystack

DEFAULT_VARIANT = VariantSpec("default")


class LongctxModel(Protocol):
    """What a long-context test needs from a model: its tokenizer, timed generation, and variants of it."""

    tokenizer: Any

    @property
    def ref(self) -> str: ...

    @property
    def kv_shape(self) -> KvShape: ...

    def encode(self, text: str) -> list[int]: ...

    def generate(self, prompt: Prompt, *, max_new_tokens: int = 32) -> Generation: ...

    def variant(self, **settings: Any) -> LongctxModel: ...


class ModelHandle:
    """A loaded model bound to one variant (its KV cache settings). Variants share the weights.

    `generate` takes a haystack, a string (wrapped as one user message in the chat template) or token ids,
    decodes greedily and returns a `Generation`: the answer, prefill and decode timings, and KV bytes measured
    from the cache next to the analytic figure. Any open `KvBudget.measure()` block records it.
    """

    def __init__(self, backend: Backend, *, spec: ModelSpec | None = None, variant: VariantSpec = DEFAULT_VARIANT) -> None:
        self.backend = backend
        self.tokenizer: Any = backend.tokenizer
        self.spec = spec if spec is not None else ModelSpec(ref="<in-memory>")
        self.variant_spec = variant

    @classmethod
    def load(cls, model: str | ModelSpec = DEFAULT_MODEL) -> ModelHandle:
        """Load a model reference (`embedded:NAME`, a directory, a .gguf file, a cached hub id) for inference."""
        from ..backends.in_process import TransformersBackend

        spec = ModelSpec(ref=model) if isinstance(model, str) else model
        return cls(TransformersBackend.load(spec), spec=spec)

    @property
    def ref(self) -> str:
        return self.spec.ref

    @property
    def torch_model(self) -> Any:
        """The underlying transformers model (shared by every variant)."""
        return getattr(self.backend, "model", None)

    @property
    def config(self) -> Any:
        return self.torch_model.config

    @property
    def dtype(self) -> Any:
        return self.torch_model.dtype

    @property
    def kv_shape(self) -> KvShape:
        return self.backend.kv_shape

    def encode(self, text: str, *, chat: bool = True) -> list[int]:
        """Token ids of `text`, wrapped as one user message in the chat template when the tokenizer has one."""
        tokenizer = self.tokenizer
        if chat and getattr(tokenizer, "chat_template", None) is not None:
            text = str(tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            ))
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompt: Prompt, *, max_new_tokens: int = 32) -> Generation:
        """Greedy-decode up to `max_new_tokens` (stopping at EOS) with this variant's KV cache."""
        from ..capacity import kv_budget

        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if isinstance(prompt, str):
            ids: Sequence[int] = self.encode(prompt)
        elif hasattr(prompt, "token_ids"):
            ids = prompt.token_ids
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError("the prompt has no tokens")
        kv_budget.note_peak_before_reset()
        generation = self.backend.generate(ids, variant=self.variant_spec, max_new_tokens=max_new_tokens)
        kv_budget.record_generation(generation)
        return generation

    def variant(self, **settings: Any) -> ModelHandle:
        """The same weights with other settings, e.g. `variant(kv_cache_dtype="fp8")`; nothing is reloaded.

        Settings are the fields of a gate's variant (`kv_cache_dtype`, `kv_scale`, and whatever later versions
        add); unset ones keep this handle's values. `name=` labels the variant.
        """
        return ModelHandle(self.backend, spec=self.spec, variant=variant_spec(self.variant_spec, **settings))

    def __repr__(self) -> str:
        shown = "; ".join(f"{k} {v}" for k, v in self.variant_spec.describe())
        return f"<ModelHandle {self.ref}{' ' + shown if shown else ''}>"


def variant_spec(base: VariantSpec, **settings: Any) -> VariantSpec:
    """`base` with `settings` (gate keys of a side, e.g. kv_cache_dtype="fp8") applied, checked as a gate's are.

    Raises:
        TypeError: a setting no registered change reads.
        ValueError: a setting's value is refused (the message names the key and the fix).
    """
    from ..changes.registry import side_keys

    name = settings.pop("name", None)
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"variant name must be a non-empty string, got {name!r}")
    for key in settings:
        if key not in side_keys():
            raise TypeError(f"unknown variant setting {key!r}; this version supports: {', '.join(side_keys())}")
    merged: dict[str, Any] = {}
    for change in base.changes:
        merged.update(_as_keys(change))
    changed = {k: v for k, v in settings.items() if merged.get(k) != v}
    merged.update(settings)
    if name is None:
        name = ",".join(f"{k}={v}" for k, v in changed.items()) if changed else base.name
    return VariantSpec.of(name, **merged)


def _as_keys(change: Any) -> dict[str, Any]:
    """A change's settings under the gate keys it reads (a record may use its own key, e.g. RoPE's "rope")."""
    record = change.record()
    if set(record) <= set(change.keys):
        return record
    rope = record.get("rope")
    return dict(rope) if isinstance(rope, dict) else {}


def resolve_model_spec(*, option: str | None, ini: str | None, gates: Sequence[GateSpec] = ()) -> ModelSpec:
    """The model for the `model` fixture: `--longctx-model`, else the `longctx_model` ini key, else the active
    gate's model, else the embedded default. A reference naming a gate's model takes that gate's settings
    (dtype, device), so the gate's loaded copy can be shared."""
    ref = option or ini or None
    if ref is None:
        return gates[0].model if gates else ModelSpec()
    for gate in gates:
        if gate.model.ref == ref:
            return gate.model
    return ModelSpec(ref=ref)


def open_model(spec: ModelSpec, *, gate_runs: Iterable[Any] = ()) -> ModelHandle:
    """Load `spec`, reusing the backend of a gate run on the same model instead of loading a second copy."""
    for run in gate_runs:
        if run.gate.model == spec:
            return ModelHandle(run.backend(), spec=spec)
    return ModelHandle.load(spec)
