from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pytest_longctx.backends import loading
from pytest_longctx.gate.capture import (
    CapturedBaseline,
    CaptureError,
    build_capture,
    load_capture,
    mismatches,
    write_capture,
)
from pytest_longctx.gate.decision import evaluate
from pytest_longctx.gate.spec import parse_gate
from tests.conftest import tiny_llama_config
from tests.unit.test_decision import cell

GATE = parse_gate({
    "name": "g", "baseline": {}, "candidate": {},
    "sweep": {"lengths": [512], "depths": [0.0, 0.5], "seeds": [0]},
})
FP = {"model_weights": "w", "tokenizer": "t", "chat_template": "c", "prompt_generator": "1", "torch": "2", "transformers": "5",
      "device": "cpu"}


def complete():
    return build_capture(GATE, [cell("baseline", 512, 0.0, 0), cell("baseline", 512, 0.5, 0)], FP)


def test_round_trip_and_no_mismatch_for_the_same_setup(tmp_path):
    path = tmp_path / "g.baseline.json"
    write_capture(complete(), path)
    loaded = load_capture(path)
    assert isinstance(loaded, CapturedBaseline) and len(loaded.cells) == 2
    assert mismatches(loaded, GATE, FP) == []


def test_each_differing_fingerprint_is_named():
    problems = mismatches(complete(), GATE, {**FP, "tokenizer": "t2", "device": "NVIDIA H200", "chat_template": "9" * 64})
    assert problems == ["tokenizer sha256 differs: captured 't', loaded 't2'",
                        "chat_template sha256 differs: captured 'c', loaded 999999999999..",
                        "device differs: captured 'cpu', loaded 'NVIDIA H200'"]
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
    with pytest.raises(CaptureError, match="re-capture with pytest --longctx-gate GATE --longctx-capture"):
        load_capture(bad)
    with pytest.raises(CaptureError, match="run pytest --longctx-gate GATE --longctx-capture first"):
        load_capture(tmp_path / "missing.json")


def _save_tiny_llama(path: Path, seed: int) -> None:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(path)


def _verdict(capture: CapturedBaseline, loaded: dict[str, str]):
    baseline = list(capture.cells)
    candidate = [cell("candidate", c.length, c.depth, c.seed) for c in baseline]
    return evaluate(GATE, baseline + candidate, fingerprint_mismatches=mismatches(capture, GATE, loaded))[1]


def test_resaved_weights_of_the_same_size_make_the_comparison_invalid(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_LONGCTX_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    _save_tiny_llama(model, seed=0)
    before = loading.weights_sha256(str(model))
    sizes = {f.name: f.stat().st_size for f in model.iterdir()}
    capture = build_capture(GATE, [cell("baseline", 512, 0.0, 0), cell("baseline", 512, 0.5, 0)], {**FP, "model_weights": before})

    _save_tiny_llama(model, seed=1)  # other weights, every file the same size: names and sizes cannot tell them apart
    after = loading.weights_sha256(str(model))

    assert {f.name: f.stat().st_size for f in model.iterdir()} == sizes and after != before
    decision = _verdict(capture, {**FP, "model_weights": after})
    assert decision.verdict == "invalid"
    assert f"model_weights sha256 differs: captured {before[:12]}.., loaded {after[:12]}.." in decision.reasons[0]


def test_a_hand_edited_capture_is_invalid_naming_the_cells_digest(tmp_path):
    path = tmp_path / "g.baseline.json"
    write_capture(complete(), path)
    assert _verdict(load_capture(path), FP).verdict == "approve"
    data = json.loads(path.read_text())
    data["cells"][1]["found"] = not data["cells"][1]["found"]  # a miss turned into a hit by hand
    path.write_text(json.dumps(data, indent=2))

    decision = _verdict(load_capture(path), FP)

    assert decision.verdict == "invalid"
    assert "captured baseline: cells digest mismatch (the file was edited after capture" in decision.reasons[0]


def test_a_fingerprint_edited_to_match_other_weights_is_invalid_naming_the_header_digest(tmp_path):
    path = tmp_path / "g.baseline.json"
    write_capture(complete(), path)
    data = json.loads(path.read_text())
    data["fingerprint"]["model_weights"] = "other"
    path.write_text(json.dumps(data))

    problems = mismatches(load_capture(path), GATE, {**FP, "model_weights": "other"})

    assert problems == [(
        "captured baseline: header (gate_name, baseline, sweep, fingerprint, captured_at) digest mismatch "
        "(the file was edited after capture; re-capture with pytest --longctx-gate GATE --longctx-capture "
        "--longctx-overwrite-baseline)"
    )]


def test_a_capture_of_the_old_version_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "g.baseline.json"
    data = complete().to_dict()
    data["capture_version"] = 1
    del data["digests"]
    path.write_text(json.dumps(data))
    with pytest.raises(CaptureError, match=r"capture_version 1 is not 2 \(it holds no content hashes of the weights.*"
                                           r"--longctx-capture --longctx-overwrite-baseline"):
        load_capture(path)


def test_a_capture_with_an_unknown_key_is_refused(tmp_path):
    path = tmp_path / "g.baseline.json"
    data = {**complete().to_dict(), "note": "edited"}
    path.write_text(json.dumps(data))
    with pytest.raises(CaptureError, match=f"{path}: not a readable captured baseline \\(capture: unknown keys note"):
        load_capture(path)


def test_a_warm_run_does_not_read_the_weights_again(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_LONGCTX_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    _save_tiny_llama(model, seed=0)
    for f in model.iterdir():  # saved an hour ago: a stamp taken seconds after a write is not trusted
        stat = f.stat()
        os.utime(f, ns=(stat.st_atime_ns, stat.st_mtime_ns - 3600 * 10**9))
    read: list[str] = []
    real = loading.file_sha256
    monkeypatch.setattr(loading, "file_sha256", lambda path, *a, **k: read.append(Path(path).name) or real(path, *a, **k))

    first = loading.weights_sha256(str(model)), loading.model_files_sha256(str(model))
    assert "model.safetensors" in read and "config.json" in read
    read.clear()
    second = loading.weights_sha256(str(model)), loading.model_files_sha256(str(model))

    assert second == first and read == []
    (model / "config.json").write_text((model / "config.json").read_text().replace("\n", "\n\n", 1))
    assert loading.model_files_sha256(str(model))["model_config"] != first[1]["model_config"] and read == ["config.json"]


def test_a_capture_written_before_the_served_engine_cell_keys_still_reads_and_matches_its_digest(tmp_path):
    from pytest_longctx.gate.capture import canonical_sha256

    path = tmp_path / "g.baseline.json"
    write_capture(complete(), path)
    data = json.loads(path.read_text())
    added = ("cold_check", "kv_capacity_tokens", "kv_capacity_bytes", "kv_slots")
    data["cells"] = [{k: v for k, v in c.items() if k not in added} for c in data["cells"]]
    data["digests"]["cells"] = canonical_sha256(data["cells"])  # as the older version computed it
    path.write_text(json.dumps(data))

    loaded = load_capture(path)

    assert loaded.integrity_problems() == [] and all(c.cold_check == "n/a" for c in loaded.cells)
    assert _verdict(loaded, FP).verdict == "approve"
