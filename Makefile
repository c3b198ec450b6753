# `make demo` and `make test` each do the whole set-up on a fresh machine, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test docs lint bench clean

$(STAMP): pyproject.toml constraints-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned to the CPU build, so the package's torch range installs nothing more
	$(BIN)/pip install --quiet -c constraints-dev.txt torch
	$(BIN)/pip install --quiet -c constraints-dev.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/xrecon demo --out xrecon-demo

# the docs first, so that pytest's summary is the last line printed; the tests on every core (pytest-xdist),
# a test file per worker so that module fixtures are built once (a bare `pytest` runs them in one process)
test: $(STAMP)
	$(MAKE) --no-print-directory docs
	$(BIN)/python -m pytest -q -n auto --dist loadfile

# the documentation site, warnings as errors (make test builds it too, so it cannot rot)
docs: $(STAMP)
	rm -rf docs/_build docs/generated
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

lint: $(STAMP)
	$(BIN)/ruff check xrecon tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/fill_classical.py

clean:
	rm -rf $(VENV) xrecon-demo .pytest_cache .hypothesis docs/_build docs/generated docs/examples
