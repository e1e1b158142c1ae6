from __future__ import annotations

import pytest
import torch

from pytest_longctx.backends.kv_cache import Fp8Layer, cache_keyword, cache_nbytes, make_cache
from pytest_longctx.capacity.kv_math import KvShape


def _prefill_logits(model, ids, kv_cache_dtype, kv_scale="token_head"):
    cache = make_cache(kv_cache_dtype, model.config, kv_scale=kv_scale)
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=True, **{cache_keyword(model): cache}).logits, cache


@pytest.mark.parametrize("dtype", ["fp8", "fp8_e4m3", "fp8_e5m2", "int8", "int4"])
@pytest.mark.parametrize("kv_scale", ["token_head", "tensor", "channel"])
def test_fp8_cache_changes_what_prefill_attention_sees(tiny_llama, dtype, kv_scale):
    ids = torch.randint(2, 96, (1, 64), generator=torch.Generator().manual_seed(1))
    exact, _ = _prefill_logits(tiny_llama, ids, "auto")
    quant, _ = _prefill_logits(tiny_llama, ids, dtype, kv_scale)
    rel = ((quant - exact).norm() / exact.norm()).item()
    # Non-zero: the FP8 error reaches prefill. Small: the cache still holds the same K/V to within FP8 precision.
    assert 1e-5 < rel < 0.2


def test_fp8_round_trip_error_is_within_format_precision():
    layer = Fp8Layer(torch.float8_e4m3fn, "token_head")
    k = torch.randn(1, 2, 10, 16) * 5
    v = torch.randn(1, 2, 10, 16)
    k_back, v_back = layer.update(k, v)
    # e4m3 keeps 3 mantissa bits: relative rounding error at most 2**-4 of the per-row maximum.
    assert ((k_back - k).abs() <= k.abs().amax(-1, keepdim=True) * 2**-4 + 1e-6).all()
    assert not torch.equal(k_back, k)
    assert layer.qkeys.dtype == torch.float8_e4m3fn and layer.get_seq_length() == 10


def test_frozen_tensor_scale_saturates_instead_of_nan():
    layer = Fp8Layer(torch.float8_e4m3fn, "tensor")
    layer.update(torch.ones(1, 1, 4, 8), torch.ones(1, 1, 4, 8))
    k_back, _ = layer.update(torch.full((1, 1, 1, 8), 1000.0), torch.ones(1, 1, 1, 8))
    assert torch.isfinite(k_back).all()
    assert k_back[0, 0, -1].max().item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "dtype,kv_scale,elem",
    [("auto", None, 4), ("fp8_e4m3", "token_head", 1), ("fp8_e5m2", "tensor", 1), ("int8", "channel", 1), ("int4", "token_head", 0.5)],
)
def test_measured_kv_bytes_match_the_formula(tiny_llama, dtype, kv_scale, elem):
    ids = torch.randint(2, 96, (1, 300))
    _, cache = _prefill_logits(tiny_llama, ids, dtype, kv_scale or "token_head")
    shape = KvShape.from_config(tiny_llama.config)
    expected = shape.sequence_bytes(300, elem, scale=kv_scale)
    assert abs(cache_nbytes(cache) - expected) / expected < 0.01


def test_fp8_cache_crop_drops_the_last_tokens():
    layer = Fp8Layer(torch.float8_e4m3fn)
    layer.update(torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16))
    layer.crop(-3)
    assert layer.get_seq_length() == 5 and layer.kscale.shape[-2] == 5


def test_unknown_dtype_is_rejected(tiny_llama):
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        make_cache("int3", tiny_llama.config)


@pytest.mark.parametrize("dtype,bits", [("int8", 8), ("int4", 4)])
def test_integer_round_trip_error_is_half_a_step(dtype, bits):
    from pytest_longctx.backends.kv_cache import QuantizedLayer, codec_for

    layer = QuantizedLayer(codec_for(dtype), "token_head")
    k = torch.randn(1, 2, 10, 16) * 3
    k_back, _ = layer.update(k, torch.randn(1, 2, 10, 16))
    step = k.abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)
    assert ((k_back - k).abs() <= step / 2 + 1e-6).all()
    assert not torch.equal(k_back, k)
    assert layer.qkeys.shape[-1] == 16 * bits // 8  # int4 packs two codes per byte


def test_fewer_bits_mean_more_prefill_error(tiny_llama):
    ids = torch.randint(2, 96, (1, 64), generator=torch.Generator().manual_seed(2))
    exact, _ = _prefill_logits(tiny_llama, ids, "auto")
    errors = {}
    for dtype in ("int8", "fp8_e4m3", "int4"):
        quant, _ = _prefill_logits(tiny_llama, ids, dtype)
        errors[dtype] = ((quant - exact).norm() / exact.norm()).item()
    assert errors["int8"] < errors["fp8_e4m3"] < errors["int4"]


def test_channel_scales_are_frozen_after_the_prompt():
    from pytest_longctx.backends.kv_cache import QuantizedLayer, codec_for

    layer = QuantizedLayer(codec_for("int8"), "channel")
    layer.update(torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16))
    scale = layer.kscale.clone()
    layer.update(torch.randn(1, 2, 1, 16) * 100, torch.randn(1, 2, 1, 16))
    assert torch.equal(layer.kscale, scale) and layer.kscale.shape == (1, 2, 1, 16)
    assert layer.get_seq_length() == 9


def _prefilled(model, ids, dtype, kv_scale="token_head"):
    return _prefill_logits(model, ids, dtype, kv_scale)[1]


@pytest.mark.parametrize("dtype,kv_scale", [("auto", "token_head"), ("fp8_e4m3", "token_head"), ("int4", "tensor")])
def test_copy_prefix_copies_the_first_positions_and_leaves_the_source_alone(tiny_llama, dtype, kv_scale):
    from pytest_longctx.backends.kv_cache import cache_tensors, copy_prefix

    cache = _prefilled(tiny_llama, torch.randint(2, 96, (1, 40)), dtype, kv_scale)
    before = [t.clone() for t in cache_tensors(cache)]
    copied = copy_prefix(cache, 25)
    assert copied.get_seq_length() == 25 and cache.get_seq_length() == 40
    for src, dst in zip(cache_tensors(cache), cache_tensors(copied), strict=True):
        per_token = dst.shape[-2] == 25
        assert torch.equal(dst, src[..., :25, :] if per_token else src)  # frozen scales are copied whole
    for t in cache_tensors(copied):
        t.zero_()
    copied.update(torch.ones(1, 2, 1, 16), torch.ones(1, 2, 1, 16), 0)
    assert all(torch.equal(a, b) for a, b in zip(before, cache_tensors(cache), strict=True))


@pytest.mark.parametrize("dtype", ["auto", "int8"])
def test_crop_to_keeps_the_first_positions(tiny_llama, dtype):
    from pytest_longctx.backends.kv_cache import cache_tensors, crop_to

    cache = _prefilled(tiny_llama, torch.randint(2, 96, (1, 30)), dtype)
    first = [t[..., :18, :].clone() for t in cache_tensors(cache)]
    crop_to(cache, 18)
    assert cache.get_seq_length() == 18
    assert all(torch.equal(a, b) for a, b in zip(first, cache_tensors(cache), strict=True))


def test_reuse_scope_follows_what_a_tokens_codes_depend_on(tiny_llama):
    from pytest_longctx.backends.kv_cache import reuse_scope
    from tests.conftest import tiny_llama_config

    config = tiny_llama.config
    assert reuse_scope(make_cache("auto", config)) == "prefix"
    assert reuse_scope(make_cache("fp8", config)) == reuse_scope(make_cache("int4", config)) == "prefix"
    # Scales calibrated on the whole prompt: a shared prefix was quantized with another prompt's scale.
    assert reuse_scope(make_cache("int8", config, kv_scale="tensor")) == "exact"
    assert reuse_scope(make_cache("fp8", config, kv_scale="channel")) == "exact"
    sliding = tiny_llama_config(sliding_window=8, layer_types=["sliding_attention", "full_attention"])
    assert reuse_scope(make_cache("auto", sliding)) is None


@pytest.mark.parametrize("kv_scale", ["tensor", "channel", "token_head"])
def test_batched_rows_get_the_scales_and_codes_of_single_runs(kv_scale):
    from pytest_longctx.backends.kv_cache import QuantizedLayer, codec_for

    k = torch.randn(2, 2, 9, 16) * torch.tensor([1.0, 40.0]).view(2, 1, 1, 1)  # rows of very different ranges
    v = torch.randn(2, 2, 9, 16)
    batched = QuantizedLayer(codec_for("int8"), kv_scale)
    k_back, _ = batched.update(k, v)
    for row in range(2):
        single = QuantizedLayer(codec_for("int8"), kv_scale)
        single_back, _ = single.update(k[row : row + 1], v[row : row + 1])
        assert torch.equal(k_back[row : row + 1], single_back)
        assert torch.equal(batched.kscale[row : row + 1], single.kscale)


@pytest.mark.parametrize("dtype,kv_scale", [("auto", "token_head"), ("fp8", "token_head"), ("int4", "channel")])
def test_sequence_nbytes_is_what_a_single_run_holds(tiny_llama, dtype, kv_scale):
    from pytest_longctx.backends.kv_cache import sequence_nbytes

    ids = torch.randint(2, 96, (2, 24))
    batched = _prefilled(tiny_llama, ids, dtype, kv_scale)
    single = _prefilled(tiny_llama, ids[1:, :20], dtype, kv_scale)
    assert sequence_nbytes(batched, 1, 20) == cache_nbytes(single)


@pytest.mark.parametrize("dtype", ["fp8_e4m3", "int8", "int4"])
@pytest.mark.parametrize("kv_scale", ["token_head", "tensor", "channel"])
@pytest.mark.parametrize("in_place", [False, True])
def test_answers_only_quantized_layers_give_exactly_the_plain_layers_values(dtype, kv_scale, in_place):
    from pytest_longctx.backends.kv_cache import QuantizedLayer, codec_for

    plain = QuantizedLayer(codec_for(dtype), kv_scale)
    fast = QuantizedLayer(codec_for(dtype), kv_scale, keep_dequantized=True, append_in_place=in_place)
    g = torch.Generator().manual_seed(4)
    for tokens in (12, 1, 1, 3, 300):  # a prompt, decode steps, and more than the spare room
        k, v = torch.randn(1, 2, tokens, 16, generator=g) * 3, torch.randn(1, 2, tokens, 16, generator=g)
        for a, b in zip(plain.update(k, v), fast.update(k, v), strict=True):
            assert torch.equal(a, b)
        if tokens == 1:
            plain.crop(-1), fast.crop(-1)  # sliced from outside: appending starts over from the slice
    assert torch.equal(plain.qkeys, fast.qkeys) and torch.equal(plain.kscale, fast.kscale)


def test_append_layer_gives_exactly_the_dynamic_layers_values():
    from transformers.cache_utils import Cache, DynamicLayer

    from pytest_longctx.backends.kv_cache import AppendLayer, keep_last

    plain, fast = Cache(layers=[DynamicLayer()]), Cache(layers=[AppendLayer()])
    g = torch.Generator().manual_seed(5)
    for tokens in (20, 1, 1, 400, 1):
        k, v = torch.randn(1, 2, tokens, 16, generator=g), torch.randn(1, 2, tokens, 16, generator=g)
        for a, b in zip(plain.update(k, v, 0), fast.update(k, v, 0), strict=True):
            assert torch.equal(a, b)
        if tokens == 400:
            keep_last(plain, 64), keep_last(fast, 64)
    assert plain.get_seq_length() == fast.get_seq_length() == 65


def test_answers_only_caches_and_what_compact_leaves(tiny_llama):
    from pytest_longctx.backends.kv_cache import AppendLayer, QuantizedLayer, compact, copy_prefix, crop_to, reuse_scope

    ids = torch.randint(2, 96, (1, 40))
    for dtype in ("auto", "fp8"):
        fast = make_cache(dtype, tiny_llama.config, answers_only=True)
        assert isinstance(fast.layers[0], AppendLayer if dtype == "auto" else QuantizedLayer)
        assert reuse_scope(fast) == "prefix"
        plain = _prefilled(tiny_llama, ids, dtype)
        with torch.inference_mode():
            tiny_llama(input_ids=ids, use_cache=True, **{cache_keyword(tiny_llama): fast})
        crop_to(fast, 30)
        copied = copy_prefix(fast, 30)
        compact(fast)
        # Compacted: exactly the K/V bytes a plain cache of 30 tokens holds, in storage of that size.
        crop_to(plain, 30)
        assert cache_nbytes(fast) == cache_nbytes(plain)
        for layer in fast.layers:
            tensors = (layer.qkeys, layer.qvalues) if dtype != "auto" else (layer.keys, layer.values)
            assert all(t.untyped_storage().nbytes() == t.nbytes for t in tensors)
            assert getattr(layer, "dkeys", None) is None
        assert copied.get_seq_length() == 30


def test_appending_after_a_crop_goes_on_in_the_same_buffer():
    from transformers.cache_utils import Cache

    from pytest_longctx.backends.kv_cache import AppendLayer, crop_to

    cache = Cache(layers=[AppendLayer()])
    k = torch.randn(1, 2, 30, 16)
    cache.update(k[..., :20, :], k[..., :20, :], 0)
    buffer = cache.layers[0].keys.data_ptr()
    crop_to(cache, 12)
    keys, _ = cache.update(k[..., 12:30, :], k[..., 12:30, :], 0)
    assert keys.data_ptr() == buffer and torch.equal(keys, k)
