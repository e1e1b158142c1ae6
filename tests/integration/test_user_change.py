"""A team's own change, gated end to end: named in a gate side, or registered by a conftest through the hook."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "eviction"
SWEEP = {"lengths": [256, 384], "depths": [0.0, 0.5, 1.0], "seeds": [0], "max_new_tokens": 4}
LOOSE = {"p95_latency_ratio": {"max": 100.0}}  # a random model's latency ratio is noise


def _gate(pytester, candidate, name="gate.yaml", **extra) -> Path:
    data = {"name": "user-change", "baseline": {}, "candidate": candidate, "sweep": SWEEP, "thresholds": LOOSE, **extra}
    path = pytester.path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def example(pytester):
    for name in ("key_norm_eviction.py", "conftest.py"):
        shutil.copy(EXAMPLE / name, pytester.path / name)
    return pytester


def _run(pytester, gate, model_dir, *extra):
    return pytester.runpytest("--longctx-gate", str(gate), "--longctx-model", str(model_dir), "--longctx-json", "out/r.json",
                              "-p", "no:cacheprovider", *extra)


def test_a_change_named_in_the_gate_runs_and_its_eviction_is_measured(example, tiny_model_dir):
    change = {"python": "key_norm_eviction:KeyNormEviction", "options": {"budget": 128, "sink_tokens": 4, "recent": 32}}
    result = _run(example, _gate(example, {"change": change}), tiny_model_dir)

    data = json.loads((example.path / "out" / "r.json").read_text())
    assert result.ret == (0 if data["decision"]["verdict"] == "approve" else 1), result.stdout.str()
    assert not any(c["error"] for c in data["cells"])
    cand = [c for c in data["cells"] if c["variant"] == "candidate"]
    base = {(c["length"], c["depth"]): c for c in data["cells"] if c["variant"] == "baseline"}
    for cell in cand:  # the budget held after prefill, then the answer's own tokens
        assert cell["kv_tokens"] == 128 + cell["new_tokens"] - 1 < base[(cell["length"], cell["depth"])]["kv_tokens"]
        assert cell["answer_logprob"] is not None
    assert data["gate"]["candidate"]["described"] == [["kv eviction", "key norm: 128 tokens (4 sinks, 32 recent)"]]
    assert data["metrics"]["memory_ratio"] < 0.6


def test_a_change_registered_by_a_conftest_is_used_by_its_key(example, tiny_model_dir):
    result = _run(example, _gate(example, {"key_norm_eviction": {"budget": 128, "recent": 32}}), tiny_model_dir)

    data = json.loads((example.path / "out" / "r.json").read_text())
    assert result.ret in (0, 1) and data["gate"]["candidate"]["changes"] == ["key_norm_eviction"]
    assert all(c["kv_tokens"] == 128 + c["new_tokens"] - 1 for c in data["cells"] if c["variant"] == "candidate")


@pytest.mark.parametrize(
    "change,key,fix",
    [
        ({"python": "no_such_module:X"}, "candidate.change.python", "install the package under test"),
        ({"python": "key_norm_eviction:Nope"}, "candidate.change.python", "subclasses pytest_longctx.changes.Change"),
        ({"python": "key_norm_eviction:KeyNormEviction", "options": {"budget": -1}}, "candidate.change.options", "budget"),
        ({"python": "key_norm_eviction:KeyNormEviction", "options": {"budget": 4096}}, "candidate.change.options", "budget below"),
    ],
)
def test_a_bad_user_change_is_a_usage_error_naming_it(example, tiny_model_dir, change, key, fix):
    result = _run(example, _gate(example, {"change": change}), tiny_model_dir)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*key '{key}*{fix}*"])
    assert "Traceback" not in result.stderr.str()


def test_an_exception_inside_a_user_change_fails_its_cells_closed(pytester, tiny_model_dir):
    pytester.makepyfile(broken='''
        from dataclasses import dataclass
        from pytest_longctx.changes import Change

        @dataclass(frozen=True)
        class Breaks(Change):
            kind = "breaks"
            keys = ("breaks",)

            def after_prefill(self, cache):
                raise RuntimeError("the cache exploded")
    ''')
    pytester.syspathinsert()
    result = _run(pytester, _gate(pytester, {"change": {"python": "broken:Breaks"}}), tiny_model_dir, "-rf")

    data = json.loads((pytester.path / "out" / "r.json").read_text())
    assert result.ret == 1 and data["decision"]["verdict"] in ("incomplete", "reject")
    cand = [c for c in data["cells"] if c["variant"] == "candidate"]
    assert cand and all("change broken:Breaks failed in after_prefill: RuntimeError: the cache exploded" in c["error"] for c in cand)
    assert not any(c["error"] for c in data["cells"] if c["variant"] == "baseline")  # nothing else broke
