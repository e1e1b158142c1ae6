from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from pytest_longctx.gate.spec import GateError, GateSpec, load_gate, parse_gate

ROOT = Path(__file__).resolve().parents[2]


def minimal(**overrides):
    data = {
        "name": "g",
        "baseline": {"kv_cache_dtype": "auto"},
        "candidate": {"kv_cache_dtype": "fp8"},
        "sweep": {"lengths": [256], "depths": [0.0, 0.5, 1.0]},
    }
    data.update(overrides)
    return data


def test_shipped_fp8_gate_loads_with_the_documented_settings():
    gate = load_gate(ROOT / "gates" / "fp8.yaml", base_dir=ROOT)
    assert gate.name == "fp8-kv-cache"
    assert gate.model.ref == "embedded:smollm2-135m-instruct" and gate.model.trust_remote_code is False
    assert gate.candidate.cache_plan().kv_cache_dtype == "fp8_e4m3" and gate.baseline.cache_plan().kv_cache_dtype == "auto"
    # Sequential: looks of 2 seeds up to 6 (the items cover every seed; a decided gate skips the later looks).
    assert gate.sweep.lengths == (1024, 2048, 4096) and gate.sweep.seeds == tuple(range(6))
    assert (gate.sweep.sequential.batch, gate.sweep.sequential.max_seeds, gate.sweep.sequential.alpha) == (2, 6, 0.05)
    assert gate.sweep.middle == (0.25, 0.75) and gate.sweep.max_new_tokens == 24
    t = gate.thresholds
    assert (t.middle_recall_policy, t.middle_recall_margin, t.answer_logprob_max_drop) == ("noninferiority", 0.10, 0.5)
    assert (t.p95_latency_ratio_max, t.memory_ratio_max) == (1.10, 1.05)
    assert gate.report == ROOT / "reports" / "fp8.html"
    assert len(gate.sha256 or "") == 64


@pytest.mark.parametrize("path", sorted((ROOT / "gates").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_gate_loads_and_the_manual_shows_how_to_run_it(path):
    gate = load_gate(path, base_dir=ROOT)
    assert gate.report == ROOT / "reports" / f"{path.stem}.html"  # reports/<file>.html, never a clash
    assert gate.baseline != dataclasses.replace(gate.candidate, name="baseline") or path.stem == "aa"  # a real change
    assert f"gates/{path.name}" in (ROOT / "docs" / "changes.md").read_text()  # with the change it tests


def test_defaults_fill_what_the_gate_leaves_out():
    gate = parse_gate(minimal())
    assert gate.model.ref == "embedded:smollm2-135m-instruct"
    assert gate.sweep.seeds == (0,) and [t.name for t in gate.sweep.tasks] == ["niah"]
    assert gate.thresholds.p95_latency_ratio_max == 1.10


def test_to_dict_round_trips_through_from_dict():
    gate = parse_gate(minimal(model={"ref": "/m", "dtype": "bfloat16"}, report="r/x.html"), base_dir=Path("/tmp"))
    assert GateSpec.from_dict(gate.to_dict()) == gate


@pytest.mark.parametrize(
    "data,key,fix",
    [
        (minimal(sweeep={}), "key 'sweeep'", "use one of"),
        (minimal(sweep={"lengths": [256], "depths": [0.5], "lenghts": 1}), "key 'sweep.lenghts'", "use one of"),
        (minimal(candidate={"kv_cache_dtype": "fp4"}), "key 'candidate.kv_cache_dtype'", "auto, fp8, fp8_e4m3, fp8_e5m2"),
        (minimal(sweep={"lengths": "1024", "depths": [0.5]}), "key 'sweep.lengths'", "write sweep.lengths"),
        (minimal(sweep={"lengths": [256], "depths": [1.5]}), "key 'sweep.depths'", "[0.0, 1.0]"),
        (minimal(sweep={"lengths": [256], "depths": [0.0, 1.0]}), "key 'sweep.depths'", "middle depth"),
        (minimal(sweep={"lengths": [256, 256], "depths": [0.5]}), "key 'sweep.lengths'", "list each value once"),
        (minimal(sweep={"lengths": [True], "depths": [0.5]}), "key 'sweep.lengths'", "whole number"),
        (minimal(thresholds={"memory_ratio": {"max": "1.05"}}), "key 'thresholds.memory_ratio.max'", "plain number"),
        (minimal(model={"ref": "x", "trust_remote_code": "yes"}), "key 'model.trust_remote_code'", "true or false"),
        ({"name": "g"}, "key 'baseline'", "add `baseline:`"),
        ([1, 2], "top level", "key: value"),
    ],
)
def test_bad_gates_name_the_file_key_and_fix(data, key, fix):
    with pytest.raises(GateError) as err:
        parse_gate(data, source="gates/bad.yaml")
    message = str(err.value)
    assert message.startswith("gates/bad.yaml: ") and key in message and fix in message


def test_unreadable_and_invalid_yaml_files(tmp_path):
    with pytest.raises(GateError, match="cannot read the gate file"):
        load_gate(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(GateError, match=r"bad.yaml: not valid YAML"):
        load_gate(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump(minimal(report="out/r.html")))
    assert load_gate(ok, base_dir=tmp_path).report == tmp_path / "out" / "r.html"


CHANGES = {
    "model": "other/model-dir",
    "dtype": "bfloat16",
    "attn_implementation": "eager",
    "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192},
    "max_position_embeddings": 32768,
    "attention": {"window": 512, "sink_tokens": 4},
    "packing": "edge",
    "history": {"budget": 1024},
    "retrieval": {"method": "bm25", "top_k": 4},
}


def test_every_change_a_variant_can_carry_round_trips_through_results():
    gate = parse_gate(minimal(candidate=CHANGES,
                              sweep={"lengths": [256], "depths": [0.5], "tasks": ["niah", {"family": "multi_doc_qa"}, "conversation"]}))
    c = gate.candidate
    assert c.model_spec(gate.model).ref == "other/model-dir" and c.model_spec(gate.model).dtype == "bfloat16"
    rope = c.load_plan(gate.model).rope
    assert rope.rope_type == "yarn" and rope.max_position_embeddings == 32768
    window = c.cache_plan().window
    assert (window.window, window.sink_tokens) == (512, 4) and c.find("history").budget.budget == 1024
    assert c.changes_prompt and not gate.baseline.changes_prompt
    # Sides that differ only in what is applied after loading share one model; load-time settings split them.
    assert gate.baseline.load_key(gate.model) != c.load_key(gate.model)
    assert parse_gate(minimal()).baseline.load_key(gate.model) == parse_gate(minimal()).candidate.load_key(gate.model)
    assert GateSpec.from_dict(gate.to_dict()) == gate


@pytest.mark.parametrize(
    "candidate,key,fix",
    [
        ({"rope_parameters": {"rope_type": "yarn"}}, "candidate.rope_parameters.factor", "add factor"),
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "beta_fast": 32}}, "candidate.rope_parameters.beta_fast", "remove it"),
        ({"max_position_embeddings": 0}, "candidate.max_position_embeddings", "context length in tokens"),
        ({"rope_parameters": {}}, "candidate.rope_parameters", "give a rope_type"),
        ({"attention": {"sink_tokens": 4}}, "candidate.attention.window", "add window"),
        ({"attention": {"window": 0}}, "candidate.attention.window", "integer >= 1"),
        ({"history": {"budget": -1}}, "candidate.history.budget", "positive integer"),
        ({"retrieval": {"method": "grep"}}, "candidate.retrieval.method", "bm25, dense, hybrid"),
        ({"packing": "middle"}, "candidate.packing", "given, edge"),
        ({"attn_implementation": "flash"}, "candidate.attn_implementation", "sdpa, eager"),
        ({"model": {"ref": "x", "dtype": "fp4"}}, "candidate.model.dtype", "float32"),
    ],
)
def test_bad_changes_name_the_variant_key_and_fix(candidate, key, fix):
    with pytest.raises(GateError, match=rf"gates/x.yaml: key '{key}': .*Fix: .*{fix}"):
        parse_gate(minimal(candidate=candidate), source="gates/x.yaml")


@pytest.mark.parametrize(
    "tasks,key",
    [
        (["niah", "haystack"], "sweep.tasks[1].family"),
        ([{"family": "niah_single", "value": "emoji"}], "sweep.tasks[0].value"),
        ([{"family": "niah_multikey", "colour": 3}], "sweep.tasks[0].colour"),
        (["niah", {"family": "niah", "name": "niah"}], "sweep.tasks"),
    ],
)
def test_bad_task_entries_name_their_index(tasks, key):
    with pytest.raises(GateError, match=rf"gates/x.yaml: key '{re.escape(key)}'"):
        parse_gate(minimal(sweep={"lengths": [256], "depths": [0.5], "tasks": tasks}), source="gates/x.yaml")


def test_a_timing_subset_must_come_from_the_sweep():
    gate = parse_gate(minimal(sweep={"lengths": [256, 512], "depths": [0.0, 0.5], "timing": {"depths": [0.5]}}))
    assert gate.sweep.timed(256, 0.5, 0) and not gate.sweep.timed(256, 0.0, 0)
    assert GateSpec.from_dict(gate.to_dict()) == gate
    with pytest.raises(GateError, match="key 'sweep.timing.lengths': 1024 is not one of the swept lengths"):
        parse_gate(minimal(sweep={"lengths": [256], "depths": [0.5], "timing": {"lengths": [1024]}}))


def test_a_served_variant_names_its_engine_or_how_to_start_it():
    gate = parse_gate(minimal(
        baseline={"backend": "openai", "launch": {"command": "{python} -m llama_cpp.server --model {model} --port {port}"}},
        candidate={"backend": "openai", "base_urls": ["http://127.0.0.1:8000", "http://127.0.0.1:8001"], "kv_cache_dtype": "int8",
                   "max_concurrency": 4},
    ))
    assert gate.baseline.served.launch.ready_timeout_s == 600 and gate.candidate.served.base_urls[1].endswith(":8001")
    assert gate.baseline.load_key(gate.model) != gate.candidate.load_key(gate.model)
    assert GateSpec.from_dict(gate.to_dict()) == gate


def test_a_served_variant_can_take_the_engines_tokenizer_and_kv_element_size():
    gate = parse_gate(minimal(
        baseline={"backend": "openai", "base_url": "http://127.0.0.1:8000", "tokenizer": "server"},
        candidate={"backend": "openai", "base_url": "http://127.0.0.1:8000", "tokenizer": "server", "kv_bytes_per_element": "34/32"},
    ))
    assert (gate.baseline.served.tokenizer, gate.baseline.served.kv_bytes_per_element) == ("server", None)
    assert gate.candidate.served.kv_bytes_per_element == 34 / 32
    assert (gate.baseline.served.cold_timing, gate.candidate.served.cold_timing) == ("verify", "verify")
    # Same engine, but what its KV holds differs: the sides must not share one backend.
    assert gate.baseline.load_key(gate.model) != gate.candidate.load_key(gate.model)
    assert GateSpec.from_dict(gate.to_dict()) == gate


@pytest.mark.parametrize(
    "candidate,key,fix",
    [
        ({"backend": "openai"}, "candidate.backend", "point at a running server"),
        ({"base_url": "http://x:1"}, "candidate.base_url", "add backend: openai"),
        ({"backend": "openai", "base_url": "x:1"}, "candidate.base_url", "without /v1"),
        ({"backend": "openai", "base_url": "http://x:1", "rope_parameters": {"rope_type": "linear", "factor": 2.0}},
         "candidate.rope_parameters", "launch.command"),
        ({"backend": "openai", "launch": {"command": "vllm serve {model}"}}, "candidate.launch.command", "--port {port}"),
        ({"tokenizer": "server"}, "candidate.tokenizer", "add backend: openai"),
        ({"backend": "openai", "base_url": "http://x:1", "tokenizer": "remote"}, "candidate.tokenizer", "local"),
        ({"backend": "openai", "base_url": "http://x:1", "kv_bytes_per_element": "q8"}, "candidate.kv_bytes_per_element", "34/32"),
        ({"backend": "openai", "base_url": "http://x:1", "kv_bytes_per_element": 0}, "candidate.kv_bytes_per_element", "34/32"),
        ({"backend": "openai", "base_url": "http://x:1", "cold_timing": "trust"}, "candidate.cold_timing", "verify"),
        ({"cold_timing": "assume"}, "candidate.cold_timing", "add backend: openai"),
    ],
)
def test_bad_served_variants_name_the_key_and_fix(candidate, key, fix):
    with pytest.raises(GateError, match=rf"key '{re.escape(key)}': .*Fix: .*{re.escape(fix)}"):
        parse_gate(minimal(candidate=candidate), source="gates/x.yaml")


def test_a_served_side_may_accept_timings_its_engine_cannot_verify_cold():
    gate = parse_gate(minimal(candidate={"backend": "openai", "base_url": "http://x:1", "cold_timing": "assume"}))
    assert gate.candidate.served.cold_timing == "assume"
    assert GateSpec.from_dict(gate.to_dict()) == gate


def test_a_sweep_of_position_free_families_alone_is_refused():
    with pytest.raises(GateError, match="key 'sweep.tasks': has no family where the evidence has a position"):
        parse_gate(minimal(sweep={"lengths": [256], "depths": [0.5], "tasks": ["common_words", "variable_tracking"]}))
