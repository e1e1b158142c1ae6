"""The model handle: generation from ids, haystacks and text; variants that share weights; model resolution."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pytest_longctx.gate.spec import DEFAULT_MODEL, ModelSpec, VariantSpec
from pytest_longctx.testing.model import ModelHandle, open_model, resolve_model_spec, variant_spec


@pytest.fixture
def handle(tiny_backend):
    return ModelHandle(tiny_backend, spec=ModelSpec(ref="tiny"))


def test_generate_from_ids_and_from_anything_with_token_ids(handle):
    ids = list(range(3, 40))

    plain = handle.generate(ids, max_new_tokens=3)
    prompt = SimpleNamespace(token_ids=tuple(ids))

    assert handle.generate(prompt, max_new_tokens=3).answer == plain.answer
    assert plain.kv_tokens == len(ids) + plain.new_tokens - 1
    assert plain.prefill_s > 0 and plain.kv_bytes == plain.kv_bytes_analytic
    with pytest.raises(ValueError, match="max_new_tokens"):
        handle.generate(ids, max_new_tokens=0)
    with pytest.raises(ValueError, match="no tokens"):
        handle.generate([], max_new_tokens=1)


def test_variants_share_the_backend_and_change_the_cache(handle):
    fp8 = handle.variant(kv_cache_dtype="fp8")

    assert fp8.backend is handle.backend and fp8.torch_model is handle.torch_model
    assert fp8.variant_spec == VariantSpec.of("kv_cache_dtype=fp8", kv_cache_dtype="fp8")
    assert handle.variant_spec.cache_plan().kv_cache_dtype == "auto"
    assert repr(fp8) == "<ModelHandle tiny kv_cache_dtype fp8>"
    ids = list(range(3, 40))
    assert fp8.generate(ids, max_new_tokens=1).kv_bytes < handle.generate(ids, max_new_tokens=1).kv_bytes / 3
    assert fp8.variant(kv_scale="tensor", name="coarse").variant_spec == VariantSpec.of("coarse", kv_cache_dtype="fp8", kv_scale="tensor")


def test_variant_settings_are_checked():
    with pytest.raises(TypeError, match="unknown variant setting 'rope_scaling'; this version supports: .*kv_cache_dtype, kv_scale"):
        variant_spec(VariantSpec("x"), rope_scaling={"type": "yarn"})
    with pytest.raises(ValueError, match="kv_cache_dtype': 'fp6' is not supported. Fix: use one of: auto, fp8"):
        variant_spec(VariantSpec("x"), kv_cache_dtype="fp6")
    assert variant_spec(VariantSpec("x"), planted={"window": 64}).find("planted").window == 64  # any key a gate side has


def test_text_prompts_go_through_the_chat_template(smollm_tokenizer):
    handle = ModelHandle(SimpleNamespace(tokenizer=smollm_tokenizer))
    templated = smollm_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)

    assert handle.encode("Hi") == smollm_tokenizer(templated, add_special_tokens=False)["input_ids"]
    assert handle.encode("Hi", chat=False) == smollm_tokenizer("Hi", add_special_tokens=False)["input_ids"]


def gate_with(ref, **model):
    return SimpleNamespace(model=ModelSpec(ref=ref, **model))


def test_model_resolution_order():
    gate = gate_with("gate-model", dtype="bfloat16")

    assert resolve_model_spec(option="opt", ini="ini", gates=[gate]) == ModelSpec(ref="opt")
    assert resolve_model_spec(option=None, ini="ini", gates=[gate]) == ModelSpec(ref="ini")
    assert resolve_model_spec(option=None, ini="", gates=[gate]) == gate.model
    assert resolve_model_spec(option=None, ini="", gates=[]) == ModelSpec(ref=DEFAULT_MODEL)
    assert resolve_model_spec(option="gate-model", ini="", gates=[gate]) == gate.model  # keeps the gate's dtype


def test_open_model_reuses_a_gate_runs_backend(tiny_backend):
    spec = ModelSpec(ref="tiny")
    run = SimpleNamespace(gate=SimpleNamespace(model=spec), backend=lambda: tiny_backend)
    other = SimpleNamespace(gate=SimpleNamespace(model=ModelSpec(ref="other")), backend=lambda: pytest.fail("loaded"))

    handle = open_model(spec, gate_runs=[other, run])

    assert handle.backend is tiny_backend and handle.ref == "tiny"
