# Everything a developer or CI needs: `make demo`, `make test`, `make bench`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DIST ?= dist
# Debian packages some tests need (redis-server: the queue consumer example); `make system-deps` installs them.
DEBIAN_PACKAGES := redis-server

.PHONY: install demo demo-core test lint typecheck bench clean dist system-deps

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

# Installs the missing DEBIAN_PACKAGES when run as root with apt-get; otherwise says what is missing (the
# tests that need them skip, naming the package).
system-deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "system-deps: cannot install $$missing (needs root and apt-get); the tests that need them skip"; \
		exit 0; \
	fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing

test: lint typecheck system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/coalescing.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/telemetry_overhead.py
	$(BIN)/python benchmarks/performance.py

# Wheels and sdists of inprocserve, inprocserve-flask and inprocserve-django, checked to agree on one version.
dist: install
	rm -rf $(DIST)
	$(BIN)/python tests/dist_build.py $(DIST)

clean:
	rm -rf $(VENV) $(DIST) .pytest_cache .mypy_cache .ruff_cache
