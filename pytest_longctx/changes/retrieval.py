"""Retrieval as a prompt-level change of a sweep: the cell's haystack replaced by the chunks retrieved from it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .base import Change

if TYPE_CHECKING:
    from ..tasks import TaskPrompt
    from .retrievers import RetrievalSettings


@dataclass(frozen=True)
class RetrievedPrompt:
    """The prompt a retrieval side sends, and what retrieval did for it.

    `not_retrieved` is True when some evidence line of the full prompt is missing from the retrieved context:
    a miss on such a cell is the retriever's, not the model's.
    """

    prompt: TaskPrompt
    seconds: float
    not_retrieved: bool
    record: dict[str, Any]


def context_bounds(prompt: TaskPrompt) -> tuple[int, int]:
    """Character offsets of the haystack in `prompt.prompt_text`.

    Every haystack family renders its user message as `instructions`, a blank line, the haystack, a blank line
    and the question (see haystack._Builder.content); the chat template's own text holds no blank line.
    """
    text = prompt.prompt_text
    end = text.rfind("\n\n" + prompt.question)
    start = text.find("\n\n") + 2
    if end < 0 or not 2 <= start <= end:
        raise ValueError(f"retrieval needs a haystack prompt (instructions, haystack, question); {prompt.family} has none")
    return start, end


def evidence_lines(tokenizer: Any, prompt: TaskPrompt, body: str) -> list[str]:
    """The haystack lines that hold the evidence (needle lines, chain assignments), whole."""
    pieces = [tokenizer.decode(list(prompt.token_ids[a:b])) for a, b in prompt.evidence_spans]
    wanted = [p.strip() for piece in pieces for p in piece.split("\n") if p.strip()]
    return [line for line in body.split("\n") if line.strip() and any(w in line or line.strip() in w for w in wanted)]


def retrieval_prompt(tokenizer: Any, prompt: TaskPrompt, settings: RetrievalSettings) -> RetrievedPrompt:
    """`prompt` with its haystack cut into chunks, ranked against its question, and only the chosen ones kept.

    The instructions, the question and the answers stay as they were; the evidence spans are re-located in
    the shorter prompt (empty where retrieval dropped the evidence).
    """
    from ..tasks.prompt import token_span
    from .retrievers import not_retrieved, retrieve

    start, end = context_bounds(prompt)
    text = prompt.prompt_text
    body = text[start:end]
    evidence = evidence_lines(tokenizer, prompt, body)
    found = retrieve(tokenizer, body, prompt.question, settings, protect=evidence)
    new_text = text[:start] + found.context + text[end:]
    spans = []
    for line in evidence:
        at = new_text.find(line, start, start + len(found.context))
        if at >= 0:
            spans.append(token_span(tokenizer, new_text, at, at + len(line)))
    retrieved = dataclasses.replace(
        prompt, prompt_text=new_text, token_ids=tuple(tokenizer(new_text, add_special_tokens=False)["input_ids"]),
        evidence_spans=tuple(spans),
    )
    return RetrievedPrompt(retrieved, found.seconds, not_retrieved(found, evidence), found.to_dict())


@dataclass(frozen=True)
class RetrievalChange(
    Change, kind="retrieval", order=90, keys=("retrieval",), stage="prompt", changes_tokens=True, computation=False, in_process_only=False,
):
    """`retrieval: {method, chunk_tokens, top_k | budget_tokens, order}`: the side answers from the chunks retrieved
    from the very prompt the other side gets whole; a miss whose evidence was not retrieved is `not_retrieved`."""

    settings: RetrievalSettings

    @classmethod
    def parse(cls, side: Mapping[str, Any]) -> RetrievalChange | None:
        from .retrievers import parse_retrieval

        raw = side.get("retrieval")  # a bad value raises parse_retrieval's RetrievalError, a ChangeError
        return None if raw is None else cls(parse_retrieval(raw))

    def record(self) -> dict[str, Any]:
        return {"retrieval": self.settings.to_dict()}

    def describe(self) -> tuple[tuple[str, str], ...]:
        s = self.settings.to_dict()
        if s.get("budget_tokens") is not None:
            picked = f"best chunks of {s.get('chunk_tokens')} tokens up to {s['budget_tokens']} tokens"
        else:
            picked = f"top {s.get('top_k')} chunks of {s.get('chunk_tokens')} tokens"
        return (("retrieval", f"{s.get('method')}, {picked}, order {s.get('order')}"),)

    def transform(self, tokenizer: Any, prompt: TaskPrompt) -> RetrievedPrompt:
        return retrieval_prompt(tokenizer, prompt, self.settings)


CHANGE = RetrievalChange
