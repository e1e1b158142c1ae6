"""CUDA paths of the in-process backend: peak memory per generation, FP8 and windowed caches on the device."""

from __future__ import annotations

import copy

import pytest

from pytest_longctx.backends.devices import cuda_unavailable_reason

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(cuda_unavailable_reason() is not None, reason=str(cuda_unavailable_reason()))]


@pytest.fixture(scope="module")
def cuda_backend(tiny_llama):
    import torch

    from pytest_longctx.backends.in_process import TransformersBackend
    from tests.conftest import CharTokenizer

    model = copy.deepcopy(tiny_llama).to("cuda", torch.bfloat16)
    return TransformersBackend(model, CharTokenizer(), fingerprint="tiny-cuda")


def _prompt(n, seed=0):
    import torch

    return torch.randint(2, 90, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_peak_memory_is_reset_for_every_generation(cuda_backend):
    from pytest_longctx.gate.spec import VariantSpec

    long = cuda_backend.generate(_prompt(4000), variant=VariantSpec("b"), max_new_tokens=4)
    short = cuda_backend.generate(_prompt(200), variant=VariantSpec("b"), max_new_tokens=4)
    assert long.peak_bytes > short.peak_bytes > 0  # a stale peak from the long prompt would read the same
    assert long.kv_bytes == long.kv_bytes_analytic  # bf16 K/V, measured = formula


@pytest.mark.parametrize("dtype,bits", [("fp8_e4m3", 8), ("int8", 8), ("int4", 4)])
def test_quantized_caches_run_on_the_device_and_shrink_kv_bytes(cuda_backend, dtype, bits):
    from pytest_longctx.gate.spec import VariantSpec

    base = cuda_backend.generate(_prompt(2000, 1), variant=VariantSpec("b"), max_new_tokens=4)
    quant = cuda_backend.generate(_prompt(2000, 1), variant=VariantSpec.of("c", kv_cache_dtype=dtype), max_new_tokens=4)
    # Against bf16: the codes plus one fp32 scale per token and head (head_dim 16 here).
    assert quant.kv_bytes == quant.kv_bytes_analytic
    assert quant.kv_bytes / base.kv_bytes == pytest.approx((bits / 8 + 4 / 16) / 2)


def test_a_window_bounds_the_cache_on_the_device(cuda_backend):
    from pytest_longctx.gate.spec import VariantSpec

    gen = cuda_backend.generate(_prompt(3000, 2), variant=VariantSpec.of("w", attention={"window": 256, "sink_tokens": 4}),
                                max_new_tokens=4)
    assert gen.kv_tokens == 260 and gen.kv_bytes == gen.kv_bytes_analytic
