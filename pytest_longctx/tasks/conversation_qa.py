"""The chat-history family: a seeded multi-turn conversation states a fact early or late, then asks for it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .family import Family
from .prompt import TaskPrompt, token_span

if TYPE_CHECKING:
    from ..changes.prompt_layout import HistoryBudget

# The fact's value, e.g. MAPLE-2231 (conversation._make_fact).
VALUE_PATTERN = r"[A-Z]+-\d{4}"


def build_conversation_qa(
    tokenizer: Any, *, length: int, depth: float, seed: int, history: HistoryBudget | None = None
) -> TaskPrompt:
    """A conversation of `length` tokens whose fact sits in the pair at `depth`; `history` (a prompt-level
    change) keeps only the newest pairs that fit its budget, so an old fact can be dropped before the model
    ever sees it. The prompt's `evidence_spans` is then empty: the fact is not in it."""
    from ..changes.prompt_layout import apply_history_budget
    from .conversation import build_conversation, render

    conversation = build_conversation(tokenizer, length=length, depth=depth, seed=seed)
    if history is not None:
        conversation = apply_history_budget(tokenizer, conversation, budget=history.budget, policy=history.policy)
    text, ids = render(tokenizer, conversation)
    at = text.find(conversation.fact) if conversation.fact_turn is not None else -1
    spans = (token_span(tokenizer, text, at, at + len(conversation.fact)),) if at >= 0 else ()
    return TaskPrompt(
        family="conversation", prompt_text=text, token_ids=ids, length=length, depth=float(depth), seed=seed,
        question=conversation.question, answers=(conversation.answer,), distractors=(), evidence_spans=spans,
        scoring="all", value_pattern=VALUE_PATTERN, actual_depth=conversation.fact_depth,
    )


FAMILIES = (
    Family(
        "conversation", "a multi-turn chat states a fact in one turn and asks for it at the end (history budgets)",
        (), build_conversation_qa, takes_history=True,
    ),
)
