# Everything a developer or CI needs: `make demo`, `make test`, `make bench`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages that some tests drive (each such test skips, saying why, when its package is missing).
DEBIAN_PACKAGES := prometheus

.PHONY: install system-deps demo demo-core test lint typecheck bench clean

$(STAMP): pyproject.toml integrations/flask/pyproject.toml integrations/django/pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m pip install --quiet -e integrations/flask -e integrations/django
	touch $(STAMP)

install: $(STAMP)

# Installs the missing DEBIAN_PACKAGES with apt-get when run as root on a Debian-like system; otherwise
# (or if apt-get fails) it says what to install, and the tests that need those packages skip.
system-deps:
	@missing=""; \
	for package in $(DEBIAN_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$package" 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$package"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "system-deps: apt-get install$$missing"; \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; } \
			|| echo "system-deps: apt-get failed; tests that need$$missing will skip"; \
	else \
		echo "system-deps: not installing$$missing (needs root and apt-get); tests that need them will skip." \
			"Install with: sudo apt-get install$$missing"; \
	fi

demo: install
	$(BIN)/python examples/flask_fraud/run.py

demo-core: install
	$(BIN)/python examples/demo.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

test: system-deps lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/coalescing.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/telemetry_overhead.py
	$(BIN)/python benchmarks/performance.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
