# Everything a developer or CI needs: `make demo`, `make test`, `make bench`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo demo-core test lint typecheck bench soak clean

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

# The fault and abuse suite, long (not in CI): each soak test runs SOAK_SECONDS, hypothesis fuzzes 10,000
# examples per property, and an old onnxruntime (in its own venv: its numpy pin would break the main one)
# shows that the external-data checks do not depend on onnxruntime. Figures: stdout and $(SOAK_RESULTS).
SOAK_SECONDS ?= 30
SOAK_RESULTS ?= soak-results.jsonl
OLD_ORT_VENV ?= .venv-ort-old
OLD_ORT_STAMP := $(OLD_ORT_VENV)/.installed

$(OLD_ORT_STAMP):
	$(PYTHON) -m venv $(OLD_ORT_VENV)
	$(OLD_ORT_VENV)/bin/python -m pip install --quiet "onnxruntime==1.17.3" "numpy<2" "onnx==1.16.2" \
		cachetools opentelemetry-api
	touch $(OLD_ORT_STAMP)

soak: install $(OLD_ORT_STAMP)
	rm -f $(SOAK_RESULTS)
	SOAK_SECONDS=$(SOAK_SECONDS) SOAK_RESULTS=$(SOAK_RESULTS) HYPOTHESIS_PROFILE=soak \
	INPROCSERVE_OLD_ORT_PYTHON=$(OLD_ORT_VENV)/bin/python \
	$(BIN)/python -m pytest -s --timeout=3600 tests/soak tests/test_fuzz.py \
		integrations/flask/tests/test_flask_hostile_input.py integrations/django/tests/test_django_hostile_input.py \
		$(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/coalescing.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/telemetry_overhead.py
	$(BIN)/python benchmarks/performance.py

clean:
	rm -rf $(VENV) $(OLD_ORT_VENV) .pytest_cache .mypy_cache .ruff_cache
