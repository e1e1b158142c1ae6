"""The README's sections on users' own tests and `longctx kv` show the shipped example and the real output."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from pytest_longctx.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_example_is_the_example_file():
    block = re.search(r"```python\n(.*?)```", section("Writing your own long-context tests"), re.S).group(1)

    assert block in (ROOT / "examples" / "test_refund_clause.py").read_text(encoding="utf-8")


def test_the_readme_kv_output_is_what_the_command_prints(capsys):
    console = re.search(r"```console\n(.*?)```", section("Capacity planning: `longctx kv`"), re.S).group(1)
    command, *shown = console.split("\n$ ")[0].splitlines()

    assert main(shlex.split(command.removeprefix("$ longctx "))) == 0
    assert capsys.readouterr().out.splitlines() == shown
