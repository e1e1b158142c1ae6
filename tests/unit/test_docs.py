"""The manual under docs/ stays true: links resolve, every key and public name is documented, examples run."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

import pytest_longctx
from pytest_longctx.cli.main import main
from pytest_longctx.gate.spec import GateError, parse_gate

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", *DOCS.glob("*.md")])
# Pages and sections that other branches are adding; index.md links them already. Once one exists its links are
# checked like any other, so after the merge this set can shrink to nothing.
PENDING: set[str] = set()
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def fenced(page: Path, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_that_exists(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        name = resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else str(resolved)
        if name in PENDING or f"{name}#{anchor}" in PENDING:
            continue
        if not resolved.exists():
            broken.append(f"{target}: no file {name}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading '#{anchor}' in {name}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


def test_the_link_check_catches_a_missing_file_and_a_missing_heading(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# A heading, with punctuation\n")
    page.write_text("[ok](there.md#a-heading-with-punctuation) [gone](gone.md) [bad](there.md#nope) "
                    "[web](https://example.com)\n```sh\n[not a link](in-code.md)\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)

    with pytest.raises(AssertionError) as failure:
        test_every_relative_link_points_at_a_file_that_exists(page)

    assert "gone.md: no file gone.md" in str(failure.value) and "there.md#nope: no heading" in str(failure.value)
    assert "in-code.md" not in str(failure.value) and "example.com" not in str(failure.value)


def test_the_manual_index_links_every_page():
    linked = {t.partition("#")[0] for t in relative_links(DOCS / "index.md")}
    assert {p.name for p in DOCS.glob("*.md")} - {"index.md"} <= linked


def _accepted_keys(path: tuple[str, ...], extra: dict | None = None, *, candidate: dict | None = None) -> list[str]:
    """The keys the parser accepts at `path`, read from its own 'unknown key' error (so a refactor cannot hide one)."""
    data: dict = {"name": "g", "baseline": {}, "candidate": candidate or {"kv_cache_dtype": "fp8"},
                  "sweep": {"lengths": [256], "depths": [0.5]}}
    node = data
    for key in path:
        node = node.setdefault(key, {})
    node.update(copy.deepcopy(extra or {}))
    node["no_such_key"] = 1
    with pytest.raises(GateError, match="unknown key") as error:
        parse_gate(data)
    # "Fix: use one of: a, b, c." or "Fix: use a and b."
    listed = re.search(r"Fix: use (?:one of: )?(.*?)\.?$", str(error.value)).group(1)
    return re.split(r", | and ", listed)


@pytest.mark.parametrize(
    "path,extra",
    [
        ((), None), (("model",), None), (("candidate",), None), (("candidate", "planted"), None),
        (("candidate", "attention"), {"window": 8}), (("candidate", "history"), {"budget": 64}),
        (("candidate", "retrieval"), {"method": "bm25"}), (("sweep",), None), (("sweep", "timing"), None),
        (("sweep", "loss"), {"tokens": 64}), (("thresholds",), None), (("thresholds", "middle_recall"), None),
        (("thresholds", "p95_latency_ratio"), None), (("thresholds", "p95_decode_ratio"), None),
        (("thresholds", "memory_ratio"), None), (("thresholds", "effective_length_ratio"), None),
        (("sweep", "load"), None), (("thresholds", "goodput_ratio"), None),
        (("thresholds", "throughput_ratio"), None),
    ],
    ids=lambda v: ".".join(v) if isinstance(v, tuple) else "",
)
def test_every_key_the_parser_accepts_is_in_the_gate_reference(path, extra):
    reference = (DOCS / "gates.md").read_text(encoding="utf-8")
    missing = [key for key in _accepted_keys(path, extra) if f"`{key}`" not in reference and f"{key}:" not in reference]
    assert not missing, f"docs/gates.md does not document {'.'.join(path) or 'top-level'} keys {missing}"


def test_every_launch_key_is_in_the_gate_reference():
    keys = _accepted_keys(("candidate", "launch"), {"command": "serve --port {port}"}, candidate={"backend": "openai"})
    reference = (DOCS / "gates.md").read_text(encoding="utf-8")
    assert keys and [key for key in keys if key not in reference] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_whole_gate_shown_in_the_docs_parses(page):
    gates = [block for block in fenced(page, "yaml") if re.search(r"^name: ", block, re.M)]
    for block in gates:
        data = yaml.safe_load(block)
        try:
            parse_gate(data, source=f"{page.name}: {data['name']}")
        except GateError as exc:
            pytest.fail(f"a gate shown in {page.relative_to(ROOT)} does not parse: {exc}")


def test_every_public_name_is_in_the_python_api_page():
    page = (DOCS / "python-api.md").read_text(encoding="utf-8")
    assert [name for name in pytest_longctx.__all__ if f"`{name}" not in page] == []


def _is_module(dotted: str) -> bool:
    try:
        return importlib.util.find_spec(dotted) is not None
    except ModuleNotFoundError:
        return False


def test_every_module_path_the_docs_name_imports():
    text = "".join(page.read_text(encoding="utf-8") for page in PAGES)
    paths = sorted(set(re.findall(r"`(pytest_longctx(?:\.\w+)+)`", text)))
    assert len(paths) > 15
    unresolved = []
    for dotted in paths:  # a module, or a name in one
        if _is_module(dotted):
            continue
        module_name, _, attribute = dotted.rpartition(".")
        if not _is_module(module_name) or not hasattr(importlib.import_module(module_name), attribute):
            unresolved.append(dotted)
    assert unresolved == []


def test_the_python_api_example_re_decides_a_recorded_run(monkeypatch, capsys):
    (example, _) = fenced(DOCS / "python-api.md", "python")
    monkeypatch.chdir(ROOT)
    code = example.replace('"reports/fp8.json"', '"tests/data/fp8-results.json"')
    namespace: dict = {}

    exec(compile(code, "python-api.md", "exec"), namespace)

    recorded = json.loads((ROOT / "tests" / "data" / "fp8-results.json").read_text(encoding="utf-8"))
    assert namespace["decision"].verdict == recorded["decision"]["verdict"] == "reject"
    assert capsys.readouterr().out.startswith("reject {'baseline': 0.61")


@pytest.mark.parametrize("page", [DOCS / "capacity.md"], ids=lambda p: p.name)
def test_the_console_output_shown_is_what_the_command_prints(page, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # commands name files such as fixtures/configs/llama-3.1-8b
    runs = [run for block in fenced(page, "console") for run in block.split("$ ")[1:]]
    assert len(runs) >= 4
    for run in runs:
        command, *shown = run.rstrip("\n").split("\n")
        status = main(shlex.split(command.removeprefix("longctx ")))
        printed = capsys.readouterr().out.rstrip("\n").split("\n")
        assert status == (1 if any("do not fit" in line for line in printed) else 0), command
        if "..." in shown:  # an elided middle: the head and the tail must match
            cut = shown.index("...")
            head, tail = shown[:cut], shown[cut + 1:]
            assert printed[:len(head)] == head and printed[len(printed) - len(tail):] == tail, command
        else:
            assert printed == shown, command
