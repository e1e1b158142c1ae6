"""`--longctx-gate`, `--longctx-report`, `--longctx-json`, `--longctx-model` driven through pytester on a tiny model."""

from __future__ import annotations

import json

import pytest

from pytest_longctx.gate.decision import evaluate
from pytest_longctx.gate.results import SCHEMA_VERSION, CellResult, load_results
from pytest_longctx.gate.spec import GateSpec


def run_gate(pytester, gate, model_dir, *extra):
    return pytester.runpytest("--longctx-gate", str(gate), "--longctx-model", str(model_dir), "-p", "no:cacheprovider", *extra)


def test_without_a_gate_the_plugin_stays_out_of_the_way(pytester):
    pytester.makepyfile("def test_plain():\n    assert True\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert "longctx gate" not in result.stdout.str()
    help_text = pytester.runpytest("--help").stdout.str()
    for option in ("--longctx-gate", "--longctx-report", "--longctx-json", "--longctx-model"):
        assert option in help_text


def test_approve_writes_report_and_json_and_exits_zero(pytester, write_gate, tiny_model_dir):
    gate = write_gate()
    pytester.makepyfile("def test_not_collected():\n    assert False\n")  # gate runs alone unless tests are named
    result = run_gate(pytester, gate, tiny_model_dir, "--longctx-json", "out/r.json", "--longctx-report", "out/r.html", "-v")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=12)
    result.stdout.fnmatch_lines(
        ["*tiny::baseline::niah?256-d0.50-s0? PASSED*", "*tiny::candidate::niah?384-d1.00-s0? PASSED*", "*gate tiny: APPROVE*"]
    )
    data = json.loads((pytester.path / "out" / "r.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION and data["decision"]["verdict"] == "approve"
    assert set(data["metrics"]["middle_recall"]) == {"baseline", "candidate"}
    assert len(data["cells"]) == 12
    first = data["cells"][0]
    for key in ("variant", "task", "length", "tokens", "depth", "seed", "found", "answer", "prefill_s",
                "decode_s_per_token", "total_s", "kv_bytes", "peak_bytes", "prompt_sha256", "kv_source"):
        assert key in first
    assert {c["kv_source"] for c in data["cells"]} == {"measured"}
    # One model for both sides (they differ in the cache only); its load is timed apart from the library imports.
    env = data["environment"]
    assert set(env["model_load_s"]) == {"baseline"} and set(env["library_import_s"]) == {"baseline"}
    assert 0 < env["model_load_s"]["baseline"] < 60 and env["library_import_s"]["baseline"] >= 0
    # Both variants saw the same prompt in every cell.
    by_key = {}
    for c in data["cells"]:
        by_key.setdefault((c["length"], c["depth"]), set()).add(c["prompt_sha256"])
    assert all(len(hashes) == 1 for hashes in by_key.values())
    # The decision is recomputable from the cells alone.
    metrics, decision = evaluate(GateSpec.from_dict(data["gate"]), [CellResult.from_dict(c) for c in data["cells"]])
    assert decision.to_dict() == data["decision"]
    html = (pytester.path / "out" / "r.html").read_text()
    assert "approve" in html.lower() and "tiny" in html


def test_reject_exits_one_and_names_the_failing_threshold(pytester, write_gate, tiny_model_dir):
    # An FP8 baseline against a full-precision candidate: the candidate stores 4-byte floats, the baseline 1 byte
    # plus a 4-byte scale per 16-wide head row: 3.2x.
    # KV bytes on any device: on CUDA the default memory source would be peak allocation, which weights dominate.
    gate = write_gate(baseline={"kv_cache_dtype": "fp8"}, candidate={"kv_cache_dtype": "auto"}, report="reports/tiny.html",
                      thresholds={"p95_latency_ratio": {"max": 100.0}, "memory_ratio": {"max": 1.05, "source": "kv_bytes"}})
    result = run_gate(pytester, gate, tiny_model_dir)
    assert result.ret == 1
    result.assert_outcomes(passed=12)  # misses and regressions are data: no item fails
    result.stdout.fnmatch_lines(["*gate tiny: REJECT*", "*FAIL memory (kv_bytes)*ratio 3.200*"])
    assert load_results(pytester.path / "reports" / "tiny.json").decision.verdict == "reject"
    assert (pytester.path / "reports" / "tiny.html").is_file()


def test_deselected_cells_make_the_gate_incomplete(pytester, write_gate, tiny_model_dir):
    gate = write_gate()
    result = run_gate(pytester, gate, tiny_model_dir, "-k", "not 384")
    assert result.ret == 1
    result.assert_outcomes(passed=6, deselected=6)
    result.stdout.fnmatch_lines(["*gate tiny: INCOMPLETE*", "*cannot approve: 6 of 12 cells were not run*"])


def test_an_errored_cell_fails_its_item_and_blocks_approval(pytester, write_gate, tiny_model_dir):
    # 64 tokens cannot hold the chat template, needle and question: those cells error, the others run.
    gate = write_gate(sweep={"lengths": [64, 256], "depths": [0.5], "seeds": [0], "max_new_tokens": 2})
    result = run_gate(pytester, gate, tiny_model_dir)
    assert result.ret == 1
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*could not be measured: ValueError*", "*gate tiny: INCOMPLETE*", "*cannot approve: 2 cells errored*"])


@pytest.mark.parametrize(
    "content,expected",
    [
        ("name: g\nbaseline: {}\ncandidate: {kv_cache_dtype: fp16}\nsweep: {lengths: [256], depths: [0.5]}\n",
         "*gate.yaml: key 'candidate.kv_cache_dtype': 'fp16' is not supported. Fix: use one of: auto, fp8*"),
        ("name: g\nbaseline: {}\ncandidate: {}\nsweep: {lengths: [256], depths: [0.5], sed: [1]}\n",
         "*gate.yaml: key 'sweep.sed': unknown key. Fix: use one of: lengths, depths, seeds*"),
    ],
)
def test_bad_gate_is_a_usage_error_naming_file_and_key(pytester, content, expected):
    (pytester.path / "gate.yaml").write_text(content)
    result = pytester.runpytest("--longctx-gate", "gate.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])


def test_unknown_model_reference_is_a_usage_error(pytester, write_gate):
    gate = write_gate()
    result = pytester.runpytest("--longctx-gate", str(gate), "--longctx-model", "embedded:gpt-zero")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*key 'model': unknown embedded model 'gpt-zero'; known: embedded:smollm2-135m-instruct*"])
    result = pytester.runpytest("--longctx-gate", str(gate), "--longctx-model", "missing/model.gguf")
    result.stderr.fnmatch_lines(["*GGUF file missing/model.gguf does not exist*"])


def test_cells_spread_over_xdist_workers_still_decide_on_the_controller(pytester, write_gate, tiny_model_dir):
    pytest.importorskip("xdist")
    gate = write_gate(report="out/x.html")
    result = run_gate(pytester, gate, tiny_model_dir, "-n", "2")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*gate tiny: APPROVE*"])
    results = load_results(pytester.path / "out" / "x.json")
    assert len(results.cells) == 12 and results.metrics.paired_cells == 6


def test_a_model_swap_runs_each_side_on_its_own_weights(pytester, write_gate, tiny_model_dir, tmp_path_factory):
    """candidate.model: another checkpoint (here the same architecture with other random weights)."""
    import torch
    from transformers import LlamaForCausalLM

    other = tmp_path_factory.mktemp("other-checkpoint")
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(other)
    for path in tiny_model_dir.iterdir():  # the same tokenizer and chat template
        if path.name not in ("config.json", "generation_config.json", "model.safetensors"):
            (other / path.name).write_bytes(path.read_bytes())
    gate = write_gate(baseline={}, candidate={"model": str(other)})
    result = run_gate(pytester, gate, tiny_model_dir, "--longctx-json", "out/r.json")
    assert result.ret in (0, 1), result.stdout.str()
    result.assert_outcomes(passed=12)
    data = json.loads((pytester.path / "out" / "r.json").read_text())
    assert data["gate"]["candidate"]["model"]["ref"] == str(other)
    assert set(data["environment"]["model_load_s"]) == {"baseline", "candidate"}  # two models loaded
    answers = {side: [c["answer"] for c in data["cells"] if c["variant"] == side] for side in ("baseline", "candidate")}
    assert answers["baseline"] != answers["candidate"]  # other weights, other greedy answers
    by_key = {}
    for c in data["cells"]:
        by_key.setdefault((c["length"], c["depth"]), set()).add(c["prompt_sha256"])
    assert all(len(hashes) == 1 for hashes in by_key.values())  # one tokenizer: the very same prompts



LAUGHS = "[&l0 [" + ",".join(["256"] * 10) + "], " + ", ".join(f"&l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)) + "]"
TINY = {"name": "tiny", "baseline": {}, "candidate": {"kv_cache_dtype": "fp8_e4m3"},
        "sweep": {"lengths": [256, 384], "depths": [0.0, 0.5, 1.0]}}


@pytest.mark.parametrize(
    "gate,expected",
    [
        ({**TINY, "name": "x\n\n## ✅ APPROVE\n<img src=x onerror=alert(1)>"},
         "gate.yaml: key 'name': contains the control character '\\n'"),
        ({**TINY, "name": "../../../../tmp/x"}, "gate.yaml: key 'name': '../../../../tmp/x' is not a plain name"),
        ({**TINY, "report": "out/r.json"}, "r.json would be both the results JSON and the HTML report"),
        ({**TINY, "candidate": {"attention": {"window": 400}}}, "key 'candidate.attention.window': a window of 400 tokens"),
        ("name: g\nbaseline: {}\ncandidate: {}\nsweep: {lengths: [256], depths: [0.5, .nan]}\n",
         "gate.yaml: key 'sweep.depths[1]': .nan is not a finite number"),
        ("name: g\nbaseline: {}\ncandidate: {}\nsweep:\n  depths: [0.5]\n  lengths: " + LAUGHS + "\n",
         "gate.yaml: key 'sweep.lengths[5][1]': aliases expand the document past 1,048,576 characters"),
    ],
    ids=["forged name", "name climbing out", "report over its JSON", "window holding every prompt", "nan depth", "billion laughs"],
)
def test_a_malformed_gate_is_a_usage_error_without_a_traceback(pytester, gate, expected):
    import yaml

    text = gate if isinstance(gate, str) else yaml.safe_dump(gate, allow_unicode=True)
    (pytester.path / "gate.yaml").write_text(text, encoding="utf-8")
    result = pytester.runpytest("--longctx-gate", "gate.yaml", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = result.stderr.str()
    assert expected in errors and "Fix: " in errors
    assert "Traceback" not in result.stdout.str() + errors
    assert not (pytester.path / "reports").exists() and not (pytester.path / "out").exists()  # refused before anything ran
