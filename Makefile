# Two-command Quick start: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
PYTEST_WORKERS ?= 2    # pytest-xdist workers for `make test` (each test runs torch on one thread)

.PHONY: install demo test test-slow bench clean

install:
	bash tools/install.sh --venv $(VENV)

demo: install
	cd egs/mini_espeak/speechlm1 && ./run.sh

test: install
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS) tests

test-slow: install
	$(PY) -m pytest -q -m slow --run-slow tests

# Every benchmark, then docs/PERFORMANCE.md (BENCH_ARGS=--quick: small shapes, under 5 minutes).
BENCH_ARGS ?=
bench: install
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info
