# One entry point for developers, CI (.ci/run) and Cloud Build: the same commands everywhere.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help venv run test lint typecheck unit integration bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else "Python 3.11 or newer is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	@touch $@

venv: $(STAMP)  ## create .venv with the pinned requirements

run: venv  ## start the local stack and send a sample prediction through it (Ctrl-C stops)
	$(BIN)/python -m relay dev --demo

lint: venv  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv  ## mypy --strict on the packages
	$(BIN)/mypy

unit: venv  ## unit tests (nothing running needed)
	$(BIN)/python -m pytest tests/unit

integration: venv  ## integration tests against the emulators (started by the tests)
	$(BIN)/python -m pytest tests/integration

test: lint typecheck  ## lint, type checks and the whole suite
	$(BIN)/python -m pytest

bench: venv  ## receiver benchmark: real receiver vs a no-op function, same run
	$(BIN)/python bench/receiver.py

clean:  ## remove the virtualenv, caches and local logs
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .relay
