# Everything a developer or CI needs: `make demo`, `make test`, `make bench`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages that tests drive as real external tools: chromium (and its fonts) for the status page's
# browser tests, prometheus (with promtool) for the metrics tests. `make system-deps` installs the missing ones
# when run as root; otherwise those tests skip.
DEBIAN_PACKAGES := prometheus chromium fonts-dejavu-core

.PHONY: install system-deps demo demo-core test lint typecheck bench docs-screenshot clean

$(STAMP): pyproject.toml integrations/flask/pyproject.toml integrations/django/pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m pip install --quiet -e integrations/flask -e integrations/django
	touch $(STAMP)

install: $(STAMP)

system-deps:
	@missing=""; \
	for package in $(DEBIAN_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$package 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$package"; \
	done; \
	if [ -z "$$missing" ]; then \
		echo "system-deps: $(DEBIAN_PACKAGES) already installed"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "system-deps: no apt-get on this system; install$$missing yourself, or the tests that need them skip"; \
	elif [ "$$(id -u)" != 0 ]; then \
		echo "system-deps: not root, so not installing$$missing; run: sudo apt-get install -y$$missing (until then the tests that need them skip)"; \
	else \
		echo "system-deps: installing$$missing"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; } \
			|| echo "system-deps: apt-get could not install$$missing (the tests that need them skip)"; \
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
	$(BIN)/python benchmarks/async_callers.py
	$(BIN)/python benchmarks/performance.py
	$(BIN)/python benchmarks/status_recorder.py

# Re-take docs/images/status-page.png: the status page of a busy test app, in headless Chromium.
docs-screenshot: install system-deps
	INPROCSERVE_DOCS_SCREENSHOT=1 $(BIN)/python -m pytest -q integrations/flask/tests/test_flask_status_page.py -k screenshot
	$(BIN)/python benchmarks/control_follow.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
