# The two commands of the README. Each creates or refreshes the virtual
# environment in .venv first, so a fresh machine needs only Python 3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv demo test

venv:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[cpu,lite,dev]" -e ./tflite

demo: venv
	$(BIN)/python examples/digits.py

test: venv
	$(BIN)/python -m pytest -q tests
