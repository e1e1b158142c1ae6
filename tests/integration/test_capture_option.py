"""`--longctx-capture` and `captured_baseline:`: capture once, compare later, refuse what does not match."""

from __future__ import annotations

import json
import shutil

import pytest

from pytest_longctx.gate.results import load_results


def capture(pytester, gate, model_dir, *extra):
    return pytester.runpytest("--longctx-gate", str(gate), "--longctx-model", str(model_dir), "--longctx-capture", "-p", "no:cacheprovider",
                              *extra)


def test_capture_then_compare_against_it(pytester, write_gate, tiny_model_dir):
    gate = write_gate()
    result = capture(pytester, gate, tiny_model_dir, "-v")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=6)  # the baseline side alone
    assert "::candidate::" not in result.stdout.str()
    saved = json.loads((pytester.path / "gate.baseline.json").read_text())
    assert len(saved["cells"]) == 6 and saved["fingerprint"]["chat_template"] != "none"
    assert set(saved["fingerprint"]) >= {"model_weights", "tokenizer", "chat_template", "prompt_generator", "torch", "transformers",
                                         "device", "model_config", "tokenizer_files"}
    assert saved["capture_version"] == 2 and set(saved["digests"]) == {"cells", "header"}

    again = capture(pytester, gate, tiny_model_dir)
    assert again.ret == pytest.ExitCode.USAGE_ERROR
    again.stderr.fnmatch_lines(["*gate.baseline.json exists. Fix: pass --longctx-overwrite-baseline*"])

    compared = write_gate("compare.yaml", captured_baseline="gate.baseline.json", report="out/c.html")
    result = pytester.runpytest("--longctx-gate", str(compared), "--longctx-model", str(tiny_model_dir), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)  # the candidate side alone
    results = load_results(pytester.path / "out" / "c.json")
    assert results.decision.verdict == "approve", results.decision.reasons
    assert results.metrics.paired_cells == 6 and results.metrics.latency_compared is False
    assert any(r.startswith("NOTE p95 end-to-end latency: not compared") for r in results.decision.reasons)


def test_a_changed_chat_template_makes_the_comparison_invalid(pytester, write_gate, tiny_model_dir, tmp_path):
    gate = write_gate(captured_baseline="gate.baseline.json", report="out/c.html")
    assert capture(pytester, gate, tiny_model_dir).ret == 0
    changed = tmp_path / "changed-model"
    shutil.copytree(tiny_model_dir, changed)
    template = changed / "chat_template.jinja"
    template.write_text(template.read_text().replace("helpful AI assistant", "terse AI assistant"))
    result = pytester.runpytest("--longctx-gate", str(gate), "--longctx-model", str(changed), "-p", "no:cacheprovider")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*gate tiny: INVALID*", "*cannot compare*chat_template sha256 differs: captured*, loaded*"])
    assert load_results(pytester.path / "out" / "c.json").decision.verdict == "invalid"


def test_an_incomplete_capture_writes_nothing(pytester, write_gate, tiny_model_dir):
    gate = write_gate()
    result = capture(pytester, gate, tiny_model_dir, "-k", "not 384")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*baseline NOT captured: not capturing an incomplete baseline (3 cells missing*"])
    assert not (pytester.path / "gate.baseline.json").exists()


def test_comparing_without_a_capture_is_a_usage_error(pytester, write_gate):
    gate = write_gate(captured_baseline="nowhere.json")
    result = pytester.runpytest("--longctx-gate", str(gate))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*key 'captured_baseline'*nowhere.json does not exist. Fix: run pytest --longctx-gate*--longctx-capture first*"])


def test_resaved_weights_of_the_same_size_make_the_comparison_invalid(pytester, write_gate, tiny_model_dir, tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model = tmp_path / "resaved-model"
    shutil.copytree(tiny_model_dir, model)
    gate = write_gate(captured_baseline="gate.baseline.json", report="out/c.html")
    assert capture(pytester, gate, model).ret == 0
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    torch.manual_seed(1)  # other random weights, saved over the captured ones
    LlamaForCausalLM(LlamaConfig.from_pretrained(model)).save_pretrained(model)
    assert weights.stat().st_size == size  # the same file names and sizes: only the content differs

    result = pytester.runpytest("--longctx-gate", str(gate), "--longctx-model", str(model), "-p", "no:cacheprovider")

    assert result.ret == 1
    result.stdout.fnmatch_lines(["*gate tiny: INVALID*", "*cannot compare*model_weights sha256 differs: captured *.., loaded *..*"])
    assert load_results(pytester.path / "out" / "c.json").decision.verdict == "invalid"


def test_a_hand_edited_capture_makes_the_comparison_invalid(pytester, write_gate, tiny_model_dir):
    gate = write_gate(captured_baseline="gate.baseline.json", report="out/c.html")
    assert capture(pytester, gate, tiny_model_dir).ret == 0
    saved = pytester.path / "gate.baseline.json"
    data = json.loads(saved.read_text())
    data["cells"][0]["found"] = not data["cells"][0]["found"]
    saved.write_text(json.dumps(data, indent=2))

    result = pytester.runpytest("--longctx-gate", str(gate), "--longctx-model", str(tiny_model_dir), "-p", "no:cacheprovider")

    assert result.ret == 1
    result.stdout.fnmatch_lines(["*gate tiny: INVALID*",
                                 "*cannot compare*captured baseline: cells digest mismatch (the file was edited after capture*"])


def test_a_capture_of_the_old_version_is_refused_before_the_run(pytester, write_gate, tiny_model_dir):
    gate = write_gate(captured_baseline="gate.baseline.json")
    (pytester.path / "gate.baseline.json").write_text(json.dumps({"capture_version": 1, "cells": []}))

    result = pytester.runpytest("--longctx-gate", str(gate), "--longctx-model", str(tiny_model_dir), "-p", "no:cacheprovider")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*key 'captured_baseline'*gate.baseline.json: capture_version 1 is not 2*"
                                 "re-capture with pytest --longctx-gate GATE --longctx-capture --longctx-overwrite-baseline*"])
