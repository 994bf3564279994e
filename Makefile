# Two entry points: `make demo` (set up, then run the whole job on the built-in sample data)
# and `make test` (set up if needed, then run the test suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install contract clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cellgap demo --out demo-output

test: $(STAMP)
	$(BIN)/python -m pytest

contract: $(STAMP)
	$(BIN)/python ../shared/tools/contract_check.py

clean:
	rm -rf demo-output .pytest_cache
