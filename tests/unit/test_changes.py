"""The change registry: built-ins one module each, kinds users register, and what a side's changes compose to."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

import pytest

import pytest_longctx.changes as changes_pkg
from pytest_longctx.changes import CachePlan, Change, ChangeError, register, registered, unregister
from pytest_longctx.changes.registry import parse_side, side_keys
from pytest_longctx.gate.spec import GateError, VariantSpec


def test_every_module_that_declares_a_change_is_a_registered_kind():
    kinds = {c.kind: c for c in registered()}
    declared = []
    for info in pkgutil.iter_modules(changes_pkg.__path__):
        module = importlib.import_module(f"pytest_longctx.changes.{info.name}")
        if hasattr(module, "CHANGE"):
            declared.append(module.CHANGE)
            assert kinds[module.CHANGE.kind] is module.CHANGE, info.name
    assert {c.kind for c in declared} == set(kinds)
    assert len(side_keys()) == len(set(side_keys()))  # each key belongs to one kind


@dataclass(frozen=True)
class Halve(Change):
    """A kind added by a test: keeps half of the prompt's K/V."""

    kind = "halve_test"
    keys = ("halve",)
    stage = "cache"

    keep: float = 0.5

    @classmethod
    def parse(cls, side):
        if not isinstance(side["halve"], dict):
            raise ChangeError("halve", "expected a mapping", "write halve: {keep: 0.5}")
        return cls(**side["halve"])

    def record(self):
        return {"halve": {"keep": self.keep}}

    def kv_tokens(self, prompt, new):
        return int(prompt * self.keep) + max(new - 1, 0)


@pytest.fixture
def halve():
    register(Halve)
    yield Halve
    unregister(Halve.kind)


def test_a_registered_kind_is_parsed_recorded_and_read_back(halve):
    side = VariantSpec.of("candidate", halve={"keep": 0.25}, kv_cache_dtype="int8")
    assert [c.kind for c in side.changes] == ["kv_quant", "halve_test"]  # built-ins compose first
    assert VariantSpec.from_dict(side.to_dict()) == side
    assert side.cache_plan() == CachePlan(kv_cache_dtype="int8")
    with pytest.raises(GateError, match=r"key 'candidate.halve': expected a mapping. Fix: write halve: \{keep: 0.5\}"):
        VariantSpec.of("candidate", halve=3)


def test_registering_a_taken_kind_or_key_is_refused(halve):
    @dataclass(frozen=True)
    class Clash(Change):
        kind = "clash_test"
        keys = ("halve",)

    with pytest.raises(ValueError, match="claims key\\(s\\) halve that change kind 'halve_test' owns"):
        register(Clash)
    with pytest.raises(ValueError, match="needs a `kind` name"):
        register(type("Nameless", (Change,), {}))
    with pytest.raises(ValueError, match="is not a subclass"):
        register(dict)  # type: ignore[arg-type]


def test_an_unknown_side_key_names_every_known_one():
    with pytest.raises(ChangeError) as refused:
        parse_side({"kv_cache_dtyp": "fp8"})
    assert refused.value.key == "kv_cache_dtyp" and "kv_cache_dtype" in refused.value.fix and "change" in refused.value.fix


def test_what_sides_differ_in_for_the_no_op_guard():
    base = VariantSpec("baseline")
    assert VariantSpec.of("c", kv_cache_dtype="fp8").computation_settings(base) == ("kv_cache_dtype",)
    assert VariantSpec.of("c", kv_scale="tensor").computation_settings(base) == ()  # no quantization: nothing computed differently
    assert VariantSpec.of("c", packing="edge").computation_settings(base) == ()  # a prompt change: prompts differ by hash
    assert VariantSpec.of("c", attention={"window": 64}).computation_settings(VariantSpec.of("b", attention={"window": 64})) == ()
