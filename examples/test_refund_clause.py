"""A team's own long-context test: the refund clause must survive at every depth of a support transcript.

Runs on the embedded SmolLM2-135M with no configuration: `pytest examples/test_refund_clause.py`.
"""

from pathlib import Path

import pytest

from pytest_longctx.tasks.haystack import Needle

# The team's own document, used as filler (kept with the other inputs under fixtures/).
TRANSCRIPT = Path(__file__).resolve().parents[1] / "fixtures" / "corpora" / "support_transcript.txt"
REFUND = Needle(
    text="Agent: Our refund policy allows returns for a full refund within 45 days of delivery.",
    question="How many days does the refund policy allow for returns?",
    answer="45",
)


@pytest.mark.longctx(lengths=[1024], depths=[0.0, 0.5, 1.0])
@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8"])
def test_refund_clause_survives_every_depth(model, haystack, kv_cache_dtype):
    prompt = haystack(needle=REFUND, filler=TRANSCRIPT)  # length and depth come from the cell
    assert prompt.tokens == 1024  # token-exact, after the chat template

    reply = model.variant(kv_cache_dtype=kv_cache_dtype).generate(prompt, max_new_tokens=16)

    assert prompt.answer in reply.answer, f"the clause was lost at depth {prompt.actual_depth:.2f}: {reply.answer!r}"


def test_fp8_kv_cache_stays_within_its_budget(model, haystack, kv_budget):
    prompt = haystack(length=2048, depth=0.5)

    with kv_budget.measure() as full:
        model.generate(prompt, max_new_tokens=1)
    with kv_budget.measure() as fp8:
        model.variant(kv_cache_dtype="fp8").generate(prompt, max_new_tokens=1)

    # The model's own cache, in the dtype it runs in (fp32 on CPU, bf16 on CUDA), is exactly what its config predicts.
    assert full.kv_bytes == kv_budget.sequence_bytes(2048)
    # FP8 stores 1 byte per element plus a float32 scale per token and KV head.
    budget = kv_budget.sequence_bytes(2048, "fp8", scale="token_head")
    assert fp8.kv_bytes <= budget
    assert fp8.kv_bytes < full.kv_bytes / 1.8
