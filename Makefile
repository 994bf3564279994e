# Two entry points: `make demo` (set up, then run the whole job on the built-in sample data)
# and `make test` (set up if needed, then run the test suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install contract clean

# TORCH_INDEX=https://download.pytorch.org/whl/cpu installs the CPU-only torch first (about 1 GB
# instead of 6 with the CUDA libraries that PyPI's default wheel pulls in).
TORCH_INDEX ?=
TORCH_PINS := "torch>=2.4,<=2.14.1" "torchvision>=0.19,<=0.29.1"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/pip install --quiet --index-url $(TORCH_INDEX) $(TORCH_PINS))
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cellgap demo --out demo-output

test: $(STAMP) lint
	$(BIN)/python -m pytest

# ruff (pycodestyle, pyflakes, isort, bugbear, pyupgrade) over everything; mypy over the package (about 30 s)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

contract: $(STAMP)
	$(BIN)/python ../shared/tools/contract_check.py

clean:
	rm -rf demo-output .pytest_cache
