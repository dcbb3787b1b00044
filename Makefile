# The two commands of the README: `make up` and `make test`.
# Everything they need is installed here, from PyPI, into .tools/ and .venv/.

UV_VERSION := 0.13.8
PYTHON ?= python3
UV := .tools/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: up test test-unit lint typecheck pytest optimize bench clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

# The lock file is the source of truth; --frozen refuses to drift from it.
$(VENV)/.synced: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --all-extras --python $(PYTHON)
	touch $@

## up: the whole service in the foreground (Redis, embedded LM, worker, API, Flower)
up: $(VENV)/.synced
	$(VENV)/bin/python -m stack.up

## test: every check: lint, types, then the whole test suite
test: lint typecheck pytest

lint: $(VENV)/.synced
	$(UV) lock --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(VENV)/.synced
	$(VENV)/bin/mypy

pytest: $(VENV)/.synced
	bash tests/browser/install.sh
	$(VENV)/bin/python -m pytest

## test-unit: the tests that start no process (seconds; `make test` runs them too)
test-unit: $(VENV)/.synced
	$(VENV)/bin/python -m pytest -m "not e2e" -q

## bench: every benchmark, side by side with the direct-call baseline; writes BENCHMARKS.md
bench: $(VENV)/.synced
	$(VENV)/bin/python -m bench

## optimize: rebuild artifacts/qa.json with the configured LM
optimize: $(VENV)/.synced
	$(VENV)/bin/python -m program.optimize qa

clean:
	rm -rf .tools $(VENV) .run test-artifacts .pytest_cache .mypy_cache .ruff_cache
