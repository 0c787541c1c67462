# The two commands of the README: `make demo` and `make test`. Each sets itself up from scratch.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

VALIDATOR = scripts/gltf-validator

.PHONY: setup viewer demo test lint check clean gltf-validator

setup: viewer $(VENV)/.installed

# The viewer's JavaScript (`facerecon view`): three.js from npm + outputs/viewer/app.js, one bundle (esbuild)
# that the Python package carries as data; never committed. Needs Node.js 18+: without npm it is skipped
# with a warning (the rest of facerecon works; `facerecon view` then says how to build it).
VIEWER_BUNDLE = outputs/viewer/static/viewer.bundle.js
viewer:
	@if command -v npm >/dev/null 2>&1; then $(MAKE) -s --no-print-directory $(VIEWER_BUNDLE); \
	else echo "make viewer: npm (Node.js 18+) not found, the viewer's JavaScript is not built"; fi

# --ignore-scripts: no package needs one (esbuild finds its binary in its @esbuild/<platform> package).
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts

$(VIEWER_BUNDLE): node_modules/.package-lock.json outputs/viewer/app.js
	npm run build --silent

$(VENV)/.installed: pyproject.toml setup.py scripts/install_landmarker.py
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
	$(BIN)/mypy kernel services geometry plugins facelib outputs evaluation facerecon
	$(BIN)/python scripts/lint_imports.py

check: lint test

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache node_modules outputs/viewer/static
