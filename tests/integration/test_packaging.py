"""Packaging: the sdist and the wheel build from a copy of the tree, hold what a user needs, and the wheel imports.

The wheel is installed with `pip install --no-deps --target DIR` and imported from DIR by this interpreter: a fresh
virtual environment would need torch and transformers again (gigabytes) to import anything.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import pytest_longctx

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = "pytest_longctx/output/templates/report.html.j2"
# What never belongs in a build's input: environments, caches and outputs of earlier runs.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "reports", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
)


def _need_setuptools() -> None:
    """The build runs without isolation (offline): this environment must hold the build backend pyproject asks for."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        version = None
    if version is None or int(version.split(".")[0]) < 77:
        message = f"setuptools>=77 is needed to build without isolation (found {version}); `pip install -e '.[dev]'` installs it"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def build(source: Path, out: Path) -> str:
    """Build the sdist, then the wheel from the unpacked sdist (as `python -m build` does); return the build output."""
    if importlib.util.find_spec("build") is not None:
        command = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)]
    else:  # the same two steps through setuptools' PEP 517 hooks
        script = (
            "import sys, tarfile, os; from setuptools import build_meta as b; out = sys.argv[1]\n"
            "sdist = b.build_sdist(out)\n"
            "safe = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}\n"
            "tarfile.open(os.path.join(out, sdist)).extractall(out + '/unpacked', **safe)\n"
            "os.chdir(os.path.join(out, 'unpacked', sdist[:-len('.tar.gz')])); b.build_wheel(out)\n"
        )
        command = [sys.executable, "-c", script, str(out)]
    env = {**os.environ, "PYTHONWARNINGS": "always"}
    env.pop("PYTHONPATH", None)  # the backend must read the copy, not this checkout
    result = subprocess.run(command, cwd=source, env=env, capture_output=True, text=True, timeout=600, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"the build failed:\n{output}"
    return output


def license_deprecations(output: str) -> list[str]:
    """Deprecation warnings about how the licence is declared (a table, a classifier), from a build's output."""
    blocks = re.split(r"\n(?=\S)", output)
    return [b for b in blocks if re.search(r"deprecat", b, re.I) and re.search(r"licen[cs]e", b, re.I)]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    _need_setuptools()
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    out = base / "dist"
    return out, build(source, out)


def only(folder: Path, pattern: str) -> Path:
    (found,) = folder.glob(pattern)
    return found


def test_the_build_gives_no_licence_deprecation_warning(dist):
    _, output = dist
    assert license_deprecations(output) == [], output


def test_the_licence_check_sees_the_warning_a_table_licence_gives(tmp_path):
    _need_setuptools()
    project = tmp_path / "old_style"
    (project / "old_style").mkdir(parents=True)
    (project / "old_style" / "__init__.py").write_text("")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=77"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "old-style"\nversion = "1"\nlicense = {text = "Apache-2.0"}\n'
    )

    assert license_deprecations(build(project, tmp_path / "out")) != []


def test_the_wheel_holds_the_package_its_data_and_its_licence(dist):
    out, _ = dist
    wheel = only(out, "pytest_longctx-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    info = f"pytest_longctx-{pytest_longctx.__version__}.dist-info"

    assert wheel.name == f"pytest_longctx-{pytest_longctx.__version__}-py3-none-any.whl"
    assert {TEMPLATE, "pytest_longctx/py.typed", "pytest_longctx/plugin.py", f"{info}/licenses/LICENSE"} <= set(names)
    assert {name.split("/")[0] for name in names} == {"pytest_longctx", info}  # no tests, fixtures or docs
    metadata = email.parser.Parser().parsestr(zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode())
    assert metadata["License-Expression"] == "Apache-2.0" and metadata["License-File"] == "LICENSE"
    assert metadata["Version"] == pytest_longctx.__version__
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert re.search(r"^\[console_scripts\]\nlongctx = pytest_longctx\.cli\.main:main$", entry_points, re.M)
    assert re.search(r"^\[pytest11\]\nlongctx = pytest_longctx\.plugin$", entry_points, re.M)


def test_the_sdist_holds_the_licence_the_project_file_and_the_template(dist):
    out, _ = dist
    sdist = only(out, "pytest_longctx-*.tar.gz")
    top = f"pytest_longctx-{pytest_longctx.__version__}"
    names = set(tarfile.open(sdist).getnames())

    assert {f"{top}/{name}" for name in ("LICENSE", "pyproject.toml", "README.md", "PKG-INFO", TEMPLATE)} <= names
    pkg_info = tarfile.open(sdist).extractfile(f"{top}/PKG-INFO").read().decode()
    assert "License-Expression: Apache-2.0" in pkg_info


def test_the_installed_wheel_imports_and_its_command_runs(dist, tmp_path):
    out, _ = dist
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(only(out, "*.whl"))],
        check=True, capture_output=True, text=True, timeout=300,
    )
    # Only the installed copy on the path, and a working directory without this checkout in it.
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = (
        "import pytest_longctx, pytest_longctx.plugin, pytest_longctx.cli.main\n"
        "from importlib.resources import files\n"
        "print(pytest_longctx.__file__); print(pytest_longctx.__version__)\n"
        "print(files('pytest_longctx.output').joinpath('templates/report.html.j2').is_file())\n"
    )
    imported = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert imported.returncode == 0, imported.stderr
    where, version, template = imported.stdout.split()
    assert Path(where).is_relative_to(target) and version == pytest_longctx.__version__ and template == "True"

    helped = subprocess.run(
        [str(target / "bin" / "longctx"), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: longctx") and all(command in helped.stdout for command in ("report", "decide", "kv", "plan"))
