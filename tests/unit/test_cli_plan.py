"""`longctx plan`: the recommendation and its reasons, the cost table, JSON, KV shapes and bad input."""

from __future__ import annotations

import json

import pytest

from pytest_longctx.cli.main import main

SHAPE = ["--layers", "80", "--kv-heads", "8", "--head-dim", "128"]


def run(capsys, *argv):
    status = main(["plan", *argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_a_corpus_over_the_limit_with_global_reasoning_is_hybrid_and_says_why(capsys):
    status, out, _ = run(capsys, "--corpus-tokens", "200000", "--context-limit", "131072", "--global-reasoning")

    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "recommendation: hybrid"
    assert lines[1].startswith("  - the corpus (200,000 tokens) does not fit the 131,072-token context limit")
    assert "130,752 tokens are usable" in lines[1]
    assert "the task needs global reasoning" in lines[2] and "(retrieval: {method: hybrid, budget_tokens: 130752})" in lines[2]
    table = out[out.index("path "):]
    assert "long_context (over limit)  200,000  200,064" in table
    assert "hybrid                     130,752  130,816        2.81 GiB" in table  # 23,040 B/token x 131,072 tokens
    assert lines[-1] == "KV: embedded:smollm2-135m-instruct: 30 layers x 3 KV heads x head dim 64, bf16"


@pytest.mark.parametrize(
    ("flags", "recommendation"),
    [
        (["--corpus-tokens", "200000", "--context-limit", "131072"], "retrieval"),
        (["--corpus-tokens", "50000", "--context-limit", "131072"], "long_context"),
        (["--corpus-tokens", "50000", "--context-limit", "131072", "--fresh-data"], "retrieval"),
        (["--corpus-tokens", "50000", "--context-limit", "131072", "--fresh-data", "--global-reasoning"], "long_context"),
        (["--corpus-tokens", "50000", "--context-limit", "131072", "--fresh-data", "--large-corpus-tokens", "60000"],
         "long_context"),
    ],
)
def test_each_branch_from_the_command_line(capsys, flags, recommendation):
    status, out, _ = run(capsys, *flags, *SHAPE)

    assert status == 0
    assert out.splitlines()[0] == f"recommendation: {recommendation}"
    assert out.splitlines()[-1] == "KV: 80 layers x 8 KV heads x head dim 128, bf16"


def test_repeated_queries_show_the_prefix_reuse_columns(capsys):
    _, out, _ = run(capsys, "--corpus-tokens", "50000", "--context-limit", "131072", "--queries", "10", *SHAPE)

    assert "prefill x10" in out and "KV x10" in out
    assert "50,640 (prefix reused)" in out
    assert "16.24 GiB" in out  # 50,000 prefix tokens held once + 10 x (64 + 256) at 320 KiB per token


def test_json_output(capsys, tmp_path):
    config = {"num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2, "hidden_size": 512}
    (tmp_path / "config.json").write_text(json.dumps(config))

    status, out, _ = run(capsys, "--corpus-tokens", "1000", "--context-limit", "4096", "--config", str(tmp_path),
                         "--dtype", "fp8", "--json")

    data = json.loads(out)
    assert status == 0
    assert data["recommendation"] == "long_context"
    assert data["kv"] == {"layers": 4, "kv_heads": 2, "head_dim": 64, "dtype": "fp8"}
    assert data["paths"]["long_context"]["kv_bytes"] == 2 * 4 * 2 * 64 * 1 * (1000 + 64 + 256)
    assert set(data["paths"]) == {"long_context", "retrieval", "hybrid"}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--corpus-tokens", "1000", "--context-limit", "200"], "leaves no room beside the question"),
        (["--corpus-tokens", "1000", "--context-limit", "4096", "--layers", "4"], "missing: --kv-heads, --head-dim"),
        (["--corpus-tokens", "1000", "--context-limit", "4096", "--model", "embedded:nope"], "unknown embedded model"),
        (["--corpus-tokens", "1000", "--context-limit", "4096", "--model", "x", *SHAPE], "not both"),
        (["--corpus-tokens", "1000", "--context-limit", "4096", "--dtype", "fp7", *SHAPE], "unknown dtype"),
    ],
)
def test_bad_input_exits_two_with_the_reason(capsys, flags, message):
    status, out, err = run(capsys, *flags)

    assert status == 2
    assert out == ""
    assert err.startswith("longctx plan: ") and message in err


def test_argument_types_are_checked_at_parse_time(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["plan", "--corpus-tokens", "lots", "--context-limit", "4096"])
    assert exited.value.code == 2
    assert "expected a whole number, got 'lots'" in capsys.readouterr().err


def test_the_other_subcommands_still_work(capsys):
    assert main(["kv", *SHAPE, "--tokens", "131072"]) == 0
    assert "per sequence:   40 GiB at 131,072 tokens" in capsys.readouterr().out
