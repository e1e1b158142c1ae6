"""A user-defined change named in the gate: `change: {python: "mypkg.press:KeepHeavyHitters", options: {...}}`."""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..gate.limits import shown
from .base import CachePlan, Change, ChangeError, LoadPlan, PromptPlan
from .errors import settings_mapping


class ChangeFailed(RuntimeError):
    """A user change raised inside one of its hooks: the cell fails closed, and the message names the change."""


@dataclass(frozen=True)
class UserChange(Change, kind="python", order=100, keys=("change",)):
    """A Change subclass from the project under test, built as `cls(**options)` when the gate loads.

    The import and the options are checked before any model loads (a GateError naming `<side>.change.python` or
    `.options`). Every hook it runs is wrapped: an exception inside it fails that cell with the change named,
    and nothing else breaks."""

    target: str
    options_json: str  # canonical JSON, so the change compares and hashes by value
    impl: Change = field(compare=False, repr=False)

    @classmethod
    def parse(cls, side: Mapping[str, Any]) -> UserChange | None:
        raw = side.get("change")
        if raw is None:
            return None
        example = 'write change: {python: "mypkg.module:MyChange", options: {budget: 512}}'
        raw = settings_mapping(raw, "change", ("python", "options"), example)
        target = raw.get("python")
        if not isinstance(target, str) or target.count(":") != 1:
            raise ChangeError("change.python", f"expected \"module:Class\", got {shown(str(target)[:100])}", example)
        options = raw.get("options", {}) or {}
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            raise ChangeError("change.options", "expected a mapping of option names to values", example)
        try:
            options_json = json.dumps(options, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ChangeError("change.options", f"not plain JSON values ({exc})", "use numbers, strings, lists and mappings") from None
        change_cls = _import(target)
        try:
            impl = change_cls(**options)
        except (TypeError, ValueError) as exc:
            raise ChangeError("change.options", f"{target} refused them: {exc}"[:300],
                              f"give the options {change_cls.__name__} accepts") from None
        return cls(target, options_json, impl)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> UserChange | None:
        raw = record.get("change")
        return None if raw is None else cls.parse({"change": raw})

    def record(self) -> dict[str, Any]:
        return {"change": {"python": self.target, "options": json.loads(self.options_json)}}

    def describe(self) -> tuple[tuple[str, str], ...]:
        options = ", ".join(f"{k} {v}" for k, v in json.loads(self.options_json).items())
        fallback = (("change", self.target + (f" ({options})" if options else "")),)
        try:
            rows = tuple(self.impl.describe())
        except NotImplementedError:  # a change named in a gate need not describe or record itself
            return fallback
        return rows or fallback

    def _call(self, hook: str, *args: Any) -> Any:
        try:
            return getattr(self.impl, hook)(*args)
        except Exception as exc:
            raise ChangeFailed(f"change {self.target} failed in {hook}: {type(exc).__name__}: {exc}") from exc

    @property
    def reuse(self) -> str:  # type: ignore[override]
        return str(self.impl.reuse)

    @property
    def drafts(self) -> bool:  # type: ignore[override]
        return bool(self.impl.drafts)

    batch = False

    @property
    def changes_tokens(self) -> bool:  # type: ignore[override]
        return bool(self.impl.changes_tokens)  # its own cache or eviction acts on the whole batch cache, not per row

    @property
    def stage(self) -> str:  # type: ignore[override]
        return str(self.impl.stage)

    @property
    def in_process_only(self) -> bool:  # type: ignore[override]
        return bool(self.impl.in_process_only)

    def changes_computation(self) -> bool:
        return bool(self._call("changes_computation"))

    def check(self, side: Any, sweep: Any) -> None:
        try:
            self.impl.check(side, sweep)
        except ChangeError as exc:
            raise ChangeError(f"change.options ({exc.key})", exc.problem, exc.fix) from None

    def refuse_noop(self, *, longest_prompt: int, longest_run: int, trained: int | None) -> None:
        try:
            self.impl.refuse_noop(longest_prompt=longest_prompt, longest_run=longest_run, trained=trained)
        except ChangeError as exc:  # its own refusal, named under this side's `change:` key
            raise ChangeError(f"change.options ({exc.key})", exc.problem, exc.fix) from None

    def changes_kv(self) -> bool:
        return bool(self._call("changes_kv"))

    def load(self, plan: LoadPlan) -> LoadPlan:
        return self._call("load", plan)

    def cache(self, plan: CachePlan) -> CachePlan:
        planned = self._call("cache", plan)
        if planned.factory is not None and planned.factory is not plan.factory:
            factory = planned.factory

            def guarded(config: Any) -> Any:
                try:
                    return factory(config)
                except Exception as exc:
                    raise ChangeFailed(f"change {self.target} failed making its cache: {type(exc).__name__}: {exc}") from exc

            from dataclasses import replace

            planned = replace(planned, factory=guarded, factory_owner=self.target)
        return planned

    def before_prompt(self, model: Any) -> None:
        self._call("before_prompt", model)

    def after_prefill(self, cache: Any) -> None:
        self._call("after_prefill", cache)

    def kv_tokens(self, prompt: int, new: int) -> int | None:
        return self._call("kv_tokens", prompt, new)

    def decode_delay(self) -> float:
        return float(self._call("decode_delay"))

    def kv_copies(self) -> int:
        return int(self._call("kv_copies"))

    def prompt(self, plan: PromptPlan, family: Any) -> PromptPlan:
        return self._call("prompt", plan, family)

    def transform(self, tokenizer: Any, prompt: Any) -> Any:
        return self._call("transform", tokenizer, prompt)


def _import(target: str) -> type[Change]:
    """The Change subclass `module:Class` names; a ChangeError naming `change.python` if it is not one."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - an ImportError, or any error the module raises while importing
        raise ChangeError("change.python", f"cannot import {module_name}: {type(exc).__name__}: {exc}"[:300],
                          "install the package under test, or run pytest from the folder that holds it") from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, Change)):
        raise ChangeError("change.python", f"{target} is not a subclass of pytest_longctx.changes.Change",
                          "point at a class that subclasses pytest_longctx.changes.Change")
    return obj


CHANGE = UserChange
