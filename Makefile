# `make demo` and `make test` each do the whole set-up on a fresh machine, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml constraints-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned to the CPU build, so the package's torch range installs nothing more
	$(BIN)/pip install --quiet -c constraints-dev.txt torch
	$(BIN)/pip install --quiet -c constraints-dev.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/xrecon demo --out xrecon-demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check xrecon tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/fill_classical.py

clean:
	rm -rf $(VENV) xrecon-demo .pytest_cache .hypothesis
