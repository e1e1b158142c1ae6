"""The in-process transformers backend: greedy generation with prefill/decode timings and KV measurement."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from .gate_spec import ModelSpec, VariantSpec
from .kv_math import KvShape


@dataclass(frozen=True)
class Generation:
    """One greedy completion of one prompt, with what it cost."""

    answer: str
    new_tokens: int
    prefill_s: float
    decode_s_per_token: float | None
    total_s: float
    kv_bytes: int
    kv_bytes_analytic: int
    kv_tokens: int
    peak_bytes: int | None
    hit_limit: bool = False  # stopped by max_new_tokens rather than EOS


class Backend(Protocol):
    """What a gate needs from a model: its tokenizer, its KV shape, and timed greedy generation."""

    tokenizer: Any
    fingerprint: str

    @property
    def kv_shape(self) -> KvShape: ...

    def generate(self, token_ids: Sequence[int], *, variant: VariantSpec, max_new_tokens: int) -> Generation: ...


def cache_keyword(model: Any) -> str:
    """The forward() keyword that takes a Cache: 5.24 renamed `past_key_values=` to `cache=`; 5.17 knows only the old."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class TransformersBackend:
    """A transformers causal LM run in this process; variants differ only in the cache they decode with."""

    def __init__(self, model: Any, tokenizer: Any, *, fingerprint: str = "") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.device = next(model.parameters()).device
        self._cache_kw = cache_keyword(model)
        self._eos = self._eos_ids()

    @classmethod
    def load(cls, spec: ModelSpec) -> TransformersBackend:
        from .model_loading import load_model

        model, tokenizer, fingerprint = load_model(
            spec.ref, dtype=spec.dtype, device=spec.device, trust_remote_code=spec.trust_remote_code
        )
        return cls(model, tokenizer, fingerprint=fingerprint)

    @property
    def kv_shape(self) -> KvShape:
        return KvShape.from_config(self.model.config)

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return frozenset(ids)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def _forward(self, ids: Any, cache: Any, *, last_only: bool, position: int | None = None) -> Any:
        kwargs: dict[str, Any] = {self._cache_kw: cache, "use_cache": True}
        if last_only:
            kwargs["logits_to_keep"] = 1  # the prompt's other logits are never read; skipping them saves memory
        if position is not None:
            # Absolute positions, so RoPE stays right even when a window has evicted part of the cache.
            import torch

            kwargs["position_ids"] = torch.tensor([[position]], dtype=torch.long, device=self.device)
        return self.model(input_ids=ids, **kwargs).logits[0, -1]

    def generate(
        self, token_ids: Sequence[int], *, variant: VariantSpec, max_new_tokens: int, timeout_s: float | None = None
    ) -> Generation:
        """Greedy-decode up to `max_new_tokens` (stopping at EOS) with the variant's KV cache.

        Raises CellTimeout once `timeout_s` has passed (checked after prefill and after each decode step).
        """
        import torch

        from .kv_cache import bytes_per_element, cache_nbytes, cache_tensors, keep_last, make_cache

        cache = make_cache(variant.kv_cache_dtype, self.model.config, kv_scale=variant.kv_scale)
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.device)
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        generated: list[int] = []
        with torch.inference_mode():
            self._sync()
            start = time.perf_counter()
            deadline = None if timeout_s is None else start + timeout_s
            token = int(self._forward(ids, cache, last_only=True).argmax())
            if variant.planted_window is not None:
                keep_last(cache, variant.planted_window)
            self._sync()
            first = time.perf_counter()
            generated.append(token)
            while token not in self._eos and len(generated) < max_new_tokens:
                step_start = time.perf_counter()
                if deadline is not None and step_start > deadline:
                    raise CellTimeout(f"cell exceeded cell_timeout_s={timeout_s:g} after {len(generated)} new tokens")
                step = torch.tensor([[token]], dtype=torch.long, device=self.device)
                token = int(self._forward(step, cache, last_only=False, position=len(token_ids) + len(generated) - 1).argmax())
                generated.append(token)
                if variant.planted_decode_delay:
                    self._sync()
                    time.sleep(variant.planted_decode_delay * (time.perf_counter() - step_start))
            self._sync()
            end = time.perf_counter()
            # A planted memory regression holds real extra copies of the cache while it is measured.
            shadow = [t.clone() for _ in range(variant.planted_kv_copies - 1) for t in cache_tensors(cache)]
        if deadline is not None and end > deadline:
            raise CellTimeout(f"cell exceeded cell_timeout_s={timeout_s:g}")
        decode_steps = len(generated) - 1
        kv_tokens = cache.get_seq_length()
        shape = self.kv_shape
        elem = bytes_per_element(variant.kv_cache_dtype, self.model.dtype)
        scale = None if variant.kv_cache_dtype == "auto" else variant.kv_scale
        text_ids = [t for t in generated if t not in self._eos]
        return Generation(
            answer=self.tokenizer.decode(text_ids, skip_special_tokens=True).strip(),
            new_tokens=len(generated),
            prefill_s=first - start,
            decode_s_per_token=(end - first) / decode_steps if decode_steps else None,
            total_s=end - start,
            kv_bytes=cache_nbytes(cache) + sum(t.nbytes for t in shadow),
            kv_bytes_analytic=shape.sequence_bytes(kv_tokens, elem, scale=scale) * variant.planted_kv_copies,
            kv_tokens=kv_tokens,
            peak_bytes=int(torch.cuda.max_memory_allocated(self.device)) if on_cuda else None,
            hit_limit=generated[-1] not in self._eos,
        )


class CellTimeout(TimeoutError):
    """A generation that ran past the gate's `cell_timeout_s`."""
