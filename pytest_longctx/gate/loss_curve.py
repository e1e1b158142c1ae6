"""Next-token loss by position over a long seeded text: does a change hurt the far end of the context?"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..tasks.corpus import essay_lines


@dataclass(frozen=True)
class LossCurve:
    """Mean next-token cross-entropy (nats) per bucket of positions.

    Bucket i holds the predictions of the tokens at positions `edges[i]` to `edges[i + 1] - 1`; the first
    token has no prediction, so it counts nowhere. `counts[i]` is how many predictions bucket i averages.
    """

    edges: tuple[int, ...]
    losses: tuple[float, ...]
    counts: tuple[int, ...]
    tokens: int


def loss_by_position(
    model: Any, token_ids: Sequence[int], *, buckets: int | Sequence[int], chunk_tokens: int = 1024, cache: Any = None
) -> LossCurve:
    """Next-token cross-entropy of `token_ids` under `model`, averaged per bucket of positions.

    The sequence is run in chunks of `chunk_tokens` with the KV cache carried over, which computes the same
    losses as one forward pass while holding only one chunk's logits (a 49k vocabulary over 8k positions
    would be 1.6 GB of float32 logits at once).

    Args:
        model: a transformers causal LM.
        token_ids: at least two tokens.
        buckets: a number of equal buckets, or the bucket edges in tokens (increasing, from >= 0 to <= the
            token count; predictions before the first or after the last edge are left out).
        chunk_tokens: tokens per forward pass.
        cache: a fresh KV cache to run with, for a cache under test (`kv_cache.make_cache(...)`); the
            model's DynamicCache if None.
    """
    import torch
    import torch.nn.functional as F
    from transformers import DynamicCache

    from ..backends.kv_cache import cache_keyword

    count = len(token_ids)
    edges = _edges(buckets, count)
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens!r}")
    device = next(model.parameters()).device
    ids = torch.tensor([list(token_ids)], dtype=torch.long, device=device)
    losses = torch.empty(count - 1, dtype=torch.float64)  # losses[t - 1] is the loss of predicting token t
    cache = cache if cache is not None else DynamicCache(config=model.config)
    keyword = cache_keyword(model)
    with torch.inference_mode():
        for start in range(0, count - 1, chunk_tokens):
            end = min(start + chunk_tokens, count - 1)
            logits = model(input_ids=ids[:, start:end], use_cache=True, **{keyword: cache}).logits[0]
            targets = ids[0, start + 1 : end + 1]
            losses[start:end] = F.cross_entropy(logits.float(), targets, reduction="none").double().cpu()
    means, counts = [], []
    for low, high in itertools.pairwise(edges):
        part = losses[max(low, 1) - 1 : high - 1]
        means.append(float(part.mean()))
        counts.append(len(part))
    return LossCurve(edges=edges, losses=tuple(means), counts=tuple(counts), tokens=count)


def long_text(tokenizer: Any, tokens: int, seed: int) -> str:
    """Seeded essay-like prose of exactly `tokens` tokens (`tokenizer(text, add_special_tokens=False)`)."""
    if tokens < 1:
        raise ValueError(f"tokens must be positive, got {tokens!r}")

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    paragraphs, estimate = [], 0
    for paragraph in essay_lines(seed):
        paragraphs.append(paragraph)
        estimate += count(paragraph) + 1
        if estimate > tokens + 16:
            break
    text = "\n".join(paragraphs)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    cut = tokenizer.decode(ids[:tokens])
    if text.startswith(cut) and count(cut) == tokens:
        return cut
    # The prefix of the tokens re-tokenized differently (a word cut mid-merge): look for a nearby cut that fits.
    for end in range(len(cut) + 8, max(0, len(cut) - 64), -1):
        if count(text[:end]) == tokens:
            return text[:end]
    raise RuntimeError(f"no prefix of the seed-{seed} text has exactly {tokens} tokens; try another seed")


def loss_ratio(baseline: LossCurve, candidate: LossCurve) -> tuple[float, int]:
    """The worst bucket's candidate/baseline mean-loss ratio, and which bucket it is (curves with the same edges)."""
    if baseline.edges != candidate.edges:
        raise ValueError(f"the curves have different buckets ({baseline.edges} vs {candidate.edges})")
    ratios = [c / b if b > 0 else (math.inf if c > 0 else 1.0) for b, c in zip(baseline.losses, candidate.losses, strict=True)]
    worst = max(range(len(ratios)), key=ratios.__getitem__)
    return ratios[worst], worst


def _edges(buckets: int | Sequence[int], count: int) -> tuple[int, ...]:
    if count < 2:
        raise ValueError(f"need at least two tokens for a next-token loss, got {count}")
    if isinstance(buckets, int) and not isinstance(buckets, bool):
        if not 1 <= buckets <= count - 1:
            raise ValueError(f"buckets must be between 1 and {count - 1} for {count} tokens, got {buckets}")
        edges = tuple(round(i * count / buckets) for i in range(buckets + 1))
    else:
        edges = () if isinstance(buckets, bool) else tuple(buckets)  # True is an int to Python, not a bucket count
        if len(edges) < 2 or any(not isinstance(e, int) or isinstance(e, bool) for e in edges):
            raise ValueError(f"bucket edges must be at least two whole numbers, got {buckets!r}")
        if edges[0] < 0 or edges[-1] > count or any(a >= b for a, b in itertools.pairwise(edges)):
            raise ValueError(f"bucket edges must increase from >= 0 to <= {count}, got {list(edges)}")
    if edges[1] < 2:
        raise ValueError("the first bucket holds no prediction (the first token has none); start it later or widen it")
    return edges
