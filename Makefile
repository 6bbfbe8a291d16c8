# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install chromium clean mutation format

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m rc2l demo

# Lint and format check first (ruff; settings in pyproject.toml), then the suite, which also checks
# the import layers, function and class length (tests/test_layers.py). `make format` fixes what ruff can.
# Two pytest workers (pytest-xdist), one torch thread each (tests/conftest.py): the suite took 12.0
# min in one process and about half that in two on a 2-core AVX2 EPYC (docs/benchmarks.md, "Test
# suite time"). TEST_JOBS=1 on a busy machine.
LINTED := rc2l tests scripts benchmarks tools
TEST_JOBS ?= 2
test: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/python -m pytest -q --timeout 900 -n $(TEST_JOBS) --durations=30 tests

# Mutation testing of the losses, methods, teacher and the trainer's step (not part of `make test`):
# rewrites the "Mutation score" section of docs/reliability.md. MUTATION_JOBS=1 on a busy machine.
MUTATION_JOBS ?= 2
mutation: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python tools/mutation.py --jobs $(MUTATION_JOBS)

# Headless Chromium for tests/test_report.py (the report page is rendered and every image checked).
# Idempotent: installs only when /usr/bin/chromium is missing; sudo only when not root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@if [ -x /usr/bin/chromium ]; then echo "chromium: /usr/bin/chromium present"; else \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; fi

format: $(STAMP)
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/ruff format $(LINTED)

clean:
	rm -rf $(VENV) runs
