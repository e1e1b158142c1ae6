"""Property: whatever a gate document holds, parsing it gives a GateSpec or a GateError, never another exception,
never a hang. Documents are random structures around the real key set, with hostile scalars (nan, inf, huge ints,
long strings), and valid gates with a few keys replaced by such values."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from datetime import timedelta
from typing import Any

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pytest_longctx.changes.registry import side_keys
from pytest_longctx.gate.document import DocumentError, load_yaml
from pytest_longctx.gate.spec import TOP_LEVEL, GateError, GateSpec, parse_gate
from pytest_longctx.gate.sweep_spec import SWEEP_KEYS

VARIANT_KEYS = side_keys()

# 300 runs in seconds and is the same every run (derandomized); LONGCTX_FUZZ_EXAMPLES=5000 searches further, at random.
MAX_EXAMPLES = int(os.environ.get("LONGCTX_FUZZ_EXAMPLES", "300"))
PER_EXAMPLE_S = 2  # a hang becomes a failure after this long (SIGALRM), not a stuck test run

KEYS = sorted({
    *TOP_LEVEL, *SWEEP_KEYS, *VARIANT_KEYS,
    "ref", "dtype", "device", "trust_remote_code",  # model
    "middle_recall", "p95_latency_ratio", "p95_prefill_ratio", "p95_decode_ratio", "memory_ratio",
    "effective_length_ratio", "loss_ratio", "min_delta", "policy", "margin", "alpha", "max", "min", "source",
    "confidence", "recall",  # thresholds
    "rope_type", "factor", "original_max_position_embeddings", "beta_fast", "short_factor",  # rope
    "window", "sink_tokens", "budget", "method", "top_k", "chunk_tokens", "command", "ready_timeout_s",
    "family", "value", "haystack", "distractors", "tokens", "buckets", "seed", "decode_delay", "kv_copies",
})
WORDS = ["niah", "multi_doc_qa", "conversation", "auto", "fp8", "int4", "yarn", "dynamic", "linear", "bm25",
         "openai", "transformers", "edge", "strict", "noninferiority", "bound", "min", "kv_bytes", "http://127.0.0.1:1",
         "{python} -m x --port {port}", "{model!x} {port}", "embedded:smollm2-135m-instruct", "34/32", "1e999999999",
         "a::b", "../../x", "x\n\n## ✅ APPROVE\n<img src=x onerror=alert(1)>"]

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 64, 256, 1024, 8192, 10**7, 2**31, 2**64]),
    # Past the 4300 digits str() accepts; built by map, as Hypothesis itself reprs the values it samples.
    st.sampled_from([4000, 5000, -5000]).map(lambda e: 10**e if e > 0 else -(10**-e)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.5, 1.0, 1.05, 1e308, float("nan"), float("inf"), -float("inf")]),
    st.text(max_size=20), st.sampled_from(WORDS), st.sampled_from(KEYS),
    st.sampled_from([17_000, 5_000]).map(lambda n: "x" * n),  # past the YAML scalar cap, past the string cap
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(-3, 3), st.booleans())
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(keys, inner, max_size=6)),
    max_leaves=40,
)

VALID = {
    "name": "g", "model": "embedded:smollm2-135m-instruct",
    "baseline": {"kv_cache_dtype": "auto"},
    "candidate": {"kv_cache_dtype": "fp8", "rope_parameters": {"rope_type": "linear", "factor": 2.0},
                  "attention": {"window": 128, "sink_tokens": 4}},
    "sweep": {"lengths": [256, 512], "depths": [0.0, 0.5, 1.0], "seeds": [0, 1], "repeats": 2,
              "tasks": ["niah", {"family": "niah_multikey", "distractors": 3}], "timing": {"depths": [0.5]}},
    "thresholds": {"middle_recall": {"policy": "noninferiority", "margin": 0.05}, "memory_ratio": {"max": 1.05}},
    "report": "reports/g.html",
}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a document a value could be replaced: mapping keys and list indexes, at every depth."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(VALID)


@st.composite
def mutated_gates(draw: st.DrawFn) -> Any:
    """A valid gate with one to three values replaced (or a new key added beside one) by random ones."""
    import copy

    gate = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent: Any = gate
        try:
            for step in path[:-1]:
                parent = parent[step]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent[draw(keys)] = draw(documents)
            else:
                parent[path[-1]] = draw(documents)
        except (KeyError, IndexError, TypeError):  # an earlier replacement removed this path
            continue
    return gate


@contextlib.contextmanager
def time_limit(seconds: int):
    """Fail an example that runs this long instead of hanging the run (Unix main thread only)."""
    if sys.platform == "win32":
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"parsing took over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _outcome(document: Any, *, record: bool = True) -> type:
    with time_limit(PER_EXAMPLE_S):
        try:
            result = parse_gate(document, source="gates/fuzz.yaml")
        except GateError as exc:
            assert str(exc).startswith("gates/fuzz.yaml: ") and "Fix: " in str(exc)
            assert len(str(exc)) < 2_000  # a message quotes values cut short, never a whole one
            if record:
                event("GateError")  # the statistics (--hypothesis-show-statistics) count both outcomes
            return GateError
    assert isinstance(result, GateSpec)
    if record:
        event("GateSpec")
    return GateSpec


def _through_yaml(document: Any) -> None:
    """The same document written as YAML and read back by the gate file's loader: data, or a DocumentError."""
    try:
        text = yaml.safe_dump(document)
    except (yaml.YAMLError, ValueError):  # a value PyYAML cannot write (an int past str()'s digit limit)
        return
    with time_limit(PER_EXAMPLE_S):
        try:
            data = load_yaml(text)
        except DocumentError:
            return
    _outcome(data)


SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=timedelta(seconds=PER_EXAMPLE_S),
                    derandomize="LONGCTX_FUZZ_EXAMPLES" not in os.environ,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(documents)
def test_any_document_is_a_gate_or_a_gate_error(document: Any) -> None:
    _outcome(document)
    _through_yaml(document)


@SETTINGS
@given(mutated_gates())
def test_a_valid_gate_with_hostile_values_is_a_gate_or_a_gate_error(document: Any) -> None:
    _outcome(document)
    _through_yaml(document)


def test_the_unmutated_gate_parses() -> None:
    """The mutations start from a gate that is valid, so what they find is theirs."""
    assert _outcome(VALID, record=False) is GateSpec

