# Two-command Quick start: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test test-slow bench clean

install:
	bash tools/install.sh --venv $(VENV)

demo: install
	cd egs/mini_espeak/speechlm1 && ./run.sh

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

test-slow: install
	$(PY) -m pytest -q -m slow --run-slow tests

bench: install
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info
