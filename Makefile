# The two commands of the README: `make demo` and `make test`. Each sets itself up from scratch.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup demo test lint check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install_landmarker.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python scripts/install_landmarker.py
	$(BIN)/pip check
	touch $@

demo: setup
	$(BIN)/python scripts/demo.py out

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy kernel services geometry plugins facelib outputs evaluation facerecon
	$(BIN)/python scripts/lint_imports.py

check: lint test

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
