"""Fixtures for driving pytest-longctx through pytester: gate files and a tiny model directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm_tokenizer) -> Path:
    """A random 2-layer Llama saved with the real SmolLM2 tokenizer: loads in a second, answers nonsense."""
    import torch
    from transformers import LlamaForCausalLM

    from tests.conftest import tiny_llama_config

    path = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    config = tiny_llama_config(
        vocab_size=len(smollm_tokenizer), eos_token_id=2, bos_token_id=1, pad_token_id=2, max_position_embeddings=4096,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    smollm_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def write_gate(pytester):
    def write(name: str = "gate.yaml", **overrides) -> Path:
        data = {
            "name": "tiny",
            "baseline": {"kv_cache_dtype": "auto"},
            "candidate": {"kv_cache_dtype": "fp8_e4m3"},
            "sweep": {"lengths": [256, 384], "depths": [0.0, 0.5, 1.0], "seeds": [0], "max_new_tokens": 4},
            # A random model's latency ratio is noise; these tests pin the verdict through memory instead.
            "thresholds": {"p95_latency_ratio": {"max": 100.0}},
        }
        data.update(overrides)
        path = pytester.path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write
