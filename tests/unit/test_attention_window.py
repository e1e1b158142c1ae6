from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaForCausalLM

from pytest_longctx.backends.kv_cache import cache_keyword, cache_nbytes, make_cache
from pytest_longctx.capacity.kv_math import KvShape
from pytest_longctx.changes.window import AttentionWindow, make_window_cache, stored_tokens, windowed_prefill
from tests.conftest import tiny_llama_config

PROMPT = torch.randint(2, 96, (1, 23), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # These matrices are tiny: on a busy 2-core machine a second intra-op thread only spins, doubling the time.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request):
    torch.manual_seed(0)
    built = LlamaForCausalLM(tiny_llama_config(attn_implementation=request.param)).eval()
    assert built.config._attn_implementation == request.param
    return built


def _rule_mask(n: int, window: int, sinks: int) -> torch.Tensor:
    """The window rule written out longhand, independently of AttentionWindow.allows, as an additive 4D mask."""
    allowed = torch.tensor([[j <= i and (j < sinks or j > i - window) for j in range(n)] for i in range(n)])
    return torch.zeros(n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]


def _reference_logits(model, ids: torch.Tensor, window: int, sinks: int) -> torch.Tensor:
    """Every position's logits from one cache-free forward over the whole sequence under the rule's mask."""
    n = ids.shape[1]
    with torch.inference_mode():
        mask, positions = _rule_mask(n, window, sinks), torch.arange(n)[None]
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
    return out.logits[0]


def _causal_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits[0]


def _decode(model, cache, token: int, position: int | None) -> torch.Tensor:
    """One plain decode step, as the backend runs it: no mask, explicit position ids."""
    kwargs = {} if position is None else {"position_ids": torch.tensor([[position]])}
    out = model(input_ids=torch.tensor([[token]]), use_cache=True, **{cache_keyword(model): cache}, **kwargs)
    return out.logits[0, -1]


def _windowed_greedy(model, ids, window: AttentionWindow, chunk: int, steps: int, *, positions=True, **cache_kw):
    cache = make_window_cache(window, model.config, **cache_kw)
    with torch.inference_mode():
        logits = [windowed_prefill(model, ids, cache, window=window, chunk_size=chunk)[0]]
        tokens: list[int] = []
        for step in range(steps):
            tokens.append(int(logits[-1].argmax()))
            logits.append(_decode(model, cache, tokens[-1], ids.shape[1] + step if positions else None))
    return torch.stack(logits), tokens, cache


@pytest.mark.parametrize(
    ("window", "sinks", "chunk"),
    [
        (4, 0, 3),  # no sinks, chunks smaller than the window
        (4, 2, 9),  # chunks larger than the window
        (5, 3, 5),  # chunks exactly the window
        (1, 2, 4),  # each token sees only the sinks and itself
        (6, 1, 1),  # token-by-token prefill
        (3, 0, 64),  # one chunk longer than the prompt
        (7, 4, 2),
        (40, 0, 8),  # a window past the sequence: plain causal attention
    ],
)
def test_windowed_prefill_and_decode_match_a_masked_full_forward(model, window, sinks, chunk):
    steps = 4
    logits, tokens, _ = _windowed_greedy(model, PROMPT, AttentionWindow(window, sinks), chunk, steps)
    sequence = torch.cat([PROMPT, torch.tensor([tokens])], dim=1)
    reference = _reference_logits(model, sequence, window, sinks)[PROMPT.shape[1] - 1 :]
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=0)
    if window >= sequence.shape[1]:
        torch.testing.assert_close(logits, _causal_logits(model, sequence)[PROMPT.shape[1] - 1 :], atol=1e-4, rtol=0)


def test_decode_positions_default_to_the_tokens_seen(model):
    # get_seq_length() counts tokens seen, not held, so a forward without position ids still places RoPE right.
    window = AttentionWindow(4, 2)
    explicit, _, _ = _windowed_greedy(model, PROMPT, window, 5, 3)
    implicit, _, cache = _windowed_greedy(model, PROMPT, window, 5, 3, positions=False)
    torch.testing.assert_close(implicit, explicit, atol=1e-6, rtol=0)
    assert cache.get_seq_length() == PROMPT.shape[1] + 3 and stored_tokens(cache) == window.capacity


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "int8"])
def test_a_reset_cache_runs_like_a_fresh_one(tiny_llama, kv_cache_dtype):
    window = AttentionWindow(4, 1)
    cache = make_window_cache(window, tiny_llama.config, kv_cache_dtype=kv_cache_dtype)
    with torch.inference_mode():
        first = windowed_prefill(tiny_llama, PROMPT, cache, window=window, chunk_size=5)
        cache.reset()
        assert cache.get_seq_length() == 0
        again = windowed_prefill(tiny_llama, PROMPT, cache, window=window, chunk_size=5)
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    assert stored_tokens(cache) == window.capacity


@pytest.mark.parametrize("tokens", [1, 3, 7, 8, 23])
def test_cache_holds_sinks_plus_window_and_its_bytes_shrink(tiny_llama, tokens):
    window = AttentionWindow(5, 2)
    ids = PROMPT[:, :tokens]
    shape = KvShape.from_config(tiny_llama.config)
    full = make_cache("auto", tiny_llama.config)
    with torch.inference_mode():
        tiny_llama(input_ids=ids, use_cache=True, **{cache_keyword(tiny_llama): full})
    _, _, cache = _windowed_greedy(tiny_llama, ids, window, 3, 0)
    held = window.kv_tokens(tokens)
    assert held == min(tokens, 7) and stored_tokens(cache) == held and cache.get_seq_length() == tokens
    assert cache_nbytes(cache) == shape.sequence_bytes(held, 4) == cache_nbytes(full) * held // tokens
    _, _, cache = _windowed_greedy(tiny_llama, ids, window, 3, 4)
    assert stored_tokens(cache) == window.kv_tokens(tokens + 4) == min(tokens + 4, 7)
    assert cache_nbytes(cache) == shape.sequence_bytes(min(tokens + 4, 7), 4)


@pytest.mark.parametrize(("dtype", "kv_scale"), [("int8", "token_head"), ("fp8", "tensor"), ("int4", "channel")])
def test_window_composes_with_quantized_layers(tiny_llama, dtype, kv_scale):
    window = AttentionWindow(5, 2)
    exact, _, _ = _windowed_greedy(tiny_llama, PROMPT, window, 4, 3)
    quant, _, cache = _windowed_greedy(tiny_llama, PROMPT, window, 4, 3, kv_cache_dtype=dtype, kv_scale=kv_scale)
    elem = 0.5 if dtype == "int4" else 1
    shape = KvShape.from_config(tiny_llama.config)
    assert stored_tokens(cache) == 7 and cache_nbytes(cache) == shape.sequence_bytes(7, elem, scale=kv_scale)
    # Same window, K/V to within the codec's precision (the first decode step may pick another token).
    rel = ((quant[0] - exact[0]).norm() / exact[0].norm()).item()
    assert 1e-5 < rel < 0.2


def test_queries_that_see_everything_are_unaffected_and_the_rest_change(tiny_llama):
    window = AttentionWindow(4, 2)
    full = _causal_logits(tiny_llama, PROMPT)
    for m in range(1, 12):
        cache = make_window_cache(window, tiny_llama.config)
        with torch.inference_mode():
            last = windowed_prefill(tiny_llama, PROMPT[:, :m], cache, window=window, chunk_size=3)[0]
        gap = (last - full[m - 1]).abs().max().item()
        # Query m-1 misses no key while m-1 < sinks + window; beyond, the evicted keys are missed.
        assert gap < 1e-5 if m <= window.capacity else gap > 1e-3, (m, gap)


def test_evidence_outside_the_window_no_longer_reaches_the_output(tiny_llama):
    window = AttentionWindow(4, 2)
    ids = torch.randint(2, 96, (1, 30), generator=torch.Generator().manual_seed(5))

    def last_logits(tokens, windowed):
        if not windowed:
            return _causal_logits(tiny_llama, tokens)[-1]
        with torch.inference_mode():
            cache = make_window_cache(window, tiny_llama.config)
            return windowed_prefill(tiny_llama, tokens, cache, window=window, chunk_size=8)[0]

    def changed(position, windowed):
        other = ids.clone()
        other[0, position] = 2 + (int(other[0, position]) - 1) % 94
        return (last_logits(other, windowed) - last_logits(ids, windowed)).abs().max().item()

    # With 2 layers the last query (29) reaches back 2 x (window - 1) positions, to 23, plus the sinks 0 and 1.
    assert all(changed(position, windowed=False) > 1e-3 for position in (2, 10, 22, 23))
    assert all(changed(position, windowed=True) < 1e-6 for position in (2, 10, 22))
    assert changed(23, windowed=True) > 1e-3  # the edge of what two windowed layers reach
    assert changed(0, windowed=True) > 1e-3  # a sink still counts


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 0}, "attention.window must be an integer >= 1, got 0"),
        ({"window": -3}, "attention.window must be an integer >= 1"),
        ({"window": 2.5}, "attention.window must be an integer >= 1"),
        ({"window": True}, "attention.window must be an integer >= 1"),
        ({"window": 4, "sink_tokens": -1}, "attention.sink_tokens must be an integer >= 0, got -1"),
    ],
)
def test_invalid_window_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AttentionWindow(**kwargs)


def test_windowed_prefill_rejects_what_it_cannot_run_exactly(tiny_llama):
    window = AttentionWindow(4, 1)
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        windowed_prefill(tiny_llama, PROMPT, make_window_cache(window, tiny_llama.config), window=window, chunk_size=0)
    with pytest.raises(ValueError, match="make_window_cache"):
        windowed_prefill(tiny_llama, PROMPT, make_cache("auto", tiny_llama.config), window=window)
    with pytest.raises(ValueError, match="another window"):
        windowed_prefill(tiny_llama, PROMPT, make_window_cache(AttentionWindow(4), tiny_llama.config), window=window)
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    with pytest.raises(ValueError, match="attn_implementation"):
        windowed_prefill(flash, PROMPT, make_window_cache(window, tiny_llama.config), window=window)
    with pytest.raises(NotImplementedError, match="evicted"):
        make_window_cache(window, tiny_llama.config).crop(-1)
