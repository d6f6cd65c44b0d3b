# Quick start: `make demo` runs the built-in example, `make test` runs the test suite.
# Both create .venv at the repo root when it is missing.
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test bench clean

$(VENV)/.base: pyproject.toml requirements/constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -c requirements/constraints.txt -e '.[demo]'
	touch $@

$(VENV)/.test: $(VENV)/.base pyproject.toml
	$(PIP) install -q -c requirements/constraints.txt -e '.[test]'
	touch $@

demo: $(VENV)/.base
	$(PY) examples/demo.py

test: $(VENV)/.test
	$(PY) -m pytest -q -n 2

bench: $(VENV)/.base
	$(PY) -m benchmarks.memory_and_time --repeat 2

clean:
	rm -rf demo-output .pytest_cache
