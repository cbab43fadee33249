# One command per task. `make run` and `make test` set up the virtualenv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

.PHONY: setup run test check lint typecheck imports protos protos-check chart-schema chart-schema-check perf-table perf-table-check unit component bench bench-smoke soak clean

# `make run` installs what serving needs and grpcurl (extra `tools`); `make test` and the
# other targets add the development tools (extra `dev`) to the same virtualenv.
$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[tools]'
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP) $(RUN_STAMP)

setup: $(STAMP)

run: $(RUN_STAMP)        ## serve the embedded demo registry on 127.0.0.1:15051 (no dev tools)
	$(BIN)/mcpserver serve

test: check              ## everything CI runs: static checks, then the whole test suite
	$(BIN)/pytest

check: lint typecheck imports protos-check chart-schema-check perf-table-check

lint: $(STAMP)
	$(BIN)/ruff check mcpserver tests scripts bench testbed
	$(BIN)/ruff format --check mcpserver tests scripts bench testbed

typecheck: $(STAMP)
	$(BIN)/mypy

imports: $(STAMP)
	$(BIN)/lint-imports

protos: $(STAMP)         ## regenerate generated/ from protos/
	$(BIN)/python scripts/gen_protos.py

protos-check: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check

chart-schema: $(STAMP)   ## regenerate the chart's values.schema.json `config` from the settings models
	$(BIN)/python scripts/gen_chart_schema.py

chart-schema-check: $(STAMP)
	$(BIN)/python scripts/gen_chart_schema.py --check

perf-table: $(STAMP)     ## regenerate docs/performance.md's table from docs/bench/results.json
	$(BIN)/python scripts/gen_perf_table.py

perf-table-check: $(STAMP)
	$(BIN)/python scripts/gen_perf_table.py --check

unit: $(STAMP)
	$(BIN)/pytest -m unit

component: $(STAMP)
	$(BIN)/pytest -m component

# Cold start stops at 10k for now: 50k adds ~12 min today (the suite's own default is 1k/10k/50k;
# `make bench BENCH_ARGS=` runs it, `BENCH_ARGS="--parts a,e --scales 50000"` adds just that).
BENCH_ARGS ?= --scales 1000,10000
bench: $(STAMP)           ## issues 17 and 23's suite (~20 min): docs/bench/{results.json,README.md,*.png}
	$(BIN)/python -m bench.suite --out docs/bench $(BENCH_ARGS); status=$$?; \
		$(BIN)/python scripts/gen_perf_table.py && exit $$status

bench-smoke: $(STAMP)     ## the suite at tiny scale (~75 s), as the test suite runs it
	$(BIN)/pytest tests/component/test_bench_smoke.py

# issue 16's soak: 10 minutes of churn, 16 clients and istiod; SOAK_ARGS="--seed N --out DIR"
soak: $(STAMP)            ## 10-minute soak: exact final views, RSS slope, no leaked tasks/threads/fds
	$(BIN)/python -m tests.resilience.soak --minutes 10 $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
