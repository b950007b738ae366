# Two entry points: `make demo` and `make test`. Both create .venv and install into it once;
# the stamp file makes a second run skip the install unless pyproject.toml changed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo-output
export HF_HUB_OFFLINE := 1

.PHONY: install demo test lint clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/defectscan demo $(DEMO)

lint: $(STAMP)
	$(BIN)/ruff check pipeline worker producer tests bench
	$(BIN)/ruff format --check pipeline worker producer tests bench
	$(BIN)/mypy pipeline worker producer

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(DEMO) .pytest_cache .mypy_cache .ruff_cache
