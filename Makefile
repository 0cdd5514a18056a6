# The two commands: `make demo` and `make test`. Both create .venv and install everything themselves.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint unit integration bench chaos run clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python -m devstack.demo

test: install lint
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: install
	$(BIN)/python -m pytest -q tests/unit

integration: install
	$(BIN)/python -m pytest -q tests/integration

bench: install
	$(BIN)/python bench/simulator_rate.py
	$(BIN)/python bench/enqueue.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/download.py

# The whole Procfile under honcho against a private Redis, S3 server and simulator; Ctrl-C stops it all.
run: install
	$(BIN)/python -m devstack.run

chaos: install
	$(BIN)/python -m pytest -q -m chaos tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
