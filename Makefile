# Everything a developer or CI needs: `make demo`, `make test`, `make bench`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages that tests drive as real external tools: chromium (and its fonts) for the status page's
# browser tests, prometheus (with promtool) for the metrics tests, redis-server for the queue consumer.
# `make system-deps` installs the missing ones when run as root; otherwise those tests skip.
DEBIAN_PACKAGES := prometheus chromium fonts-dejavu-core redis-server

DIST ?= dist

.PHONY: install system-deps mlserver-venv kserve-venv otel-instrumentation-venv demo demo-core test lint typecheck bench bench-quick docs-screenshot clean dist soak oldest pythons pythons-found

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

# MLServer, the Open Inference Protocol server the remote backend is tested against, pins protobuf and grpc
# versions that would break the main venv, so it lives in its own; tests/test_remote_mlserver.py starts it
# (INPROCSERVE_MLSERVER_PYTHON) and skips, naming this target, when it is absent.
MLSERVER_VENV ?= .venv-mlserver
MLSERVER_STAMP := $(MLSERVER_VENV)/.installed

# When PyPI cannot be reached the venv is removed again, so those tests skip (naming this target) instead
# of failing the whole run.
$(MLSERVER_STAMP):
	@{ $(PYTHON) -m venv $(MLSERVER_VENV) \
		&& $(MLSERVER_VENV)/bin/python -m pip install --quiet "mlserver>=1.6" "onnxruntime>=1.17.3" "numpy>=1.24" \
		&& touch $(MLSERVER_STAMP); } \
		|| { rm -rf $(MLSERVER_VENV); echo "mlserver-venv: could not install MLServer; tests/test_remote_mlserver.py skips"; }

mlserver-venv: $(MLSERVER_STAMP)

# KServe's own Python model server (kserve.ModelServer) and client (InferenceRESTClient), the second Open Inference
# Protocol implementation the remote backend and the plug-ins' v2 endpoints are tested against, in a venv of its
# own for the same reason (its protobuf, grpcio and fastapi pins); tests/test_remote_kserve*.py use it
# (INPROCSERVE_KSERVE_PYTHON) and skip, naming this target, when it is absent or PyPI could not be reached.
KSERVE_VENV ?= .venv-kserve
KSERVE_STAMP := $(KSERVE_VENV)/.installed

$(KSERVE_STAMP):
	@{ $(PYTHON) -m venv $(KSERVE_VENV) \
		&& $(KSERVE_VENV)/bin/python -m pip install --quiet "kserve==0.21.0" "onnxruntime>=1.17.3" "numpy>=1.24" \
		&& touch $(KSERVE_STAMP); } \
		|| { rm -rf $(KSERVE_VENV); echo "kserve-venv: could not install KServe; tests/test_remote_kserve*.py skip"; }

kserve-venv: $(KSERVE_STAMP)

# The OpenTelemetry instrumentations of Flask, Django and ASGI (opentelemetry-python-contrib) pin exact API and
# semantic-convention versions, so they and the SDK of the `otel` extra must come from one release family: one
# pip command, as docs/otel-instrumentation.md says, into a venv of their own (the main venv takes the newest SDK).
# tests/test_otel_instrumentation.py runs docs/otel/*_check.py there (INPROCSERVE_OTEL_INSTRUMENTATION_PYTHON)
# and skips, naming this target, when it is absent or PyPI could not be reached.
OTELINST_VENV ?= .venv-otelinst
OTELINST_STAMP := $(OTELINST_VENV)/.installed

$(OTELINST_STAMP): pyproject.toml integrations/flask/pyproject.toml integrations/django/pyproject.toml
	@rm -rf $(OTELINST_VENV)
	@{ $(PYTHON) -m venv $(OTELINST_VENV) \
		&& $(OTELINST_VENV)/bin/python -m pip install --quiet "./[otel]" ./integrations/flask ./integrations/django \
			opentelemetry-instrumentation-flask opentelemetry-instrumentation-django opentelemetry-instrumentation-asgi \
		&& touch $(OTELINST_STAMP); } \
		|| { rm -rf $(OTELINST_VENV); echo "otel-instrumentation-venv: could not install the instrumentations; tests/test_otel_instrumentation.py skips"; }

otel-instrumentation-venv: $(OTELINST_STAMP)

# Three pytest processes (pytest-xdist), each given whole files: most tests wait on a child process, a socket
# or a timer, so two of them left the project's 2-core machine idle a third of the time (128 % of a core busy:
# pytest 15.3 min with 2, 10.9 min with 3 at 181 %, back to back, the same 1,185 s of CPU, all passing at 3).
# TEST_WORKERS=0 runs the suite in one process (12.5 min against 7.9 with 2 on an earlier suite).
TEST_WORKERS ?= 3
test: system-deps lint typecheck $(MLSERVER_STAMP) $(KSERVE_STAMP) $(OTELINST_STAMP)
	INPROCSERVE_MLSERVER_PYTHON=$(MLSERVER_VENV)/bin/python INPROCSERVE_KSERVE_PYTHON=$(KSERVE_VENV)/bin/python \
	INPROCSERVE_OTEL_INSTRUMENTATION_PYTHON=$(OTELINST_VENV)/bin/python \
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The fault and abuse suite, long (not in CI): each soak test runs SOAK_SECONDS, hypothesis fuzzes 10,000
# examples per property, and an old onnxruntime (in its own venv: its numpy pin would break the main one)
# shows that the external-data checks do not depend on onnxruntime. Figures: stdout and $(SOAK_RESULTS).
# 224 tests at the default SOAK_SECONDS: 18.5 and 16 minutes on a 2-core machine busy with other work besides
# (2026-12-07, load average 4 to 6), among them the HTTP fuzzing's properties (1,000 examples each), a status
# page of 2,000 real models (about 25 s; 200 in `make test`) and the public status of 1,000 versions (about
# 25 s; 100 in `make test`).
SOAK_SECONDS ?= 30
# Tests that provoke a rare race repeat it a few dozen times in `make test` and several times more here
# (tests/conftest.py: race_rounds).
LONG_RACE_TESTS := \
	tests/test_fleet_hardening.py::test_a_revision_that_loads_the_version_it_makes_stable_never_sends_a_request_to_another \
	tests/test_fleet_hardening.py::test_a_revision_that_promotes_the_canary_never_sends_its_users_to_the_old_stable_version \
	tests/test_fleet_hardening.py::test_an_outcome_by_key_during_a_promotion_is_credited_by_one_state \
	tests/test_telemetry_recording.py::test_a_child_forked_while_the_recording_thread_records_can_record \
	tests/test_concurrent_walks.py::test_status_and_readiness_while_the_answering_version_reloads
SOAK_RESULTS ?= soak-results.jsonl
OLD_ORT_VENV ?= .venv-ort-old
OLD_ORT_STAMP := $(OLD_ORT_VENV)/.installed

$(OLD_ORT_STAMP):
	$(PYTHON) -m venv $(OLD_ORT_VENV)
	$(OLD_ORT_VENV)/bin/python -m pip install --quiet "onnxruntime==1.17.3" "numpy<2" "onnx==1.16.2" \
		cachetools opentelemetry-api
	touch $(OLD_ORT_STAMP)

# A uWSGI older than 2.0.27 (Python threads off by default), compiled from source (a C compiler and Python's
# headers), for the test that EAGER fails the start there naming --enable-threads.
OLD_UWSGI_VENV ?= .venv-uwsgi-old
OLD_UWSGI_STAMP := $(OLD_UWSGI_VENV)/.installed

$(OLD_UWSGI_STAMP):
	$(PYTHON) -m venv $(OLD_UWSGI_VENV)
	$(OLD_UWSGI_VENV)/bin/python -m pip install --quiet "uwsgi==2.0.23"
	touch $(OLD_UWSGI_STAMP)

soak: install $(OLD_ORT_STAMP) $(OLD_UWSGI_STAMP)
	rm -f $(SOAK_RESULTS)
	SOAK_SECONDS=$(SOAK_SECONDS) SOAK_RESULTS=$(SOAK_RESULTS) HYPOTHESIS_PROFILE=soak \
	INPROCSERVE_OLD_ORT_PYTHON=$(abspath $(OLD_ORT_VENV))/bin/python \
	INPROCSERVE_TEST_UWSGI_BEFORE_2_0_27=$(abspath $(OLD_UWSGI_VENV))/bin/uwsgi \
	INPROCSERVE_TEST_TASK_QUEUES_SOAK=1 INPROCSERVE_TEST_LONG_RACES=1 \
	$(BIN)/python -m pytest -s --timeout=3600 tests/soak tests/test_fuzz.py tests/test_http_fuzz.py tests/test_celery.py \
		integrations/flask/tests/test_flask_hostile_input.py integrations/django/tests/test_django_hostile_input.py \
		integrations/flask/tests/test_uwsgi.py integrations/flask/tests/test_gunicorn_restarts_under_load.py \
		tests/test_statusweb.py::test_a_real_repository_of_many_models_answers_its_page_and_status \
		tests/test_snapshot_paths.py::test_the_public_status_of_many_versions_hides_every_path \
		$(LONG_RACE_TESTS) $(PYTEST_ARGS)

# The oldest versions the three packages claim to support (requirements/oldest.txt: numpy, onnxruntime,
# opentelemetry, urllib3, onnx, Django 4.2, Flask 2.3 with Werkzeug 2.3 ...), in a venv of their own since
# they would break the main one. `make oldest` runs the plug-ins' suites there (about 3 minutes; not in CI) and
# the core suite's files whose outcome depends on the onnxruntime, numpy or pyarrow release (OLDEST_CORE_TESTS,
# 45 s more: onnxruntime's words for a failed run, its quantizer's kernels, session options, dtypes and text,
# array files; urllib3 2.3's decoding of a compressed answer, which the remote client must bound itself);
# OLDEST_TESTS="tests integrations" runs the whole core suite in one process (its tests took 23 minutes
# together on 2026-12-04; this venv has no pytest-xdist, nor pandas or torch, whose tests skip).
# pip installs the pins together with the three packages, so a pin below a floor of pyproject.toml fails here;
# tests/test_oldest_pins.py keeps them equal.
# The oldest Python too: numpy 1.24 has no wheel for Python 3.12 or later and cannot be built there (no distutils).
OLDEST_PYTHON ?= python3.11
OLDEST_VENV ?= .venv-oldest
OLDEST_STAMP := $(OLDEST_VENV)/.installed
OLDEST_CORE_TESTS := tests/test_oldest_pins.py tests/test_run_failures.py tests/test_made_up_inputs.py \
	tests/test_shapeless_inputs.py tests/test_sessions.py tests/test_session_hardening.py tests/test_pool_options.py \
	tests/test_signature.py tests/test_graph_inputs.py tests/test_input_bounds.py tests/test_text_inputs.py \
	tests/test_value_conversion.py tests/test_v2_codec.py tests/test_batch_independence.py \
	tests/test_scoring_arrow_tables.py tests/test_scoring_io_hardening.py tests/test_cli_score_columns.py \
	tests/test_remotehostile.py
OLDEST_TESTS ?= integrations/flask/tests integrations/django/tests $(OLDEST_CORE_TESTS)

$(OLDEST_STAMP): requirements/oldest.txt pyproject.toml integrations/flask/pyproject.toml integrations/django/pyproject.toml
	rm -rf $(OLDEST_VENV)
	$(OLDEST_PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet -r requirements/oldest.txt \
		-e . -e integrations/flask -e integrations/django
	touch $(OLDEST_STAMP)

oldest: $(OLDEST_STAMP)
	$(OLDEST_VENV)/bin/python -m pytest $(OLDEST_TESTS) $(PYTEST_ARGS)

# The newer Pythons the packages claim (requires-python >= 3.11; `make test` runs the one of $(PYTHON)): the
# whole suite again on 3.12 and 3.13, each in a venv of its own (.venv-py312, .venv-py313) with the newest
# packages pip finds for it (Django 6 needs 3.12, say). Not in CI and not part of `make test` (the suite twice
# more: 40 minutes or so on a 2-core machine). A Python absent from PATH is skipped, saying so; point
# PYTHON312 / PYTHON313 at an interpreter elsewhere (pyenv: PYTHON313=~/.pyenv/versions/3.13.0/bin/python3.13).
PYTHON312 ?= python3.12
PYTHON313 ?= python3.13
PYTHONS_TESTS ?=
# (found when `make pythons` runs: a name on PATH or a path that starts a Python; a pyenv shim on PATH for
# a version that pyenv has but has not selected is on PATH and fails when run, so it counts as absent)
PYTHONS_FOUND = $(strip $(foreach v,313 312,$(if $(shell "$(PYTHON$(v))" -c pass >/dev/null 2>&1 && echo yes),$(v))))
PYTHONS_MISSING = $(filter-out $(PYTHONS_FOUND),313 312)

.PRECIOUS: .venv-py%/.installed  # (made by a pattern rule: kept, not removed as an intermediate file)
.venv-py%/.installed: pyproject.toml integrations/flask/pyproject.toml integrations/django/pyproject.toml
	rm -rf .venv-py$*
	$(PYTHON$*) -m venv .venv-py$*
	.venv-py$*/bin/python -m pip install --quiet --upgrade pip
	.venv-py$*/bin/python -m pip install --quiet -e '.[dev]' -e integrations/flask -e integrations/django
	touch $@

# 3.13 first (the further from 3.11); the first suite that fails stops make, as any target's failure does:
# `make -k pythons` runs the other one too.
pythons: pythons-found
	@$(if $(PYTHONS_FOUND),,echo "pythons: neither $(PYTHON313) nor $(PYTHON312) found (or starts): nothing ran")

pythons-found:
	@$(foreach v,$(PYTHONS_MISSING),echo "pythons: $(PYTHON$(v)) not found (or it does not start), so Python $(v:3%=3.%) is skipped (set PYTHON$(v)=/path/to/python$(v:3%=3.%))";)
	@$(if $(PYTHONS_FOUND),$(MAKE) --no-print-directory $(foreach v,$(PYTHONS_FOUND),pythons-$(v)),true)

pythons-%: .venv-py%/.installed
	.venv-py$*/bin/python -V
	.venv-py$*/bin/python -m pytest $(PYTHONS_TESTS) $(PYTEST_ARGS)

# Every benchmark of docs/performance.md and docs/batching.md, each writing benchmarks/results/NAME.{json,md}
# (and .png where a plot helps). The figures need a quiet machine: run nothing else meanwhile.
# BENCH_QUICK=1 runs each one briefly, to prove that the harnesses work; its figures are noise, and it
# overwrites the result files, so do not commit them. BENCH_ARGS: extra arguments for coalescing.py.
# http_e2e.py installs LitServe (its out-of-process baseline) into .venv-bench-litserve on first use.
BENCH_QUICK ?=
ifneq ($(BENCH_QUICK),)
QUICK_coalescing := --seconds 0.5 --rounds 1 --clients 1,8
QUICK_direct_lanes := --seconds 0.5 --rounds 1 --clients 8
QUICK_batch_cycle := --seconds 0.5 --rounds 1
QUICK_batch_delay := --seconds 0.3 --rounds 1 --clients 8 --rates 1000 --delays-us 0,300
QUICK_pinned_workers := --seconds 0.3 --rounds 1 --threads 8
QUICK_padding := --seconds 0.3 --rounds 1 --clients 4
QUICK_predict_overhead := --blocks 4
QUICK_short_runs := --seconds 0.3 --rounds 1 --clients 1,8
QUICK_feature_overhead := --blocks 2 --block 200
QUICK_flag_overhead := --blocks 2 --block 100
QUICK_plugin_overhead := --blocks 4
QUICK_in_request := --blocks 2 --block 100
QUICK_telemetry_overhead := --seconds 0.5 --rounds 1
QUICK_telemetry_profile := --calls 2000
QUICK_async_callers := --seconds 0.5 --rounds 1 --modes off
QUICK_status_recorder := --number 20000 --repeat 3
QUICK_control_follow := --rounds 1 --workers 2
QUICK_shadow_overhead := --seconds 0.5 --rounds 1
QUICK_protocol_overhead := --rounds 1 --requests 50
QUICK_deadlines := --seconds 0.5 --rounds 1 --trials 5
QUICK_batch_scoring := --quick --rounds 1
QUICK_classifier_scoring := --rows 20000 --rounds 1
QUICK_pruning := --seconds 0.5
QUICK_cpu_quota := --seconds 0.5 --rounds 1 --clients 1
QUICK_http_e2e := --quick
QUICK_remote_client := --quick
QUICK_remote := --quick
endif

bench: install
	$(BIN)/python benchmarks/coalescing.py $(QUICK_coalescing) $(BENCH_ARGS)
	$(BIN)/python benchmarks/coalescing.py --otel $(QUICK_coalescing) $(BENCH_ARGS)
	$(BIN)/python benchmarks/coalescing.py --spinning $(QUICK_coalescing) $(BENCH_ARGS)
	$(BIN)/python benchmarks/direct_lanes.py $(QUICK_direct_lanes)
	$(BIN)/python benchmarks/batch_cycle.py $(QUICK_batch_cycle)
	$(BIN)/python benchmarks/batch_delay.py $(QUICK_batch_delay)
	$(BIN)/python benchmarks/pinned_workers.py --threads 1,8,64 --rounds 3 --naive $(QUICK_pinned_workers)
	$(BIN)/python benchmarks/pinned_workers.py --model mlp-large --threads 1,8,64 --rounds 2 --naive $(QUICK_pinned_workers)
	$(BIN)/python benchmarks/padding.py $(QUICK_padding)
	$(BIN)/python benchmarks/predict_overhead.py $(QUICK_predict_overhead)
	$(BIN)/python benchmarks/short_runs.py $(QUICK_short_runs)
	$(BIN)/python benchmarks/short_runs.py --otel $(QUICK_short_runs)
	$(BIN)/python benchmarks/feature_overhead.py $(QUICK_feature_overhead)
	$(BIN)/python benchmarks/flag_overhead.py $(QUICK_flag_overhead)
	$(BIN)/python benchmarks/plugin_overhead.py $(QUICK_plugin_overhead)
	$(BIN)/python benchmarks/plugin_overhead.py --headers $(QUICK_plugin_overhead)
	$(BIN)/python benchmarks/in_request.py $(QUICK_in_request)
	$(BIN)/python benchmarks/telemetry_overhead.py $(QUICK_telemetry_overhead)
	$(BIN)/python benchmarks/telemetry_profile.py $(QUICK_telemetry_profile)
	$(BIN)/python benchmarks/async_callers.py $(QUICK_async_callers)
	$(BIN)/python benchmarks/async_callers.py --timeout-s 10 $(QUICK_async_callers)
	$(BIN)/python benchmarks/performance.py
	$(BIN)/python benchmarks/cpu_quota.py $(QUICK_cpu_quota)
	$(BIN)/python benchmarks/status_recorder.py $(QUICK_status_recorder)
	$(BIN)/python benchmarks/control_follow.py $(QUICK_control_follow)
	$(BIN)/python benchmarks/shadow_overhead.py $(QUICK_shadow_overhead)
	$(BIN)/python benchmarks/protocol_overhead.py $(QUICK_protocol_overhead)
	$(BIN)/python benchmarks/deadlines.py $(QUICK_deadlines)
	$(BIN)/python benchmarks/batch_scoring.py $(QUICK_batch_scoring)
	$(BIN)/python benchmarks/classifier_scoring.py $(QUICK_classifier_scoring)
	$(BIN)/python benchmarks/pruning.py $(QUICK_pruning)
	$(BIN)/python benchmarks/http_e2e.py $(QUICK_http_e2e)
	$(BIN)/python benchmarks/http_e2e.py --otel $(QUICK_http_e2e)
	$(BIN)/python benchmarks/http_e2e.py --stacks flask --variants inprocserve,inprocserve-pinned,naive,naive-pinned --client-cpu -1 $(QUICK_http_e2e)
	$(BIN)/python benchmarks/remote_client.py $(QUICK_remote_client)
	$(BIN)/python benchmarks/remote.py $(QUICK_remote)

bench-quick:
	$(MAKE) bench BENCH_QUICK=1

# Re-take docs/images/status-page.png: the status page of a busy test app, in headless Chromium.
docs-screenshot: install system-deps
	INPROCSERVE_DOCS_SCREENSHOT=1 $(BIN)/python -m pytest -q integrations/flask/tests/test_flask_status_page.py -k screenshot

# Wheels and sdists of inprocserve, inprocserve-flask and inprocserve-django, checked to agree on one version.
dist: install
	rm -rf $(DIST)
	$(BIN)/python tests/dist_build.py $(DIST)

clean:
	rm -rf $(VENV) $(OLD_ORT_VENV) $(OLDEST_VENV) .venv-py312 .venv-py313 $(MLSERVER_VENV) $(KSERVE_VENV) $(OTELINST_VENV) .venv-bench-litserve $(DIST) .pytest_cache .mypy_cache .ruff_cache
