# dropforge — set-up and everyday commands. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config.toml
# The CPU build of torch; a bare `torch` requirement can pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: run once demo test lint typecheck unit soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

# Watch the inboxes and generate until Ctrl-C (SIGINT stops gracefully; a second one at once).
run: $(VENV)/.installed
	mkdir -p inbox outbox
	$(BIN)/dropforge run -c $(CONFIG)

# Process what is pending once, print the report and exit.
once: $(VENV)/.installed
	mkdir -p inbox outbox
	$(BIN)/dropforge once -c $(CONFIG)

demo: $(VENV)/.installed
	$(BIN)/python scripts/demo.py

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed
	$(BIN)/mypy

unit: $(VENV)/.installed
	$(BIN)/pytest -q

test: lint typecheck unit

# The long load runs (10,000 files dropped at once) that `make test` leaves out.
soak: $(VENV)/.installed
	$(BIN)/pytest -q -m soak

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
