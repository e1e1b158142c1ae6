"""RULER-style task families built locally from seeds: the registry, task specs, and building a prompt."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..gate.limits import MAX_NAME_CHARS, NAME_PATTERN, shown, shown_key
from . import aggregation, conversation_qa, multi_doc_qa, niah, variable_tracking
from .family import Family, Option, TaskError
from .multi_doc_qa import Arrange
from .prompt import Document, Miss, Score, Scoring, TaskPrompt

__all__ = [
    "FAMILIES", "Arrange", "Document", "Family", "Miss", "Option", "Score", "Scoring", "TaskError", "TaskPrompt",
    "TaskSpec", "build_task", "parse_task", "uses_depth",
]

FAMILIES: Mapping[str, Family] = MappingProxyType({
    family.name: family
    for module in (niah, variable_tracking, aggregation, multi_doc_qa, conversation_qa)
    for family in module.FAMILIES
})


@dataclass(frozen=True)
class TaskSpec:
    """A family with every option set (defaults filled in), under a name that tells variants apart in results."""

    family: str
    name: str
    options: tuple[tuple[str, int | str], ...]

    def option(self, key: str) -> int | str:
        return dict(self.options)[key]


def parse_task(raw: Any) -> TaskSpec:
    """A task entry from a gate file: a family name, or a mapping {family: ..., name: ..., <option>: ...}.

    The name defaults to the family, followed by the options that differ from their defaults, such as
    "niah_single(haystack=logs,value=uuid)".

    Raises:
        TaskError: for an unknown family, an unknown option, or a value out of range; its `key` is relative
            to the entry ("family", "name", an option's name, or "" for the entry itself).
    """
    if isinstance(raw, str):
        raw = {"family": raw}
    if not isinstance(raw, Mapping):
        raise TaskError("", f"expected a family name or a mapping, got {shown(raw)}", "write e.g. niah or {family: niah_single}")
    entry = dict(raw)
    if "family" not in entry:
        raise TaskError("family", "is missing", f"add family: one of {', '.join(FAMILIES)}")
    family = _family(entry.pop("family"))
    name = entry.pop("name", None)
    given = {}
    for key, value in entry.items():
        option = family.option(key) if isinstance(key, str) else None
        if option is None:
            known = ", ".join(o.name for o in family.options) or "none"
            raise TaskError(shown_key(key), f"is not an option of {family.name}", f"use one of: {known}; or name: <id>")
        given[option.name] = option.check(value)
    options = tuple(sorted({o.name: given.get(o.name, o.default) for o in family.options}.items()))
    if name is None:
        changed = ",".join(f"{k}={v}" for k, v in sorted(given.items()) if v != family.option(k).default)  # type: ignore[union-attr]
        name = f"{family.name}({changed})" if changed else family.name
    elif not isinstance(name, str) or len(name) > MAX_NAME_CHARS or not NAME_PATTERN.fullmatch(name):
        # It is part of every node id of its cells and of the results: a plain id, like the gate's name.
        raise TaskError("name", f"{shown(name)} is not a usable name",
                        f"use a short id without spaces (letters, digits, '.', '_', '-'; at most {MAX_NAME_CHARS}), e.g. niah_uuid")
    return TaskSpec(family=family.name, name=name, options=options)


def build_task(
    tokenizer: Any, spec: TaskSpec, *, length: int, depth: float, seed: int, arrange: Arrange | None = None,
    history: Any = None,
) -> TaskPrompt:
    """Build the spec's prompt of `length` tokens for `tokenizer` (exact when reachable, always within 1%).

    Args:
        depth: where the evidence sits, 0.0 to 1.0; recorded but unused where `uses_depth(spec)` is False.
        arrange: reorders a multi-document prompt's documents before rendering (edge packing, say); only for
            families whose documents can be arranged (`FAMILIES[spec.family].arranges`), else ValueError.
        history: a `prompt_layout.HistoryBudget` that cuts a conversation to its newest turns; only for
            families with `takes_history`, else ValueError.
    """
    family = _family(spec.family)
    options: dict[str, Any] = {}
    for key, value in spec.options:
        option = family.option(key)
        if option is None:
            raise TaskError(key, f"is not an option of {family.name}", "build the spec with parse_task")
        options[key] = option.check(value)
    if arrange is not None:
        if not family.arranges:
            raise ValueError(f"{family.name} has no documents to arrange")
        options["arrange"] = arrange
    if history is not None:
        if not family.takes_history:
            raise ValueError(f"{family.name} has no chat history to cut")
        options["history"] = history
    return family.build(tokenizer, length=length, depth=depth, seed=seed, **options)


def uses_depth(spec: TaskSpec) -> bool:
    """Whether the spec's prompts change with depth (False for aggregation, where position is meaningless)."""
    return _family(spec.family).uses_depth


def _family(name: Any) -> Family:
    if not isinstance(name, str) or name not in FAMILIES:
        raise TaskError("family", f"{shown(name)} is not a task family", f"use one of: {', '.join(FAMILIES)}")
    return FAMILIES[name]
