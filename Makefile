# The two commands of the README. Each creates or refreshes the virtual
# environment in .venv first, so a fresh machine needs only Python 3. The
# edge package keras_slicing_lite is its own distribution (./tflite), which
# the host package requires: both are installed from the checkout.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv backends demo test docs

# The tests also run the library on JAX and PyTorch. PyPI's PyTorch for Linux
# is a CUDA build of several GB; pip takes the 2.13.0 CPU build where a local
# wheel of it is on pip's find-links path (as on this project's machines and
# CI), so it is installed first, pinned; elsewhere set TORCH to a CPU build.
TORCH ?= torch==2.13.0

venv:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e "./tflite[serve]" -e ".[cpu,dev,docs]"

backends: venv
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[jax,torch]"

demo: venv
	$(BIN)/python examples/digits.py

# The suite is bound by one core per test (tracing, conversion, small
# kernels): two workers, one per core, keeping each test file on one worker
# so that its module fixtures are built once. Then the documentation site is
# built in strict mode, so that a broken link or API reference fails CI.
test: backends
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests
	$(MKDOCS) build --strict --quiet

# The site goes to site/. The material theme prints a notice about its
# successor on every build; the variable silences it.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs

docs: venv
	$(MKDOCS) build --strict
