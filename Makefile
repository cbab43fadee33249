# One command per task. `make run` and `make test` set up the virtualenv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test check lint typecheck imports protos protos-check unit component bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)            ## serve the embedded demo registry on 127.0.0.1:15051
	$(BIN)/mcpserver serve

test: check              ## everything CI runs: static checks, then the whole test suite
	$(BIN)/pytest

check: lint typecheck imports protos-check

lint: $(STAMP)
	$(BIN)/ruff check mcpserver tests scripts bench
	$(BIN)/ruff format --check mcpserver tests scripts bench

typecheck: $(STAMP)
	$(BIN)/mypy

imports: $(STAMP)
	$(BIN)/lint-imports

protos: $(STAMP)         ## regenerate generated/ from protos/
	$(BIN)/python scripts/gen_protos.py

protos-check: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check

unit: $(STAMP)
	$(BIN)/pytest -m unit

component: $(STAMP)
	$(BIN)/pytest -m component

bench: $(STAMP)           ## benchmarks; figures are ratios to baselines measured in the same run
	$(BIN)/python -m bench.snapshot
	$(BIN)/python -m bench.zookeeper

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
