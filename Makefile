# Everything a developer or CI needs: `make demo`, `make test`, `make bench`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo demo-core test lint typecheck bench clean

$(STAMP): pyproject.toml integrations/flask/pyproject.toml integrations/django/pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m pip install --quiet -e integrations/flask -e integrations/django
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python examples/flask_fraud/run.py

demo-core: install
	$(BIN)/python examples/demo.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/coalescing.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/telemetry_overhead.py
	$(BIN)/python benchmarks/performance.py
	$(BIN)/python benchmarks/protocol_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
