"""The built task prompt: tokens, expected values and their evidence, and how an answer is scored."""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

Scoring = Literal["all", "part"]
Miss = Literal["missing", "wrong_value", "partial", "truncated", "refusal/other"]

_EDGE = "0-9A-Za-z"


@dataclass(frozen=True)
class Score:
    """How one answer did: `found` when every expected value is present; `fraction` is the credit given
    (the share of values present under "part" scoring, all or nothing under "all"); `failure` says why not."""

    found: bool
    fraction: float
    failure: Miss | None


@dataclass(frozen=True)
class Document:
    """One retrieved document of a multi-document prompt, with the score a retriever would have given it."""

    title: str
    text: str
    relevance: float
    holds_answer: bool


@dataclass(frozen=True)
class TaskPrompt:
    """A prompt of (ideally exactly) `length` tokens for one task family, and what a right answer holds.

    `answers` are every expected value; `distractors` are values placed in the prompt that a wrong answer
    would give (another key's value, a near miss, another chain's variable). `evidence_spans` are the token
    spans `[start, end)` of the lines holding the answers (for aggregation families, the whole list).
    `value_pattern` is a regex for one complete value of the answers' form, used to tell a committed wrong
    answer from one still being written. `actual_depth` is where the first evidence line sits among the
    filler (None where position is meaningless).
    """

    family: str
    prompt_text: str
    token_ids: tuple[int, ...]
    length: int
    depth: float
    seed: int
    question: str
    answers: tuple[str, ...]
    distractors: tuple[str, ...]
    evidence_spans: tuple[tuple[int, int], ...]
    scoring: Scoring
    value_pattern: str
    actual_depth: float | None = None
    documents: tuple[Document, ...] = ()

    @property
    def tokens(self) -> int:
        return len(self.token_ids)

    @property
    def prompt_sha256(self) -> str:
        """sha256 hex digest of the token ids packed as little-endian int32, as `Haystack.prompt_sha256`."""
        return hashlib.sha256(struct.pack(f"<{len(self.token_ids)}i", *self.token_ids)).hexdigest()

    @property
    def answer(self) -> str:
        """The expected values joined for display."""
        return ", ".join(self.answers)

    @property
    def needle_start(self) -> int | None:
        """The first evidence token, or None without evidence spans."""
        return min((start for start, _ in self.evidence_spans), default=None)

    def score(self, answer: str, *, hit_limit: bool) -> Score:
        """Score a generated answer (matching is case-insensitive and respects word edges).

        The failure, when not found: `refusal/other` for an empty answer; `partial` when some expected values
        (or, for a single value such as KESTREL-4827, some of its parts) are present; `truncated` when
        generation hit its token limit while writing an expected value or before giving any value;
        `wrong_value` when it gave a distractor's value; otherwise `missing`.
        """
        present = [value for value in self.answers if self._occurs(value, answer)]
        found = len(present) == len(self.answers)
        share = len(present) / len(self.answers)
        fraction = share if self.scoring == "part" else float(found)
        if found:
            return Score(True, 1.0, None)
        return Score(False, fraction, self._miss(answer, present, hit_limit))

    def _miss(self, answer: str, present: list[str], hit_limit: bool) -> Miss:
        if not answer.strip():
            return "refusal/other"
        if present:
            return "partial"
        tail = answer.rstrip().casefold()
        missing = [value.casefold() for value in self.answers]
        if hit_limit and any(tail.endswith(value[:i]) for value in missing for i in range(1, len(value))):
            return "truncated"
        if any(self._occurs(value, answer) for value in self.distractors):
            return "wrong_value"
        if len(self.answers) == 1:
            parts = [p for p in re.split(f"[^{_EDGE}]+", self.answers[0]) if p]
            if len(parts) > 1 and any(self._occurs(p, answer) for p in parts):
                return "partial"
        # Cut off before giving any value is truncation; having given some other value first is a miss.
        return "truncated" if hit_limit and not self._gave_a_value(answer) else "missing"

    def answer_complete(self, text: str) -> bool:
        """Whether an early-stopping decoder may stop: called with the answer so far after each new token.

        True once every expected value appears (followed by a character that ends it, so "1234567" is not
        taken while "12345678" may still be coming); for a single expected value, once a complete wrong value
        of the same form has been given (a distractor's, or any other); or once the answer line has ended,
        that is a newline after a line that gave a value of the answer's form (for several expected values:
        after the lines that gave values, a line without one, or a blank line). Lines before the first value
        (a preamble such as "Here is the code:") never end the answer, so the expected value can always
        still appear unless a complete wrong value was given.
        """
        if all(self._occurs(value, text, complete=True) for value in self.answers):
            return True
        complete_values = [m.group(0) for m in self._form.finditer(text) if m.end() < len(text)]
        if len(self.answers) == 1 and any(not self._is_expected(v) for v in complete_values):
            return True
        *lines, _ = text.split("\n")  # the last piece is the line still being written
        valued = [bool(self._form.search(line)) for line in lines]
        if len(self.answers) == 1:
            return any(valued)
        return any(valued) and not valued[-1]

    def excerpt(self, context_chars: int = 240) -> str:
        """The first evidence line with some prompt text either side, for a report's drill-down."""
        text = self.prompt_text
        first = min((text.find(a) for a in self.answers if a in text), default=-1)
        if first < 0:
            return ""
        line_start = text.rfind("\n", 0, first) + 1
        line_end = text.find("\n", first)
        line_end = len(text) if line_end < 0 else line_end
        start, end = max(0, line_start - context_chars), min(len(text), line_end + context_chars)
        return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")

    @property
    def _form(self) -> re.Pattern[str]:
        return _form(self.value_pattern)

    def _is_expected(self, value: str) -> bool:
        return value.casefold() in {a.casefold() for a in self.answers}

    def _gave_a_value(self, text: str) -> bool:
        if self._form.search(text):
            return True
        # Digits are a value for numeric answers even in another form (a date for a code, say).
        return any(c.isdigit() for a in self.answers for c in a) and re.search(r"\d", text) is not None

    @staticmethod
    def _occurs(value: str, text: str, *, complete: bool = False) -> bool:
        after = f"(?=[^{_EDGE}])" if complete else f"(?![{_EDGE}])"
        return re.search(f"(?<![{_EDGE}]){re.escape(value)}{after}", text, re.IGNORECASE) is not None


@lru_cache(maxsize=64)
def _form(pattern: str) -> re.Pattern[str]:
    """One complete value of the pattern, not inside a longer run of letters and digits."""
    return re.compile(f"(?<![{_EDGE}])(?:{pattern})(?![{_EDGE}])")


def token_span(tokenizer: Any, text: str, start: int, end: int) -> tuple[int, int]:
    """The token span of `text[start:end]` in the tokenized `text`, from the token counts of its prefixes."""
    def count(cut: int) -> int:
        return len(tokenizer(text[:cut], add_special_tokens=False)["input_ids"])

    return count(start), count(end)
