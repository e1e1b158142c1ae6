"""Prompt-lookup drafts for answers-only greedy decoding: what followed the answer's last tokens earlier on."""

from __future__ import annotations

from collections.abc import Sequence


class Drafts:
    """Draft tokens for greedy decoding by prompt lookup: what followed the latest earlier occurrence of the
    answer's last two tokens (or last one) in the prompt and answer so far.

    Why: needle answers copy the prompt (the needle line, the question, a log line), so most drafts are right. A
    draft is verified in one forward pass with the token before it, and the model's own greedy choices are kept:
    accepted draft tokens up to the first disagreement, then the model's token there. That is greedy decoding up to
    near-ties: the pass computes several positions at once, so logits may differ in their last bits from one-at-a-time
    steps, and where the top two are that close the choice can flip. What the recall pass guarantees is the task's
    verdict and miss category per cell; benchmarks/sweep_vs_naive.py checks exactly that and reports token agreement.
    """

    NGRAM = 2
    MAX_DRAFT = 10

    def __init__(self, prompt: Sequence[int]) -> None:
        self._prompt = list(prompt)
        self._latest: dict[tuple[int, ...], int] = {}  # n-gram -> end position of its latest occurrence
        self._indexed = 0  # n-grams ending before this position are in `_latest`

    def propose(self, generated: Sequence[int], limit: int) -> list[int]:
        tokens = self._prompt + list(generated)
        last = len(tokens) - 1
        for end in range(self._indexed, last):  # every position before the last one
            for n in range(1, self.NGRAM + 1):
                if end - n + 1 >= 0:
                    self._latest[tuple(tokens[end - n + 1 : end + 1])] = end
        self._indexed = max(self._indexed, last)
        for n in range(self.NGRAM, 0, -1):
            seen = self._latest.get(tuple(tokens[last - n + 1 :]))
            if seen is not None:
                return tokens[seen + 1 : seen + 1 + min(limit, self.MAX_DRAFT)]
        return []
