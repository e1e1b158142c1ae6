"""The change registry: the built-in change kinds, those plugins register, and parsing a gate side into changes."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from .base import Change, ChangeError

_registry: dict[str, type[Change]] = {}
_builtins_loaded = False


def _load_builtins() -> None:
    """Every module of this package that declares `CHANGE` is a built-in kind: adding one is adding its module."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for info in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
        module = importlib.import_module(f"{__package__}.{info.name}")
        if hasattr(module, "CHANGE"):
            register(module.CHANGE)


def register(change: type[Change], *, replace: bool = False) -> type[Change]:
    """Add a change kind (a Change subclass) so gate sides can use its keys; usable as a class decorator.

    Raises:
        ValueError: the kind has no name, is taken (unless `replace`), or claims a key another kind owns.
    """
    _load_builtins()
    if not isinstance(change, type) or not issubclass(change, Change):
        raise ValueError(f"{change!r} is not a subclass of pytest_longctx.changes.Change")
    if not change.kind or not change.keys:
        raise ValueError(f"{change.__name__} needs a `kind` name and the gate `keys` it reads")
    if change.kind in _registry and _registry[change.kind] is not change and not replace:
        raise ValueError(f"a change kind named {change.kind!r} is already registered ({_registry[change.kind].__name__})")
    for other in _registry.values():
        if other.kind != change.kind and set(other.keys) & set(change.keys):
            shared = ", ".join(sorted(set(other.keys) & set(change.keys)))
            raise ValueError(f"{change.__name__} claims key(s) {shared} that change kind {other.kind!r} owns")
    _registry[change.kind] = change
    return change


def unregister(kind: str) -> None:
    """Remove a registered kind (tests, and plugins that replace a built-in)."""
    _registry.pop(kind, None)


def registered() -> tuple[type[Change], ...]:
    """Every change kind in the order their contributions compose (`Change.order`, then registration)."""
    _load_builtins()
    return tuple(sorted(_registry.values(), key=lambda change: change.order))


def by_kind(kind: str) -> type[Change]:
    _load_builtins()
    try:
        return _registry[kind]
    except KeyError:
        known = ", ".join(_registry)
        raise KeyError(f"no change kind {kind!r} is registered (known: {known})") from None


def side_keys() -> tuple[str, ...]:
    """Every gate key a side may use."""
    return tuple(key for change in registered() for key in change.keys)


def parse_side(side: Mapping[str, Any]) -> tuple[Change, ...]:
    """The changes a side's mapping asks for, in composition order.

    Raises:
        ChangeError: an unknown key (naming the known ones), or a change's own bad setting.
    """
    kinds = registered()
    known = {key for change in kinds for key in change.keys}
    for key in side:
        if key not in known:
            raise ChangeError(str(key), "unknown key", f"use one of: {', '.join(side_keys())}")
    found = []
    for change in kinds:
        own = {key: side[key] for key in change.keys if key in side}
        if not own:
            continue
        parsed = change.parse(own)
        if parsed is not None:
            found.append(parsed)
    return tuple(found)


def from_records(record: Mapping[str, Any]) -> tuple[Change, ...]:
    """A results file's side record back into changes (records name their kinds under "changes")."""
    kinds = record.get("changes")
    chosen = registered() if kinds is None else tuple(by_kind(k) for k in kinds)
    found = []
    for change in chosen:
        parsed = change.from_record(record)
        if parsed is not None:
            found.append(parsed)
    return tuple(found)
