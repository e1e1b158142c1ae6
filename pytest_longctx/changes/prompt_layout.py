"""Prompt-level changes under test: document packing order and the chat-history budget, and their gate keys."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, cast, get_args

from ..tasks.conversation import Conversation, render
from .errors import ChangeError, settings_mapping

Packing = Literal["given", "edge"]
HistoryPolicy = Literal["newest_first"]


class HasRelevance(Protocol):
    # A read-only property, so frozen dataclasses (whose fields cannot be assigned) satisfy it.
    @property
    def relevance(self) -> float: ...


T = TypeVar("T", bound=HasRelevance)


class Arrange(Protocol):
    """Reorders documents before a task renders them; returns a new list holding the same objects."""

    def __call__(self, documents: Sequence[T], /) -> list[T]: ...


class LayoutError(ChangeError):
    """A prompt-layout gate key with a bad value; `key` is dotted relative to the variant ("history.budget")."""


@dataclass(frozen=True)
class HistoryBudget:
    budget: int  # the most tokens the rendered prompt may take
    policy: HistoryPolicy = "newest_first"


@dataclass(frozen=True)
class PromptLayout:
    """A variant's prompt-level changes; the defaults leave documents and conversations as built."""

    packing: Packing = "given"
    history: HistoryBudget | None = None

    def documents(self, documents: Sequence[T]) -> list[T]:
        return arrange(self.packing)(documents)

    def conversation(self, tokenizer: Any, conversation: Conversation) -> Conversation:
        if self.history is None:
            return conversation
        return apply_history_budget(tokenizer, conversation, budget=self.history.budget, policy=self.history.policy)


def given_order(documents: Sequence[T]) -> list[T]:
    """The documents as given (a new list), the baseline `edge_order` is compared against."""
    return list(documents)


def edge_order(documents: Sequence[T]) -> list[T]:
    """The most relevant documents at the two ends of the prompt, the least relevant in the middle.

    Models recall the start and end of a long context better than its middle ("lost in the middle"),
    so the strongest documents go where they are read best. The rule: rank the documents by
    relevance, highest first, ties kept in their given order (rank 1 is the most relevant). Odd ranks
    fill the front in order and even ranks fill the back from the end: the result reads rank 1, 3,
    5, ..., 6, 4, 2. So rank 1 is first, rank 2 last, and relevance never rises from either end
    towards the middle.

    Raises:
        ValueError: a relevance is NaN, which has no place in the ranking.
    """
    for index, document in enumerate(documents):
        if math.isnan(document.relevance):
            raise ValueError(f"document {index} has a NaN relevance; give every document a number to rank by")
    ranked = sorted(documents, key=lambda document: -document.relevance)  # sorted() is stable: ties keep their order
    return ranked[0::2] + ranked[1::2][::-1]


def arrange(packing: Packing) -> Arrange:
    """The reordering that a `packing` setting names: "given" keeps the order, "edge" is `edge_order`."""
    if packing == "edge":
        return edge_order
    if packing == "given":
        return given_order
    raise ValueError(f"unknown packing {packing!r}; use one of: {', '.join(get_args(Packing))}")


def apply_history_budget(
    tokenizer: Any, conversation: Conversation, *, budget: int, policy: HistoryPolicy = "newest_first"
) -> Conversation:
    """The conversation cut to its newest whole user/assistant pairs that fit in `budget` rendered tokens.

    The system prompt and the final question are always kept, and never shortened. Pairs are
    dropped from the oldest, whole, so the kept turns are a suffix of the original ones and the
    prompt is as long as it can be without exceeding `budget` (counted as `render` counts it). The
    fact's turn index is shifted with the cut, or None once its pair is dropped.

    Raises:
        ValueError: the system prompt and question alone take more than `budget` tokens (the
            message says by how many), or the turns are not whole user/assistant pairs.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise ValueError(f"budget must be a positive integer, got {budget!r}")
    if policy != "newest_first":
        raise ValueError(f"unknown history policy {policy!r}; use one of: {', '.join(get_args(HistoryPolicy))}")
    roles = [turn.role for turn in conversation.turns]
    if roles != ["user", "assistant"] * (len(roles) // 2):
        raise ValueError("the turns must be whole user/assistant pairs, starting with a user turn, to be cut by pairs")

    def keep(pairs: int) -> Conversation:
        dropped = len(conversation.turns) - 2 * pairs
        fact_turn = conversation.fact_turn
        return dataclasses.replace(
            conversation,
            turns=conversation.turns[dropped:],
            fact_turn=None if fact_turn is None or fact_turn < dropped else fact_turn - dropped,
        )

    def tokens(pairs: int) -> int:
        return len(render(tokenizer, keep(pairs))[1])

    floor = tokens(0)
    if floor > budget:
        raise ValueError(
            f"the system prompt and the final question alone take {floor} tokens, {floor - budget} over the "
            f"history budget of {budget}; the system prompt is never cut, so raise the budget to at least {floor}"
        )
    # Binary search on the number of newest pairs kept: each added message adds tokens in any chat
    # template that renders messages in order, so the count grows with the pairs kept.
    low, high = 0, conversation.pairs
    while low < high:
        middle = (low + high + 1) // 2
        if tokens(middle) <= budget:
            low = middle
        else:
            high = middle - 1
    return keep(low)


def parse_packing(value: Any) -> Packing:
    """The gate's `packing:` value, or a LayoutError naming the choices."""
    if not isinstance(value, str) or value not in get_args(Packing):
        raise LayoutError("packing", f"{value!r} is not supported", f"use one of: {', '.join(get_args(Packing))}")
    return cast(Packing, value)


def parse_history(value: Any) -> HistoryBudget:
    """The gate's `history: {budget: N, policy: newest_first}` mapping, or a LayoutError naming the key."""
    example = "write history: {budget: 4096, policy: newest_first}"
    value = settings_mapping(value, "history", ("budget", "policy"), example, error=LayoutError)
    if "budget" not in value:
        raise LayoutError("history.budget", "is required", example)
    budget = value["budget"]
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise LayoutError("history.budget", f"expected a whole number of tokens, got {budget!r}", "write a positive integer such as 4096")
    if budget <= 0:
        raise LayoutError("history.budget", f"{budget} is not positive", "write a positive integer such as 4096")
    policy = value.get("policy", "newest_first")
    if not isinstance(policy, str) or policy not in get_args(HistoryPolicy):
        raise LayoutError("history.policy", f"{policy!r} is not supported", f"use one of: {', '.join(get_args(HistoryPolicy))}")
    return HistoryBudget(budget, cast(HistoryPolicy, policy))


def parse_layout(variant: Mapping[str, Any]) -> PromptLayout:
    """The prompt-layout keys (`packing`, `history`) of a variant mapping; other keys are the caller's to check."""
    packing = parse_packing(variant["packing"]) if "packing" in variant else "given"
    history = parse_history(variant["history"]) if variant.get("history") is not None else None
    return PromptLayout(packing, history)
