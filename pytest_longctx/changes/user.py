"""A user-defined change named in the gate: `change: {python: "mypkg.press:KeepHeavyHitters", options: {...}}`."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..gate.limits import shown
from .base import CachePlan, Change, ChangeError
from .errors import settings_mapping


class ChangeFailed(RuntimeError):
    """A user change raised inside one of its hooks: the cell fails closed, and the message names the change."""


@dataclass(frozen=True)
class UserChange(Change, kind="python", order=100, keys=("change",)):
    """A Change subclass from the project under test, built as `cls(**options)` when the gate loads.

    The import and the options are checked before any model loads (a GateError naming `<side>.change.python` or
    `.options`). Every hook it runs is wrapped: an exception inside it fails that cell with the change named,
    and nothing else breaks. The plain hooks and declared attributes are forwarded as listed in `_HOOKS` and
    `_DECLARED` below; the methods here are the ones that do more than forward."""

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

    batch = False  # its own cache or eviction acts on the whole batch cache, not per row

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


def _as_is(value: Any) -> Any:
    return value


def _nothing(value: Any) -> None:
    return None


# The hooks the wrapped change runs as its own, through UserChange._call (an exception fails the cell, naming the
# change), each answer converted to what the backends expect of the hook (a truthy value read as a bool).
_HOOKS: dict[str, Callable[[Any], Any]] = {
    "changes_computation": bool, "changes_kv": bool, "load": _as_is, "before_prompt": _nothing, "after_prefill": _nothing,
    "kv_tokens": _as_is, "decode_delay": float, "kv_copies": int, "prompt": _as_is, "transform": _as_is,
}
# The class attributes (see Change) the wrapped change declares, read from it, converted likewise.
_DECLARED: dict[str, Callable[[Any], Any]] = {
    "reuse": str, "drafts": bool, "changes_tokens": bool, "stage": str, "in_process_only": bool,
}


def _forward_hook(hook: str, convert: Callable[[Any], Any]) -> Callable[..., Any]:
    def forward(self: UserChange, *args: Any) -> Any:
        return convert(self._call(hook, *args))

    forward.__name__, forward.__qualname__ = hook, f"UserChange.{hook}"
    return forward


def _forward_declared(name: str, convert: Callable[[Any], Any]) -> property:
    return property(lambda self: convert(getattr(self.impl, name)), doc=f"The wrapped change's `{name}`.")


for _name, _convert in _HOOKS.items():
    setattr(UserChange, _name, _forward_hook(_name, _convert))
for _name, _convert in _DECLARED.items():
    setattr(UserChange, _name, _forward_declared(_name, _convert))


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
