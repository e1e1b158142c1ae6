from __future__ import annotations

import math

import pytest

from pytest_longctx.backends.loading import ModelLoadError, load_model
from pytest_longctx.changes.rope import RopeError, RopeSettings, apply_rope, check_against_config, parse_rope, reset_rope_state
from tests.conftest import tiny_llama_config

THETA = 5000.0  # not transformers' default 10000, so a lost rope_theta shows
HEAD_DIM = 16  # tiny_llama_config: hidden 64 / 4 heads

VALID = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 32, "beta_slow": 1,
        "attention_factor": 1.2,
    },
    "llama3": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
    },
    "longrope": {
        "rope_type": "longrope",
        "short_factor": [1.0 + i / 8 for i in range(HEAD_DIM // 2)],
        "long_factor": [2.0 + i for i in range(HEAD_DIM // 2)],
        "original_max_position_embeddings": 64,
    },
}


def _error(raw, max_position_embeddings=None) -> RopeError:
    with pytest.raises(RopeError) as caught:
        parse_rope(raw, max_position_embeddings)
    return caught.value


# --- parse_rope: what needs no model ---


@pytest.mark.parametrize("rope_type", sorted(VALID))
def test_every_supported_type_parses_to_a_hashable_value(rope_type):
    settings = parse_rope(VALID[rope_type], 256)
    again = parse_rope(dict(reversed(list(VALID[rope_type].items()))), 256)
    assert settings == again and hash(settings) == hash(again)  # one backend per distinct setting
    assert settings.rope_type == rope_type and settings.max_position_embeddings == 256
    assert [k for k, _ in settings.parameters] == sorted(k for k in VALID[rope_type] if k != "rope_type")
    assert settings.rope_parameters() == VALID[rope_type]


@pytest.mark.parametrize(("raw", "length"), [*((raw, None) for raw in VALID.values()), (VALID["yarn"], 256), ({}, 4096)])
def test_a_record_reads_back_to_the_same_settings(raw, length):
    import json

    record = json.loads(json.dumps(parse_rope(raw, length).as_record()))
    assert parse_rope(record["rope_parameters"], record.get("max_position_embeddings")) == parse_rope(raw, length)


def test_longrope_lists_become_tuples_of_floats_and_back_to_lists():
    settings = parse_rope({**VALID["longrope"], "short_factor": [1] * 8})
    assert settings.get("short_factor") == (1.0,) * 8
    assert settings.rope_parameters()["short_factor"] == [1.0] * 8
    assert settings.as_record() == {"rope_parameters": settings.rope_parameters()}


def test_rope_error_is_a_value_error_with_key_problem_and_fix():
    error = _error({"rope_type": "linear", "factor": 1.0})
    assert isinstance(error, ValueError)
    assert error.key == "rope_parameters.factor"
    assert "above 1" in error.problem and "factor: 2.0" in error.fix
    assert str(error) == f"key 'rope_parameters.factor': {error.problem}. Fix: {error.fix}."  # one format for every change's errors


def test_empty_parameters_keep_the_models_rope_and_change_only_the_length():
    settings = parse_rope({}, 4096)
    assert settings == RopeSettings(None, (), 4096)
    assert settings.as_record() == {"rope_parameters": {}, "max_position_embeddings": 4096}
    assert _error({}).key == "rope_parameters"
    llama31 = tiny_llama_config(rope_parameters={"rope_theta": THETA, **VALID["llama3"]})
    longer = apply_rope(llama31, settings)
    assert longer.rope_parameters == llama31.rope_parameters and longer.max_position_embeddings == 4096
    with pytest.raises(RopeError, match="would run unscaled"):  # a dynamic model's threshold moved past its length
        apply_rope(tiny_llama_config(rope_parameters={"rope_theta": THETA, **VALID["dynamic"]}), settings)


def test_unknown_or_missing_rope_type():
    assert _error({"rope_type": "ntk"}).key == "rope_parameters.rope_type"
    assert "linear, dynamic, yarn, llama3, longrope" in _error({"rope_type": "ntk"}).fix
    assert _error({"factor": 2.0}).key == "rope_parameters.rope_type"
    legacy = _error({"type": "linear", "factor": 2.0})
    assert legacy.key == "rope_parameters.type" and "rope_type" in legacy.fix
    assert _error(["linear"]).key == "rope_parameters"


@pytest.mark.parametrize(
    ("rope_type", "missing"),
    [("linear", "factor"), ("dynamic", "factor"), ("yarn", "factor"), ("yarn", "original_max_position_embeddings"),
     ("llama3", "low_freq_factor"), ("llama3", "high_freq_factor"), ("llama3", "original_max_position_embeddings"),
     ("longrope", "short_factor"), ("longrope", "long_factor"), ("longrope", "original_max_position_embeddings")],
)
def test_missing_required_key_is_named(rope_type, missing):
    raw = {k: v for k, v in VALID[rope_type].items() if k != missing}
    error = _error(raw)
    assert error.key == f"rope_parameters.{missing}" and f"{rope_type} requires {missing}" in error.problem


def test_unknown_keys_are_rejected_and_say_where_they_belong():
    error = _error({**VALID["linear"], "beta_fast": 32})
    assert error.key == "rope_parameters.beta_fast"
    assert "belongs to yarn" in error.problem and "linear accepts rope_theta (optional), factor" in error.fix
    assert _error({**VALID["yarn"], "low_freq_factor": 1.0}).key == "rope_parameters.low_freq_factor"
    assert _error({**VALID["linear"], "facter": 2.0}).key == "rope_parameters.facter"
    assert "architecture" in _error({**VALID["linear"], "partial_rotary_factor": 0.5}).problem


@pytest.mark.parametrize(
    ("raw", "key", "problem"),
    [
        ({"rope_type": "linear", "factor": "2"}, "factor", "must be a number, got str '2'"),
        ({"rope_type": "linear", "factor": True}, "factor", "must be a number, got bool"),
        ({"rope_type": "linear", "factor": float("nan")}, "factor", "must be a number"),
        ({**VALID["yarn"], "original_max_position_embeddings": 64.0}, "original_max_position_embeddings", "positive integer"),
        ({**VALID["yarn"], "original_max_position_embeddings": 0}, "original_max_position_embeddings", "positive integer"),
        ({**VALID["yarn"], "truncate": "yes"}, "truncate", "true or false"),
        ({**VALID["yarn"], "attention_factor": 0}, "attention_factor", "must be positive"),
        ({**VALID["yarn"], "beta_slow": -1}, "beta_slow", "must be positive"),
        ({**VALID["longrope"], "short_factor": 1.0}, "short_factor", "list of positive numbers"),
        ({**VALID["longrope"], "long_factor": [1.0, "x"]}, "long_factor", "list of positive numbers"),
        ({**VALID["longrope"], "long_factor": []}, "long_factor", "non-empty"),
        ({**VALID["longrope"], "long_factor": [0.0] * 8}, "long_factor", "positive numbers"),
        ({"rope_type": "linear", "factor": 2.0, "rope_theta": 0}, "rope_theta", "must be positive"),
    ],
)
def test_wrong_types_and_ranges(raw, key, problem):
    error = _error(raw)
    assert error.key == f"rope_parameters.{key}" and problem in error.problem


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn", "llama3"])
@pytest.mark.parametrize("factor", [1.0, 0.5, 1])
def test_factor_must_be_above_one(rope_type, factor):
    error = _error({**VALID[rope_type], "factor": factor})
    assert error.key == "rope_parameters.factor" and "1 scales nothing" in error.problem


def test_longrope_factor_is_optional_and_at_least_one():
    assert parse_rope({**VALID["longrope"], "factor": 1.0}).get("factor") == 1.0
    assert _error({**VALID["longrope"], "factor": 0.9}).key == "rope_parameters.factor"


def test_relations_between_keys():
    assert _error({**VALID["yarn"], "beta_fast": 1, "beta_slow": 2}).key == "rope_parameters.beta_fast"
    assert _error({**VALID["yarn"], "beta_slow": 40}).key == "rope_parameters.beta_fast"
    assert _error({**VALID["llama3"], "high_freq_factor": 1.0}).key == "rope_parameters.high_freq_factor"
    assert _error({**VALID["longrope"], "long_factor": [2.0] * 7}).key == "rope_parameters.long_factor"


@pytest.mark.parametrize("rope_type", ["yarn", "llama3", "longrope"])
def test_original_length_above_the_extended_one_is_rejected(rope_type):
    error = _error(VALID[rope_type], max_position_embeddings=32)
    assert error.key == "rope_parameters.original_max_position_embeddings" and "above max_position_embeddings (32)" in error.problem


@pytest.mark.parametrize("value", [0, -5, "4096", True, 4096.0])
def test_max_position_embeddings_must_be_a_positive_integer(value):
    assert _error(VALID["linear"], max_position_embeddings=value).key == "max_position_embeddings"


# --- check_against_config / apply_rope: what needs the model's config ---


def _config(**overrides):
    return tiny_llama_config(rope_parameters={"rope_type": "default", "rope_theta": THETA}, **overrides)


def test_longrope_lists_must_match_half_the_rotary_dim():
    settings = parse_rope({**VALID["longrope"], "short_factor": [1.0] * 4, "long_factor": [2.0] * 4})
    with pytest.raises(RopeError) as caught:
        check_against_config(settings, _config())
    assert caught.value.key == "rope_parameters.short_factor" and "needs 8" in caught.value.problem
    check_against_config(parse_rope(VALID["longrope"]), _config())  # 8 = head_dim 16 / 2


def test_original_length_is_checked_against_the_models_length_when_not_overridden():
    with pytest.raises(RopeError, match=r"above the model's max_position_embeddings \(32\)") as caught:
        check_against_config(parse_rope(VALID["yarn"]), _config(max_position_embeddings=32))
    assert caught.value.key == "rope_parameters.original_max_position_embeddings"
    check_against_config(parse_rope(VALID["yarn"], 256), _config(max_position_embeddings=32))  # the override wins


def test_dynamic_cannot_move_its_threshold_past_the_trained_length():
    with pytest.raises(RopeError, match="would run unscaled") as caught:
        check_against_config(parse_rope(VALID["dynamic"], 4096), _config())
    assert caught.value.key == "max_position_embeddings"
    check_against_config(parse_rope(VALID["dynamic"], 512), _config())


def test_models_without_a_single_rope_are_refused():
    from transformers import Gemma3TextConfig, GPT2Config

    with pytest.raises(RopeError, match="has no rope_parameters"):
        check_against_config(parse_rope(VALID["linear"]), GPT2Config())
    with pytest.raises(RopeError, match="one RoPE per layer type"):
        check_against_config(parse_rope(VALID["linear"]), Gemma3TextConfig())


def test_apply_rope_returns_a_copy_that_keeps_the_models_theta():
    config = _config()
    scaled = apply_rope(config, parse_rope(VALID["yarn"], 256))
    assert scaled is not config
    assert scaled.rope_parameters == {"rope_theta": THETA, **VALID["yarn"]}
    assert scaled.max_position_embeddings == 256
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": THETA}
    assert config.max_position_embeddings == 1024


def test_apply_rope_replaces_the_models_own_scaling_without_leaking_its_keys():
    llama31 = tiny_llama_config(rope_parameters={"rope_theta": THETA, **VALID["llama3"]})
    scaled = apply_rope(llama31, parse_rope(VALID["linear"]))
    assert scaled.rope_parameters == {"rope_theta": THETA, "rope_type": "linear", "factor": 2.0}
    theta_only = apply_rope(llama31, parse_rope({"rope_type": "default", "rope_theta": 20000.0}))
    assert theta_only.rope_parameters == {"rope_type": "default", "rope_theta": 20000.0}


# --- loading: the scaling must reach the rotary embedding ---


def save_word_tokenizer(path, vocab_size: int = 96) -> None:
    """A word-level tokenizer over `w0`..`wN`, enough for load_model to find one beside the weights."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="w0", unk_token="w0").save_pretrained(path)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-rope")
    LlamaForCausalLM(_config()).save_pretrained(path)
    save_word_tokenizer(path)
    return str(path)


@pytest.fixture(scope="module")
def unscaled(tiny_dir):
    return load_model(tiny_dir, dtype="float32", device="cpu")[0]


def _rotary(model):
    return model.model.rotary_emb


def _logits(model, length: int):
    import torch

    ids = torch.arange(length).remainder(90).add(3).unsqueeze(0)
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


def _base_inv_freq():
    import torch

    return 1.0 / (THETA ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float) / HEAD_DIM))


def test_unscaled_model_uses_the_saved_theta(unscaled):
    import torch

    assert torch.allclose(_rotary(unscaled).inv_freq, _base_inv_freq())


@pytest.mark.parametrize("rope_type", ["linear", "yarn", "llama3", "longrope"])
def test_each_rope_type_changes_the_rotary_embedding_and_the_logits(tiny_dir, unscaled, rope_type):
    import torch

    settings = parse_rope(VALID[rope_type], 256)
    model, _, fingerprint = load_model(tiny_dir, dtype="float32", device="cpu", rope=settings)
    rotary, base = _rotary(model), _base_inv_freq()
    assert model.config.rope_parameters["rope_theta"] == THETA
    assert model.config.max_position_embeddings == 256
    if rope_type == "linear":
        assert torch.allclose(rotary.inv_freq, base / 2.0) and rotary.attention_scaling == 1.0
    elif rope_type == "yarn":
        # The highest frequencies extrapolate unchanged, the lowest are interpolated by the factor.
        assert torch.isclose(rotary.inv_freq[0], base[0]) and torch.isclose(rotary.inv_freq[-1], base[-1] / 4.0)
        assert rotary.attention_scaling == pytest.approx(1.2)  # the explicit attention_factor
    elif rope_type == "llama3":
        assert torch.isclose(rotary.inv_freq[0], base[0]) and torch.isclose(rotary.inv_freq[-1], base[-1] / 8.0)
    else:  # longrope: short factors up to the original length, attention scaled by the implied 256/64
        short = torch.tensor(VALID["longrope"]["short_factor"])
        assert torch.allclose(rotary.inv_freq, base / short)
        assert rotary.attention_scaling == pytest.approx(math.sqrt(1 + math.log(4) / math.log(64)))
    assert not torch.allclose(_logits(model, 96), _logits(unscaled, 96), atol=1e-4)
    assert fingerprint == load_model(tiny_dir, dtype="float32", device="cpu")[2]  # the weights' identity only


def test_longrope_switches_to_the_long_factors_past_the_original_length(tiny_dir):
    import torch

    model = load_model(tiny_dir, dtype="float32", device="cpu", rope=parse_rope(VALID["longrope"], 256))[0]
    _logits(model, 96)
    assert torch.allclose(_rotary(model).inv_freq, _base_inv_freq() / torch.tensor(VALID["longrope"]["long_factor"]))


def test_dynamic_ntk_changes_nothing_up_to_the_original_length_and_everything_past_it(tiny_dir, unscaled):
    import torch

    model = load_model(tiny_dir, dtype="float32", device="cpu", rope=parse_rope(VALID["dynamic"], 32))[0]
    assert torch.allclose(_logits(model, 32), _logits(unscaled, 32), atol=1e-5)
    assert not torch.allclose(_logits(model, 48), _logits(unscaled, 48), atol=1e-4)
    assert _rotary(model).inv_freq[-1] < _base_inv_freq()[-1]  # the base was raised for 48 tokens
    assert torch.allclose(_logits(model, 31), _logits(unscaled, 31), atol=1e-5)  # and reset by a shorter prompt


def test_dynamic_ntk_remembers_the_longest_prompt_until_reset(tiny_dir):
    import torch

    dynamic = parse_rope(VALID["dynamic"], 32)
    fresh = _logits(load_model(tiny_dir, dtype="float32", device="cpu", rope=dynamic)[0], 40)
    model = load_model(tiny_dir, dtype="float32", device="cpu", rope=dynamic)[0]
    _logits(model, 64)
    assert not torch.allclose(_logits(model, 40), fresh, atol=1e-4)  # still scaled for 64 tokens
    reset_rope_state(model)
    assert torch.allclose(_logits(model, 40), fresh, atol=1e-6)


def test_scaling_model_config_after_load_changes_nothing(tiny_dir, unscaled):
    """Why apply_rope must run before from_pretrained: the rotary embedding is built once."""
    import torch

    model = load_model(tiny_dir, dtype="float32", device="cpu")[0]
    model.config.rope_parameters = {"rope_theta": THETA, **VALID["linear"]}
    assert torch.allclose(_logits(model, 64), _logits(unscaled, 64))


def test_a_bad_setting_for_this_model_fails_before_the_weights_load(tiny_dir):
    short = parse_rope({**VALID["longrope"], "short_factor": [1.0] * 4, "long_factor": [2.0] * 4})
    with pytest.raises(RopeError, match="needs 8"):
        load_model(tiny_dir, dtype="float32", device="cpu", rope=short)


def test_attention_implementation_is_applied_at_load(tiny_dir):
    import torch

    eager = load_model(tiny_dir, dtype="float32", device="cpu", attn_implementation="eager")[0]
    sdpa = load_model(tiny_dir, dtype="float32", device="cpu", attn_implementation="sdpa", rope=parse_rope(VALID["linear"]))[0]
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    assert sdpa.config.rope_parameters["rope_type"] == "linear"  # rope and attention settings combine
    plain_sdpa = load_model(tiny_dir, dtype="float32", device="cpu", attn_implementation="sdpa")[0]
    assert torch.allclose(_logits(eager, 40), _logits(plain_sdpa, 40), atol=1e-4)
    with pytest.raises(ModelLoadError, match="use one of sdpa, eager"):
        load_model(tiny_dir, device="cpu", attn_implementation="flash_attention_2")


def test_rope_settings_are_plain_values():
    settings = RopeSettings("linear", (("factor", 2.0),))
    assert settings == parse_rope(VALID["linear"]) and {settings: 1}[parse_rope(VALID["linear"])] == 1
    with pytest.raises(AttributeError):
        settings.rope_type = "yarn"  # type: ignore[misc]


@pytest.mark.gpu
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_scaling_on_cuda_in_bfloat16_matches_the_cpu_reference(tiny_dir, attn_implementation):
    import torch

    ids = torch.arange(96).remainder(90).add(3).unsqueeze(0)
    for rope_type in sorted(VALID):
        settings = parse_rope(VALID[rope_type], 256 if rope_type != "dynamic" else 32)
        model = load_model(tiny_dir, dtype="bfloat16", device="cuda", rope=settings, attn_implementation=attn_implementation)[0]
        reference = load_model(tiny_dir, dtype="float32", device="cpu", rope=settings)[0]
        rotary = _rotary(model)
        with torch.no_grad():
            on_gpu = model(input_ids=ids.cuda()).logits.float().cpu()
            expected = reference(input_ids=ids).logits
        # After the forward, so dynamic's raised base and longrope's long factors are compared too.
        assert rotary.inv_freq.device.type == "cuda" and rotary.inv_freq.dtype == torch.float32
        assert torch.allclose(rotary.inv_freq.cpu(), _rotary(reference).inv_freq), rope_type
        assert not torch.allclose(rotary.inv_freq.cpu(), _base_inv_freq()), rope_type
        assert rotary.attention_scaling == pytest.approx(_rotary(reference).attention_scaling)
        assert torch.isfinite(on_gpu).all() and torch.allclose(on_gpu, expected, atol=5e-2), rope_type
        if rope_type == "dynamic":
            reset_rope_state(model)
            assert rotary.inv_freq.device.type == "cuda" and torch.equal(rotary.inv_freq, rotary.original_inv_freq)
