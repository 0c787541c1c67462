# The two commands of the README: `make demo` and `make test`. Each sets itself up from scratch.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

VALIDATOR = scripts/gltf-validator

.PHONY: setup demo test lint check clean gltf-validator

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install_landmarker.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python scripts/install_landmarker.py
	$(BIN)/pip check
	touch $@

# The Khronos glTF validator (npm gltf-validator, locked in its package-lock.json) the tests run on every .glb.
gltf-validator: $(VALIDATOR)/node_modules/.package-lock.json

$(VALIDATOR)/node_modules/.package-lock.json: $(VALIDATOR)/package-lock.json
	@if command -v npm >/dev/null; then cd $(VALIDATOR) && npm ci --no-audit --no-fund; \
	else echo "npm not found: the glTF validator's tests will skip (under CI they fail)"; fi

demo: setup
	$(BIN)/python scripts/demo.py out

test: setup gltf-validator
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy kernel services geometry plugins facelib outputs facerecon
	$(BIN)/python scripts/lint_imports.py

check: lint test

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
