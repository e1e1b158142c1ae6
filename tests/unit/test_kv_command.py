"""`longctx kv`: the worked example from explicit numbers, configs, budgets, JSON output and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_longctx.cli.main import main

WORKED = ["kv", "--layers", "80", "--kv-heads", "8", "--head-dim", "128", "--tokens", "131072"]


def run(capsys, *argv):
    status = main(list(argv))
    out = capsys.readouterr()
    return status, out.out, out.err


def test_worked_example_prints_40_gib(capsys):
    status, out, _ = run(capsys, *WORKED, "--dtype", "bf16")

    assert status == 0
    assert "per sequence:   40 GiB at 131,072 tokens (42,949,672,960 bytes)" in out
    assert "per token:      320 KiB" in out
    assert "fp32 80 GiB | bf16 40 GiB | fp8 20 GiB" in out
    assert "vs MHA" not in out  # the query heads were not given


def test_mha_fp8_and_budget(capsys):
    _, out, _ = run(capsys, *WORKED, "--heads", "64", "--budget-gib", "64")
    assert "vs MHA:         320 GiB per sequence with 64 KV heads (this layout stores 0.125x)" in out
    assert "budget 64 GiB: admits 1 sequence of 131,072 tokens (fp32: 0, fp8: 3)" in out

    _, out, _ = run(capsys, *WORKED, "--dtype", "fp8", "--budget-gib", "64")
    assert "per sequence:   20 GiB" in out and "admits 3 sequences" in out

    _, out, _ = run(capsys, *WORKED[:-2], "--kv-heads", "64", "--tokens", "131072")
    assert "per sequence:   320 GiB" in out


def test_concurrent_sequences_exit_one_when_over_budget(capsys):
    status, out, _ = run(capsys, *WORKED, "--concurrent", "4", "--budget-gib", "64")
    assert status == 1
    assert "4 concurrent:   160 GiB" in out and "4 concurrent sequences do not fit (need 160 GiB)" in out

    status, out, _ = run(capsys, *WORKED, "--dtype", "fp8", "--concurrent", "3", "--budget-gib", "64")
    assert status == 0 and "3 concurrent sequences fit" in out


def test_config_json_with_sliding_windows(capsys, tmp_path):
    config = {"model_type": "gemma2", "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4,
              "head_dim": 256, "hidden_size": 2304, "sliding_window": 4096, "torch_dtype": "bfloat16"}
    (tmp_path / "config.json").write_text(json.dumps(config))

    status, out, _ = run(capsys, "kv", "--config", str(tmp_path), "--tokens", "8192", "--json")

    data = json.loads(out)
    assert status == 0
    assert (data["layers"], data["kv_heads"], data["head_dim"], data["attention_heads"]) == (4, 4, 256, 8)
    assert data["dtype"] == "bf16" and data["windowed_layers"] == 2
    per_layer_token = 2 * 4 * 256 * 2
    assert data["sequence_bytes"] == per_layer_token * (2 * 8192 + 2 * 4096)
    status, text, _ = run(capsys, "kv", "--config", str(tmp_path / "config.json"), "--tokens", "8192", "--layers", "2")
    assert "KV cache: 2 layers" in text and "sliding window" not in text  # the windows described other layers


def test_explicit_window_applies_to_every_layer(capsys):
    _, out, _ = run(capsys, *WORKED, "--window", "4096")
    assert "sliding window: 80 of 80 layers" in out and "per sequence:   1.25 GiB" in out


def test_missing_numbers_and_bad_values(capsys, tmp_path):
    status, _, err = run(capsys, "kv", "--layers", "80", "--tokens", "10")
    assert status == 2 and "missing: --kv-heads, --head-dim" in err

    (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": 4}))
    status, _, err = run(capsys, "kv", "--config", str(tmp_path / "config.json"), "--tokens", "10")
    assert status == 2 and "none of num_hidden_layers" in err

    for bad in (["--dtype", "fp7"], ["--tokens", "-3"], ["--budget-gib", "zero"]):
        with pytest.raises(SystemExit) as raised:
            main([*WORKED, *bad])
        assert raised.value.code == 2
    assert "unknown dtype 'fp7'" in capsys.readouterr().err


def test_console_script():
    # The venv's bin/ need not be on PATH (CI runs .venv/bin/pytest); the script sits beside the interpreter.
    beside = Path(sys.executable).with_name("longctx")
    script = str(beside) if beside.exists() else shutil.which("longctx")
    assert script is not None, "the longctx console script is not installed (pip install -e .)"
    result = subprocess.run([script, *WORKED, "--dtype", "bf16"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and "40 GiB" in result.stdout
