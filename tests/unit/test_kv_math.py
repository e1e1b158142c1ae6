from __future__ import annotations

import pytest

from pytest_longctx.capacity.kv_math import KvShape

GIB = 1024**3


def test_worked_example_70b_class_model():
    shape = KvShape(layers=80, kv_heads=8, head_dim=128, attention_heads=64)
    assert shape.sequence_bytes(131072, 2) == 40 * GIB
    assert KvShape(80, 64, 128, 64).sequence_bytes(131072, 2) == 320 * GIB
    assert shape.sequence_bytes(131072, 1) == 20 * GIB


def test_scales_add_one_float32_per_token_and_head_for_k_and_v():
    shape = KvShape(layers=2, kv_heads=3, head_dim=64, attention_heads=9)
    plain = shape.sequence_bytes(100, 1)
    assert shape.sequence_bytes(100, 1, scale="token_head") - plain == 2 * 2 * 3 * 100 * 4
    assert shape.sequence_bytes(100, 1, scale="tensor") - plain == 2 * 2 * 4
    assert shape.sequence_bytes(100, 1, scale="channel") - plain == 2 * 2 * 3 * 64 * 4
    with pytest.raises(ValueError, match="granularity"):
        shape.sequence_bytes(100, 1, scale="block")


def test_from_config_reads_gqa_heads_and_head_dim():
    from tests.conftest import tiny_llama_config

    shape = KvShape.from_config(tiny_llama_config())
    assert shape == KvShape(layers=2, kv_heads=2, head_dim=16, attention_heads=4)
