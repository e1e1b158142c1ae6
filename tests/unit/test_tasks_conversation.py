"""The conversation family and the history budget as a prompt-level change of a sweep."""

from __future__ import annotations

import pytest

from pytest_longctx.gate.spec import GateError, parse_gate
from pytest_longctx.gate.sweep import Cell, build_prompt


def _gate(**candidate):
    return parse_gate({
        "name": "g", "baseline": {}, "candidate": candidate,
        "sweep": {"lengths": [1024], "depths": [0.0, 0.5, 1.0], "tasks": ["conversation"]},
    })


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_the_conversation_prompt_is_token_exact_and_holds_its_fact(smollm_tokenizer, depth):
    gate = _gate()
    prompt = build_prompt(smollm_tokenizer, gate.sweep.tasks[0], Cell("conversation", 1024, depth, 0), gate.baseline)
    assert abs(prompt.tokens - 1024) <= 10
    (start, end), = prompt.evidence_spans
    assert prompt.answers[0] in smollm_tokenizer.decode(prompt.token_ids[start:end])
    assert prompt.score(f"It is {prompt.answers[0]}.", hit_limit=False).found


def test_a_history_budget_drops_an_old_fact_and_keeps_a_recent_one(smollm_tokenizer):
    gate = _gate(history={"budget": 512})
    spec = gate.sweep.tasks[0]
    old = build_prompt(smollm_tokenizer, spec, Cell("conversation", 1024, 0.0, 0), gate.candidate)
    recent = build_prompt(smollm_tokenizer, spec, Cell("conversation", 1024, 1.0, 0), gate.candidate)
    assert old.tokens <= 512 and recent.tokens <= 512
    assert old.evidence_spans == () and old.answers[0] not in old.prompt_text
    assert recent.evidence_spans and recent.answers[0] in recent.prompt_text
    # The baseline keeps the whole conversation: same content, laid out without the budget.
    assert build_prompt(smollm_tokenizer, spec, Cell("conversation", 1024, 0.0, 0), gate.baseline).answers == old.answers


def test_a_miss_whose_fact_the_budget_cut_is_filed_as_cut_from_history(smollm_tokenizer):
    """The report tells the budget's losses from the model's: same wrong answer, different cause."""
    from pytest_longctx.backends.in_process import Generation
    from pytest_longctx.gate.sweep import run_cell

    class Says:
        def generate(self, token_ids, **_):
            return Generation(answer="The password is WRONG-0000.", new_tokens=8, prefill_s=0.1, decode_s_per_token=0.01,
                              total_s=0.2, kv_bytes=1, kv_bytes_analytic=1, kv_tokens=1, peak_bytes=None)

    gate = _gate(history={"budget": 512})
    spec = gate.sweep.tasks[0]
    failures = {}
    for side, depth in (("baseline", 0.0), ("candidate", 0.0), ("candidate", 1.0)):
        variant = getattr(gate, side)
        cell = Cell("conversation", 1024, depth, 0)
        result = run_cell(Says(), variant, cell, build_prompt(smollm_tokenizer, spec, cell, variant), max_new_tokens=8)
        failures[(side, depth)] = result.failure
    assert failures[("candidate", 0.0)] == "cut_from_history"  # the old fact was dropped before the model saw it
    assert failures[("baseline", 0.0)] != "cut_from_history" and failures[("candidate", 1.0)] != "cut_from_history"


def test_a_history_budget_needs_a_conversation_task():
    with pytest.raises(GateError, match="key 'candidate.history': needs a task with a chat history. Fix: add conversation"):
        parse_gate({"name": "g", "baseline": {}, "candidate": {"history": {"budget": 512}},
                    "sweep": {"lengths": [1024], "depths": [0.5]}})
