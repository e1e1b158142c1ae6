from __future__ import annotations

import itertools
import random

import pytest
import torch

from pytest_longctx.backends.kv_cache import cache_keyword, cache_nbytes, make_cache
from pytest_longctx.backends.prefix_reuse import PrefixStore, common_prefix_length, reuse_order, variant_key
from pytest_longctx.gate.spec import VariantSpec


def _filled(config, tokens: int, dtype: str = "auto", kv_scale: str = "token_head", seed: int = 0):
    """A cache holding `tokens` positions of random K/V in every layer, as a prefill would leave it."""
    cache = make_cache(dtype, config, kv_scale=kv_scale)
    g = torch.Generator().manual_seed(seed)
    for layer in range(config.num_hidden_layers):
        k, v = torch.randn(1, 2, tokens, 16, generator=g), torch.randn(1, 2, tokens, 16, generator=g)
        cache.update(k, v, layer)
    return cache


@pytest.fixture
def config():
    from tests.conftest import tiny_llama_config

    return tiny_llama_config()


def test_common_prefix_length_matches_a_plain_scan():
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.randrange(3) for _ in range(rng.randrange(12))]
        b = a[: rng.randrange(len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(6))]
        plain = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        assert common_prefix_length(a, b) == common_prefix_length(tuple(b), tuple(a)) == plain


def _prefilled_tokens(order: list[tuple[int, ...]]) -> int:
    """Tokens a one-entry store prefills for prompts run in this order (the last token is always fed)."""
    total, previous = 0, None
    for prompt in order:
        shared = 0 if previous is None else min(common_prefix_length(previous, prompt), len(prompt) - 1)
        total += len(prompt) - shared
        previous = prompt
    return total


def test_reuse_order_prefills_no_more_than_any_other_order():
    rng = random.Random(1)
    trunk = [rng.randrange(9) for _ in range(30)]
    prompts = {}
    for name, cut in zip("abcde", (0, 7, 7, 19, 30), strict=True):  # branches off one trunk, two of them at the same point
        prompts[name] = tuple(trunk[:cut] + [9 + ord(name) % 3] + [rng.randrange(9) for _ in range(8)])
    best = min(_prefilled_tokens(list(p)) for p in itertools.permutations(prompts.values()))
    ordered = reuse_order(list(prompts.items()))
    assert sorted(ordered) == sorted(prompts)
    assert _prefilled_tokens([prompts[k] for k in ordered]) == best


def test_reuse_order_keeps_identical_prompts_in_their_given_order():
    assert reuse_order([("x", (2, 1)), ("y", (1, 5)), ("z", (2, 1))]) == ["y", "x", "z"]


def test_lookup_returns_a_private_copy_cropped_to_the_shared_prefix(config):
    store = PrefixStore(min_tokens=4)
    stored = _filled(config, 20)
    keys_before = stored.layers[0].keys.clone()
    store.put("k", range(20), stored)
    hit = store.lookup("k", list(range(12)) + [99, 98, 97])
    assert hit is not None and hit.tokens == 12 and hit.cache.get_seq_length() == 12
    assert torch.equal(hit.cache.layers[1].keys, stored.layers[1].keys[..., :12, :])
    hit.cache.update(torch.zeros(1, 2, 3, 16), torch.zeros(1, 2, 3, 16), 0)
    hit.cache.layers[1].keys.zero_()
    # The stored entry is untouched by whatever the copy goes through.
    assert torch.equal(stored.layers[0].keys, keys_before) and stored.get_seq_length() == 20
    assert store.hits == 1 and store.reused_tokens == 12


def test_lookup_feeds_at_least_the_prompts_last_token(config):
    store = PrefixStore(min_tokens=4)
    store.put("k", range(20), _filled(config, 20))
    assert store.lookup("k", range(20)).tokens == 19  # identical prompt: the next-token logits need one token fed
    assert store.lookup("k", range(10)).tokens == 9  # a prefix of a stored prompt


def test_lookup_ignores_short_prefixes_other_keys_and_non_identical_prompts_when_exact(config):
    store = PrefixStore(min_tokens=8)
    store.put("k", range(20), _filled(config, 20))
    assert store.lookup("k", list(range(7)) + [50] * 10) is None  # 7 shared tokens are below min_tokens
    assert store.lookup("other", range(20)) is None
    assert store.lookup("k", list(range(19)) + [50], exact_only=True) is None
    assert store.lookup("k", range(20), exact_only=True).tokens == 19
    assert store.lookups == 4 and store.hits == 1


def test_store_keeps_the_most_recent_entries_per_key_and_within_max_bytes(config):
    one = cache_nbytes(_filled(config, 10))
    store = PrefixStore(max_entries_per_key=2, max_bytes=3 * one, min_tokens=2)
    for first in (0, 100, 200):
        store.put("a", range(first, first + 10), _filled(config, 10))
    assert len(store) == 2 and store.lookup("a", range(10)) is None  # the oldest of "a" went
    store.lookup("a", range(100, 110))  # touch: now the most recently used
    store.put("b", range(300, 310), _filled(config, 10))
    store.put("b", range(400, 410), _filled(config, 10))  # four entries would exceed max_bytes
    assert len(store) == 3 and store.nbytes <= 3 * one
    assert store.lookup("a", range(200, 210)) is None and store.lookup("a", range(100, 110)) is not None
    assert not PrefixStore(max_bytes=one - 1).put("a", range(10), _filled(config, 10))


def test_put_rejects_a_cache_that_does_not_hold_the_prompt(config):
    with pytest.raises(ValueError, match="positions"):
        PrefixStore().put("k", range(11), _filled(config, 10))


def test_variant_key_ignores_names_and_timing_plants_but_not_kv_fields():
    base = VariantSpec("baseline")
    assert variant_key(base) == variant_key(VariantSpec.of("candidate", planted={"decode_delay": 0.5, "kv_copies": 2}))
    for changed in (
        VariantSpec.of("b", kv_cache_dtype="fp8"), VariantSpec.of("b", kv_scale="tensor"), VariantSpec.of("b", planted={"window": 64})
    ):
        assert variant_key(changed) != variant_key(base)


@pytest.mark.parametrize("dtype", ["auto", "fp8_e4m3", "int8"])
def test_reused_prefix_gives_the_fresh_next_token_and_logits_to_float_precision(tiny_llama, dtype):
    """The numerical caveat, measured: prefix from one prefill plus the rest in a second pass, against one pass."""
    g = torch.Generator().manual_seed(3)
    shared = torch.randint(2, 96, (1, 150), generator=g)
    other = torch.cat([shared, torch.randint(2, 96, (1, 60), generator=g)], dim=1)
    prompt = torch.cat([shared, torch.randint(2, 96, (1, 40), generator=g)], dim=1)
    kw = cache_keyword(tiny_llama)
    store = PrefixStore(min_tokens=16)
    with torch.inference_mode():
        first = make_cache(dtype, tiny_llama.config)
        tiny_llama(input_ids=other, use_cache=True, **{kw: first})
        store.put("k", other[0].tolist(), first)
        hit = store.lookup("k", prompt[0].tolist())
        assert hit is not None and hit.tokens == 150
        reused = tiny_llama(input_ids=prompt[:, 150:], use_cache=True, **{kw: hit.cache}).logits[0, -1]
        fresh = tiny_llama(input_ids=prompt, use_cache=True, **{kw: make_cache(dtype, tiny_llama.config)}).logits[0, -1]
    assert reused.argmax() == fresh.argmax()
    assert torch.allclose(reused, fresh, atol=1e-4, rtol=0)


def test_entries_keep_the_cache_as_given_on_the_host(config):
    from pytest_longctx.backends.kv_cache import cache_device

    store = PrefixStore(min_tokens=4)
    stored = _filled(config, 12)
    store.put("k", range(12), stored)
    hit = store.lookup("k", range(12))
    assert cache_device(hit.cache) == torch.device("cpu") and hit.cache is not stored


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_entries_wait_in_host_memory_and_come_back_to_the_gpu(config):
    from pytest_longctx.backends.kv_cache import cache_device, copy_prefix

    on_gpu = copy_prefix(_filled(config, 12), 12, device="cuda")
    before = torch.cuda.memory_allocated()
    store = PrefixStore(min_tokens=4)
    store.put("k", range(12), on_gpu)
    del on_gpu
    assert torch.cuda.memory_allocated() < before  # the stored copy is on the host; the GPU one is freed
    hit = store.lookup("k", list(range(8)) + [50])
    assert cache_device(hit.cache).type == "cuda" and hit.tokens == 8
    base = torch.cuda.memory_allocated()
    kept = PrefixStore(min_tokens=4, device=None)
    kept.put("k", range(12), copy_prefix(_filled(config, 12), 12, device="cuda"))
    assert torch.cuda.memory_allocated() > base  # device=None keeps entries where they are
