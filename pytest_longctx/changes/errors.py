"""The error a change's settings raise: which key (dotted from the side), what is wrong, how to fix it."""

from __future__ import annotations


class ChangeError(ValueError):
    """A change's setting that cannot be used; `key` is dotted from the side ("attention.window")."""

    def __init__(self, key: str, problem: str, fix: str) -> None:
        super().__init__(f"key '{key}': {problem}. Fix: {fix}.")
        self.key, self.problem, self.fix = key, problem, fix
