"""Prefix KV reuse for recall passes: caches of prompts already run, and the order that lets later prompts reuse most.

Numerical caveat: a reused prefix was computed inside another prompt's one-shot prefill and the rest of the prompt
in a second forward pass, where a fresh run computes all of it at once. The mathematics is the same (causal
attention: a token's K/V depend only on the tokens up to it), but matrix kernels may block a differently shaped
product differently and attention sums the cached and the new keys in another order, so logits can differ in their
last bits. Greedy answers differ only if the top two logits are that close; the tests and
benchmarks/sweep_vs_naive.py compare answers with fresh runs to show they agree.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ..gate.spec import VariantSpec

K = TypeVar("K")


def variant_key(variant: VariantSpec) -> Hashable:
    """What must match for two runs' caches to be interchangeable: the side's changes, not its name. Planted timing
    and memory regressions do not change a prompt's K/V (a planted window forbids reuse on its own); every other
    change, present or future, keys reuse apart."""
    return tuple(change for change in variant.changes if change.changes_kv())


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] == b[:low] and a[:high] != b[:high]; slices compare at C speed
    while high - low > 1:
        mid = (low + high) // 2
        if a[low:mid] == b[low:mid]:
            low = mid
        else:
            high = mid
    return low


def reuse_order(prompts: Sequence[tuple[K, Sequence[int]]]) -> list[K]:
    """The keys in the order that lets each prompt reuse the longest prefix any earlier prompt could give it.

    Token-lexicographic order walks the prompts' prefix tree depth first: a prompt's longest common prefix with
    all earlier prompts is the one with the prompt just before it, so a store holding one entry per variant
    already gets all the reuse there is, and the tokens prefilled add up to the tree's size, which no order
    beats (each node of the tree is prefilled at least once). Identical prompts keep their given order.
    """
    return [key for key, _ in sorted(prompts, key=lambda item: tuple(item[1]))]


@dataclass(frozen=True)
class PrefixHit:
    """A private copy of a stored cache, cropped to the `tokens` positions the new prompt shares with it."""

    cache: Any
    tokens: int


@dataclass(frozen=True)
class _Entry:
    """A stored cache; the store files it under its (variant key, prompt token ids)."""

    cache: Any
    nbytes: int
    home: Any  # the device the cache was made on, where copies of it go back to


_Slot = tuple[Hashable, tuple[int, ...]]


class PrefixStore:
    """A bounded store of prompts' KV caches, looked up by variant key and longest common token prefix.

    Bounds: at most `max_entries_per_key` prompts per key and `max_bytes` of cache tensors in all, the least
    recently used going first; a cache larger than `max_bytes` is not kept. In token-lexicographic order
    (`reuse_order`) one entry per key gets all the reuse there is; a second covers orders that interleave.

    Entries live in host memory (`device="cpu"`) and lookups copy them back to the device their cache came
    from: on CUDA, stored caches then take no GPU memory, so they neither crowd the model out nor add to the
    `peak_bytes` of cells measured while the store is full. `device=None` keeps them where they are.
    """

    def __init__(
        self, *, max_entries_per_key: int = 2, max_bytes: int = 2 * 1024**3, min_tokens: int = 64,
        device: str | None = "cpu",
    ) -> None:
        if max_entries_per_key < 1 or max_bytes < 0 or min_tokens < 1:
            raise ValueError("PrefixStore needs max_entries_per_key >= 1, max_bytes >= 0 and min_tokens >= 1")
        self.max_entries_per_key = max_entries_per_key
        self.max_bytes = max_bytes
        self.device = device
        self.min_tokens = min_tokens  # shorter common prefixes are prefilled again: a copy is not worth it
        self._entries: OrderedDict[_Slot, _Entry] = OrderedDict()  # least recent first
        self.lookups = 0
        self.hits = 0
        self.reused_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def clear(self) -> None:
        self._entries.clear()

    def lookup(self, key: Hashable, token_ids: Sequence[int], *, exact_only: bool = False) -> PrefixHit | None:
        """A copy of the stored cache of `key` sharing the longest prefix with `token_ids`, cropped to that prefix.

        At most all but the last token are reused: the prompt's next-token logits need one token fed. With
        `exact_only` (caches whose scales were calibrated on their whole prompt) only an identical prompt counts.
        None when no stored prompt shares at least `min_tokens`.
        """
        from .kv_cache import copy_prefix

        self.lookups += 1
        prompt = tuple(token_ids)
        best: _Slot | None = None
        shared = 0
        for entry_key, stored in self._entries:
            if entry_key != key:
                continue
            if exact_only:
                n = len(prompt) if stored == prompt else 0
            else:
                n = common_prefix_length(stored, prompt)
            if n > shared:
                best, shared = (entry_key, stored), n
        tokens = min(shared, len(prompt) - 1)
        if best is None or tokens < self.min_tokens:
            return None
        self._entries.move_to_end(best)
        self.hits += 1
        self.reused_tokens += tokens
        entry = self._entries[best]
        return PrefixHit(copy_prefix(entry.cache, tokens, device=entry.home), tokens)

    def put(self, key: Hashable, token_ids: Sequence[int], cache: Any) -> bool:
        """Keep `cache` (holding exactly the K/V of `token_ids`; the store owns it from now on). False if too large."""
        from .kv_cache import cache_device, cache_nbytes, compact, copy_prefix

        prompt = tuple(token_ids)
        if cache.get_seq_length() != len(prompt):
            raise ValueError(f"the cache holds {cache.get_seq_length()} positions for a prompt of {len(prompt)} tokens")
        compact(cache)  # dequantized copies and spare room are for decode speed only; copies rebuild them
        home = cache_device(cache)
        if self.device is not None and home is not None and not _same_device(home, self.device):
            cache = copy_prefix(cache, len(prompt), device=self.device)
        entry = _Entry(cache, cache_nbytes(cache), home)
        self._entries.pop((key, prompt), None)
        if entry.nbytes > self.max_bytes:
            return False
        self._entries[(key, prompt)] = entry
        same_key = [k for k in self._entries if k[0] == key]
        for stale in same_key[: max(0, len(same_key) - self.max_entries_per_key)]:
            del self._entries[stale]
        while self.nbytes > self.max_bytes:
            self._entries.popitem(last=False)
        return True


def _same_device(device: Any, name: str) -> bool:
    import torch

    wanted = torch.device(name)
    return bool(device.type == wanted.type and (wanted.index is None or device.index == wanted.index))
