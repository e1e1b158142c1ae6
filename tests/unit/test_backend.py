from __future__ import annotations

import random
import time

import pytest
import torch

from pytest_longctx.capacity.kv_math import KvShape
from pytest_longctx.gate.spec import VariantSpec

PROMPT = list(range(5, 69))


def test_greedy_loop_matches_transformers_generate(tiny_backend, tiny_llama):
    gen = tiny_backend.generate(PROMPT, variant=VariantSpec("baseline"), max_new_tokens=12)
    with torch.inference_mode():
        ref = tiny_llama.generate(torch.tensor([PROMPT]), max_new_tokens=12, do_sample=False, eos_token_id=0, pad_token_id=0)
    ref_new = ref[0, len(PROMPT):].tolist()
    assert gen.new_tokens == len(ref_new)
    assert gen.answer == tiny_backend.tokenizer.decode(ref_new)


@pytest.mark.parametrize("dtype,elem,scale", [("auto", 4, None), ("fp8_e4m3", 1, "token_head")])
def test_generation_reports_timings_and_kv_bytes_at_the_final_length(tiny_backend, dtype, elem, scale):
    gen = tiny_backend.generate(PROMPT, variant=VariantSpec.of("v", kv_cache_dtype=dtype), max_new_tokens=6)
    # The last sampled token is never fed back, so the cache holds prompt + new - 1 tokens.
    assert gen.kv_tokens == len(PROMPT) + gen.new_tokens - 1
    expected = KvShape.from_config(tiny_backend.model.config).sequence_bytes(gen.kv_tokens, elem, scale=scale)
    assert gen.kv_bytes == gen.kv_bytes_analytic == expected
    assert 0 < gen.prefill_s <= gen.total_s
    assert gen.peak_bytes is None  # CPU: no CUDA peak to report


def test_fp8_variant_uses_a_quarter_of_fp32_kv_plus_scales(tiny_backend):
    base = tiny_backend.generate(PROMPT, variant=VariantSpec("b"), max_new_tokens=1)
    fp8 = tiny_backend.generate(PROMPT, variant=VariantSpec.of("c", kv_cache_dtype="fp8"), max_new_tokens=1)
    head_dim = KvShape.from_config(tiny_backend.model.config).head_dim
    assert fp8.kv_bytes / base.kv_bytes == pytest.approx((1 + 4 / head_dim) / 4)


def _reference_tokens(model, prompt, n):
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=0, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_stop_sees_each_answer_prefix_and_ends_generation_where_it_accepts(tiny_backend, tiny_llama):
    ref = _reference_tokens(tiny_llama, PROMPT, 12)
    assert 0 not in ref  # the tiny model runs to the cap, so only the stop check can end it early
    seen: list[str] = []

    def stop(text: str) -> bool:
        seen.append(text)
        return len(seen) == 5

    gen = tiny_backend.generate(PROMPT, variant=VariantSpec("b"), max_new_tokens=12, stop=stop)
    decode = tiny_backend.tokenizer.decode
    assert seen == [decode(ref[:i]) for i in range(1, 6)]
    assert gen.new_tokens == 5 and gen.answer == decode(ref[:5]).strip()
    assert not gen.hit_limit and gen.kv_tokens == len(PROMPT) + 4


def test_hit_limit_only_when_the_cap_ends_generation(tiny_backend):
    capped = tiny_backend.generate(PROMPT, variant=VariantSpec("b"), max_new_tokens=6, stop=lambda text: False)
    assert capped.hit_limit and capped.new_tokens == 6
    # The cap's last token is also the one the check accepts: the check, not the cap, ended the answer.
    accepted = tiny_backend.generate(PROMPT, variant=VariantSpec("b"), max_new_tokens=6, stop=lambda text: len(text) == 6)
    assert not accepted.hit_limit and accepted.new_tokens == 6 and accepted.answer == capped.answer


def test_time_in_the_stop_check_is_not_decode_time(tiny_backend):
    def slow_stop(text: str) -> bool:
        time.sleep(0.25)
        return False

    plain = tiny_backend.generate(PROMPT, variant=VariantSpec("b"), max_new_tokens=5)
    gen = tiny_backend.generate(PROMPT, variant=VariantSpec("b"), max_new_tokens=5, stop=slow_stop)
    # Each check sleeps 0.25 s. Counted, they would add that to every decode step and 1.25 s to the total;
    # compared with the same run without checks, so a busy machine slows both alike.
    assert gen.answer == plain.answer
    assert gen.decode_s_per_token < plain.decode_s_per_token + 0.15 and gen.total_s < plain.total_s + 0.75


def test_one_stalled_decode_step_does_not_decide_decode_speed(tiny_backend, monkeypatch):
    plain = tiny_backend.generate(PROMPT, variant=VariantSpec("b"), max_new_tokens=9, stop=lambda text: False)
    forward = tiny_backend._forward_rows
    calls = {"n": 0}

    def stalls_once(ids, cache, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the prefill, then the third decode step: as if the OS took the core away
            time.sleep(0.5)
        return forward(ids, cache, **kwargs)

    monkeypatch.setattr(tiny_backend, "_forward_rows", stalls_once)
    stalled = tiny_backend.generate(PROMPT, variant=VariantSpec("b"), max_new_tokens=9, stop=lambda text: False)
    assert stalled.answer == plain.answer and calls["n"] == 9
    # The stall is in the end-to-end time; decode per token is the median step, which one stall cannot move
    # (its mean over 8 steps would have grown by >= 62 ms).
    assert stalled.total_s >= plain.total_s + 0.4
    assert stalled.decode_s_per_token < plain.decode_s_per_token + 0.03


def test_decode_seconds_is_the_median_step():
    from pytest_longctx.backends.in_process import decode_seconds

    assert decode_seconds([0.01, 0.01, 0.5, 0.012, 0.011]) == 0.011
    assert decode_seconds([]) is None


def _sweep_prompts(lengths=(120, 240), depths=(0.0, 0.3, 0.7, 1.0), seed=0):
    """Needle-in-a-haystack shaped prompts: one seeded filler, a needle at each depth, the same question."""
    rng = random.Random(seed)
    filler = [rng.randrange(2, 96) for _ in range(max(lengths))]
    prompts = {}
    for length in lengths:
        for depth in depths:
            at = int(depth * length)
            prompts[(length, depth)] = tuple([1, *filler[:at], 7, 7, 9, 9, 11, *filler[at:length], 3, 4, 5, 6])
    return prompts


@pytest.mark.parametrize("dtype", ["auto", "fp8_e4m3", "int8", "int4"])
def test_prefix_reuse_answers_exactly_as_fresh_runs_across_a_sweep(tiny_backend, dtype):
    from pytest_longctx.backends.prefix_reuse import PrefixStore, reuse_order

    variant = VariantSpec.of("v", kv_cache_dtype=dtype)
    prompts = _sweep_prompts()
    store = PrefixStore(min_tokens=16)
    reused_total = 0
    for key in reuse_order(list(prompts.items())):
        fresh = tiny_backend.generate(prompts[key], variant=variant, max_new_tokens=10)
        reused = tiny_backend.generate(prompts[key], variant=variant, max_new_tokens=10, reuse=store)
        assert (reused.answer, reused.new_tokens, reused.kv_tokens, reused.kv_bytes) == (
            fresh.answer, fresh.new_tokens, fresh.kv_tokens, fresh.kv_bytes
        ), key
        assert fresh.reused_tokens == 0
        reused_total += reused.reused_tokens
    # Depth-1.0 prompts share all their filler with the longer prompts; most cells reuse something.
    assert store.hits >= 5 and reused_total == store.reused_tokens > sum(map(len, prompts.values())) // 3


@pytest.mark.parametrize("kv_scale", ["tensor", "channel"])
def test_frozen_scales_are_reused_only_for_an_identical_prompt(tiny_backend, kv_scale):
    from pytest_longctx.backends.prefix_reuse import PrefixStore

    variant = VariantSpec.of("v", kv_cache_dtype="int8", kv_scale=kv_scale)
    prompts = _sweep_prompts(lengths=(120,), depths=(0.5, 1.0))
    store = PrefixStore(min_tokens=16)
    first = tiny_backend.generate(prompts[(120, 1.0)], variant=variant, max_new_tokens=8, reuse=store)
    sharing = tiny_backend.generate(prompts[(120, 0.5)], variant=variant, max_new_tokens=8, reuse=store)
    again = tiny_backend.generate(prompts[(120, 1.0)], variant=variant, max_new_tokens=8, reuse=store)
    assert first.reused_tokens == sharing.reused_tokens == 0
    assert again.reused_tokens == len(prompts[(120, 1.0)]) - 1 and again.answer == first.answer


def test_reuse_never_crosses_variants_and_skips_planted_windows(tiny_backend):
    from pytest_longctx.backends.prefix_reuse import PrefixStore

    prompts = _sweep_prompts(lengths=(120,), depths=(0.5, 1.0))
    store = PrefixStore(min_tokens=16)
    tiny_backend.generate(prompts[(120, 1.0)], variant=VariantSpec("b"), max_new_tokens=4, reuse=store)
    fp8 = tiny_backend.generate(prompts[(120, 0.5)], variant=VariantSpec.of("c", kv_cache_dtype="fp8"), max_new_tokens=4, reuse=store)
    renamed = tiny_backend.generate(prompts[(120, 0.5)], variant=VariantSpec("c"), max_new_tokens=4, reuse=store)
    assert fp8.reused_tokens == 0 and renamed.reused_tokens > 0  # the name is not part of the K/V
    windowed = VariantSpec.of("w", planted={"window": 32})
    stored = len(store)
    tiny_backend.generate(prompts[(120, 1.0)], variant=windowed, max_new_tokens=4, reuse=store)
    again = tiny_backend.generate(prompts[(120, 1.0)], variant=windowed, max_new_tokens=4, reuse=store)
    assert again.reused_tokens == 0 and len(store) == stored


def _batch_matches_single_runs(backend, variant, prompts, stops):
    batch = backend.generate_batch(prompts, variant=variant, max_new_tokens=10, stop=stops)
    for prompt, check, row in zip(prompts, stops, batch, strict=True):
        single = backend.generate(prompt, variant=variant, max_new_tokens=10, stop=check)
        assert (row.answer, row.new_tokens, row.hit_limit, row.kv_tokens, row.kv_bytes, row.kv_bytes_analytic) == (
            single.answer, single.new_tokens, single.hit_limit, single.kv_tokens, single.kv_bytes, single.kv_bytes_analytic
        )
    return batch


@pytest.mark.parametrize("dtype,kv_scale", [("auto", "token_head"), ("fp8_e4m3", "token_head"), ("int8", "tensor"), ("int4", "channel")])
def test_batch_rows_answer_as_single_runs(tiny_backend, dtype, kv_scale):
    prompts = [p for (length, _), p in _sweep_prompts(lengths=(120,), depths=(0.0, 0.5, 1.0)).items()]
    stops = [None, lambda text: len(text) >= 4, lambda text: len(text) >= 7]  # rows that finish at different steps
    batch = _batch_matches_single_runs(tiny_backend, VariantSpec.of("v", kv_cache_dtype=dtype, kv_scale=kv_scale), prompts, stops)
    assert [row.new_tokens for row in batch] == [10, 4, 7]


def test_batch_needs_prompts_of_one_length(tiny_backend):
    with pytest.raises(ValueError, match="one token count"):
        tiny_backend.generate_batch([PROMPT, PROMPT[:-1]], variant=VariantSpec("b"), max_new_tokens=2)
    assert not tiny_backend.prefers_batches  # CPU: batches cost their rows' sum


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype,kv_scale", [("auto", "token_head"), ("fp8_e4m3", "token_head"), ("int8", "tensor")])
def test_cuda_batch_and_reuse_answer_as_single_fresh_runs(tiny_llama, dtype, kv_scale):
    import copy

    from pytest_longctx.backends.in_process import TransformersBackend
    from pytest_longctx.backends.prefix_reuse import PrefixStore, reuse_order
    from tests.conftest import CharTokenizer

    backend = TransformersBackend(copy.deepcopy(tiny_llama).to("cuda"), CharTokenizer(), fingerprint="tiny-cuda")
    assert backend.prefers_batches
    variant = VariantSpec.of("v", kv_cache_dtype=dtype, kv_scale=kv_scale)
    prompts = _sweep_prompts(lengths=(120, 240))
    for length in (120, 240):
        rows = [p for (n, _), p in prompts.items() if n == length]
        stops = [None, lambda text: len(text) >= 3, None, lambda text: len(text) >= 6]
        batch = _batch_matches_single_runs(backend, variant, rows, stops)
        assert all(row.peak_bytes is not None for row in batch)
    store = PrefixStore(min_tokens=16)
    for key in reuse_order(list(prompts.items())):
        fresh = backend.generate(prompts[key], variant=variant, max_new_tokens=10)
        reused = backend.generate(prompts[key], variant=variant, max_new_tokens=10, reuse=store)
        assert reused.answer == fresh.answer, key


def test_a_store_only_run_is_a_fresh_run_that_feeds_later_prompts(tiny_backend):
    from pytest_longctx.backends.prefix_reuse import PrefixStore

    prompts = _sweep_prompts(lengths=(120,), depths=(0.5, 1.0))
    variant = VariantSpec.of("v", kv_cache_dtype="fp8")
    store = PrefixStore(min_tokens=16)
    tiny_backend.generate(prompts[(120, 1.0)], variant=variant, max_new_tokens=4, reuse=store)
    timed = tiny_backend.generate(prompts[(120, 0.5)], variant=variant, max_new_tokens=4, reuse=store, reuse_prefix=False)
    assert timed.reused_tokens == 0 and len(store) == 2
    again = tiny_backend.generate(prompts[(120, 0.5)], variant=variant, max_new_tokens=4, reuse=store)
    assert again.reused_tokens == len(prompts[(120, 0.5)]) - 1 and again.answer == timed.answer


def test_a_windowed_side_prefills_and_decodes_within_its_window(tiny_backend):
    import torch

    from pytest_longctx.capacity.kv_math import KvShape
    from pytest_longctx.changes.window import AttentionWindow
    from pytest_longctx.gate.spec import VariantSpec

    prompt = torch.randint(2, 90, (300,), generator=torch.Generator().manual_seed(3)).tolist()
    window = AttentionWindow(window=64, sink_tokens=4)
    windowed = tiny_backend.generate(prompt,
                                     variant=VariantSpec.of("w", attention={"window": window.window, "sink_tokens": window.sink_tokens}),
                                     max_new_tokens=6)
    full = tiny_backend.generate(prompt, variant=VariantSpec("f"), max_new_tokens=6)
    seen = len(prompt) + windowed.new_tokens - 1
    assert windowed.kv_tokens == 68 and full.kv_tokens == seen
    shape = KvShape.from_config(tiny_backend.model.config)
    assert windowed.kv_bytes == windowed.kv_bytes_analytic == shape.sequence_bytes(68, 4)
    assert windowed.kv_bytes < full.kv_bytes / 4
    # A window that holds the whole prompt is plain causal attention: the same answer as full attention.
    wide = tiny_backend.generate(prompt, variant=VariantSpec.of("wide", attention={"window": 4096}), max_new_tokens=6)
    assert wide.answer == full.answer


def test_the_rest_after_a_reused_prefix_is_prefilled_in_chunks_on_cpu(tiny_backend, monkeypatch):
    from pytest_longctx.backends import in_process as backend_module
    from pytest_longctx.backends.prefix_reuse import PrefixStore

    monkeypatch.setattr(backend_module, "_CPU_REUSE_CHUNK", 16)
    prompts = _sweep_prompts(lengths=(120,), depths=(0.5, 1.0))
    variant = VariantSpec.of("v", kv_cache_dtype="int8")
    store = PrefixStore(min_tokens=16)
    tiny_backend.generate(prompts[(120, 1.0)], variant=variant, max_new_tokens=3, reuse=store)
    calls: list[int] = []
    hook = tiny_backend.model.register_forward_pre_hook(
        lambda _, args, kwargs: calls.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        reused = tiny_backend.generate(prompts[(120, 0.5)], variant=variant, max_new_tokens=3, reuse=store)
    finally:
        hook.remove()
    rest = len(prompts[(120, 0.5)]) - reused.reused_tokens
    chunks = [16] * (rest // 16) + ([rest % 16] if rest % 16 else [])
    assert calls[: len(chunks)] == chunks  # then decoding
    assert reused.answer == tiny_backend.generate(prompts[(120, 0.5)], variant=variant, max_new_tokens=3).answer


def test_drafts_follow_the_latest_earlier_occurrence_of_the_answers_tail():
    from pytest_longctx.backends.drafts import Drafts

    drafts = Drafts([1, 2, 3, 4, 9, 2, 3, 5, 6, 7])
    assert drafts.propose([2, 3], limit=10) == [5, 6, 7, 2, 3]  # the latest "2 3" before the tail, then onwards
    assert drafts.propose([2, 3, 5, 8], limit=2) == []  # "5 8" and "8" never occurred
    assert drafts.propose([2, 3, 5, 8, 6], limit=2) == [7, 2]  # no "8 6": the last token alone
    assert drafts.propose([2, 3, 5, 8, 6], limit=0) == []


def test_answers_only_runs_verify_drafts_and_answer_as_token_by_token_runs(tiny_backend):
    from pytest_longctx.backends.prefix_reuse import PrefixStore

    prompts = _sweep_prompts(lengths=(200,), depths=(0.3, 0.6))
    calls: list[int] = []
    hook = tiny_backend.model.register_forward_pre_hook(
        lambda _, args, kwargs: calls.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        for prompt in prompts.values():
            for check in (None, lambda text: len(text) >= 13):
                plain = tiny_backend.generate(prompt, variant=VariantSpec("b"), max_new_tokens=20, stop=check)
                calls.clear()
                fast = tiny_backend.generate(prompt, variant=VariantSpec("b"), max_new_tokens=20, stop=check, reuse=PrefixStore())
                assert (fast.answer, fast.new_tokens, fast.hit_limit, fast.kv_tokens) == (
                    plain.answer, plain.new_tokens, plain.hit_limit, plain.kv_tokens
                )
                assert len(calls) < fast.new_tokens  # drafts were accepted: fewer passes than tokens
    finally:
        hook.remove()
