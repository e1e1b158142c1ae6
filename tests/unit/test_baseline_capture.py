from __future__ import annotations

import os

import pytest

from pytest_longctx.gate.capture import CapturedBaseline, CaptureError, build_capture, load_capture, mismatches, write_capture
from pytest_longctx.gate.spec import parse_gate
from tests.unit.test_decision import cell

GATE = parse_gate({
    "name": "g", "baseline": {}, "candidate": {"kv_cache_dtype": "fp8"},
    "sweep": {"lengths": [512], "depths": [0.0, 0.5], "seeds": [0]},
})
FP = {
    "model_weights": "w", "tokenizer": "t", "chat_template": "c", "prompt_generator": "1", "torch": "2", "transformers": "5",
    "device": "cpu",
}


def complete():
    return build_capture(GATE, [cell("baseline", 512, 0.0, 0), cell("baseline", 512, 0.5, 0)], FP)


def test_round_trip_and_no_mismatch_for_the_same_setup(tmp_path):
    path = tmp_path / "g.baseline.json"
    write_capture(complete(), path)
    loaded = load_capture(path)
    assert isinstance(loaded, CapturedBaseline) and len(loaded.cells) == 2
    assert mismatches(loaded, GATE, FP) == []


def test_each_differing_fingerprint_is_named():
    problems = mismatches(complete(), GATE, {**FP, "tokenizer": "t2", "device": "NVIDIA H200"})
    assert problems == ["tokenizer: captured 't', now 't2'", "device: captured 'cpu', now 'NVIDIA H200'"]
    other_sweep = parse_gate({"name": "g", "baseline": {}, "candidate": {}, "sweep": {"lengths": [1024], "depths": [0.5]}})
    assert "sweep settings differ from the capture's" in mismatches(complete(), other_sweep, FP)


def test_refuses_to_overwrite_unless_asked(tmp_path):
    path = tmp_path / "g.baseline.json"
    write_capture(complete(), path)
    with pytest.raises(CaptureError, match="--longctx-overwrite-baseline"):
        write_capture(complete(), path)
    write_capture(complete(), path, overwrite=True)


def test_a_failed_write_leaves_the_old_capture_intact(tmp_path, monkeypatch):
    path = tmp_path / "g.baseline.json"
    write_capture(complete(), path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_capture(complete(), path, overwrite=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["g.baseline.json"]  # no temp file left behind


def test_incomplete_or_errored_baselines_are_not_captured():
    with pytest.raises(CaptureError, match="1 cells missing, 0 errored"):
        build_capture(GATE, [cell("baseline", 512, 0.0, 0)], FP)
    with pytest.raises(CaptureError, match="0 cells missing, 1 errored"):
        build_capture(GATE, [cell("baseline", 512, 0.0, 0), cell("baseline", 512, 0.5, 0, error="OOM")], FP)


def test_unreadable_capture_says_how_to_recover(tmp_path):
    bad = tmp_path / "b.json"
    bad.write_text("{not json")
    with pytest.raises(CaptureError, match="re-capture with --longctx-capture"):
        load_capture(bad)
    with pytest.raises(CaptureError, match="run pytest --longctx-gate GATE --longctx-capture first"):
        load_capture(tmp_path / "missing.json")
