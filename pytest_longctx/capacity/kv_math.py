"""Analytic KV-cache sizes: 2 x layers x kv_heads x head_dim x tokens x bytes per element, plus quantization scales."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCALE_BYTES = 4  # quantization scales are stored as float32


@dataclass(frozen=True)
class KvShape:
    """The dimensions of a model's KV cache, read from its config."""

    layers: int
    kv_heads: int
    head_dim: int
    attention_heads: int

    @classmethod
    def from_config(cls, config: Any) -> KvShape:
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        heads = int(text.num_attention_heads)
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        return cls(
            layers=int(text.num_hidden_layers),
            kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
            head_dim=int(head_dim),
            attention_heads=heads,
        )

    def bytes_per_token(self, bytes_per_elem: float) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_elem

    def sequence_bytes(self, tokens: int, bytes_per_elem: float, *, scale: str | None = None) -> int:
        """KV bytes of one sequence of `tokens`; `scale` adds the stored scales of a quantized cache.

        `scale="token_head"` stores one float32 scale per token and KV head for K and for V;
        `scale="tensor"` stores one per layer for K and for V; `scale="channel"` one per KV head and channel.
        """
        data = self.bytes_per_token(bytes_per_elem) * tokens
        if scale == "token_head":
            data += 2 * self.layers * self.kv_heads * tokens * SCALE_BYTES
        elif scale == "tensor":
            data += 2 * self.layers * SCALE_BYTES
        elif scale == "channel":
            data += 2 * self.layers * self.kv_heads * self.head_dim * SCALE_BYTES
        elif scale is not None:
            raise ValueError(f"unknown scale granularity {scale!r}; use 'token_head', 'tensor' or 'channel'")
        return int(round(data))
