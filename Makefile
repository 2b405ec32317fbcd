# slate-rl: `make quickstart` installs and runs the main job; `make test` installs, lints and runs the tests.
# The install pins the CPU build of torch that is available offline on our machines; on another machine pick
# your build, e.g. `make test TORCH="torch>=2.2"` (setup.cfg itself only asks for torch>=2.2).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
ENV ?= focused_mix
# test processes (pytest-xdist; each test file runs whole in one of them)
TEST_WORKERS ?= 2
BIN := $(VENV)/bin

.PHONY: install quickstart lint test test-fast benchmarks ui

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev,server,ray]"
	touch $@

install: $(BIN)/.installed

quickstart: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/mlflow run . -e train_online -P env=$(ENV) -P preset=quick --env-manager local

# Lint, format check and type check (settings in pyproject.toml); `test` runs them first so that it fails fast.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

test-fast: install
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow"

benchmarks: install
	$(BIN)/python benchmarks/run_all.py

ui: install
	$(BIN)/slate-rl ui
