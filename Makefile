# clerk-convex-relay: the two commands of the README, and the steps behind them.
#   make run    create the venv, install, start the relay (SQLite default)
#   make test   install everything the tests need, lint, type-check, run every test
# Everything installs itself: a fresh machine (or CI) needs nothing done by hand.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test install install-test system-deps node-deps lint typecheck alert-rules pytest bench docs clean

$(BIN)/relay: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -e .
	@touch $@

install: $(BIN)/relay

## The relay's main job, on the embedded SQLite default (./data/relay.db).
run: install
	$(BIN)/relay serve

$(VENV)/.test-deps: pyproject.toml $(BIN)/relay
	$(PIP) install -q -e '.[test]'
	@touch $@

install-test: $(VENV)/.test-deps

## Debian packages the tests drive: Chromium (console), podman/runc/debootstrap
## (container smoke test), PostgreSQL (already on these images; installed if missing),
## promtool from Debian's prometheus package (the alert rules' tests).
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v podman >/dev/null || missing="$$missing podman"; \
	command -v runc >/dev/null || missing="$$missing runc"; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

emulator/node_modules/.package-lock.json: emulator/package-lock.json
	npm ci --prefix emulator --no-audit --no-fund --loglevel=error
examples/convex/node_modules/.package-lock.json: examples/convex/package-lock.json
	npm ci --prefix examples/convex --no-audit --no-fund --loglevel=error

node-deps: emulator/node_modules/.package-lock.json examples/convex/node_modules/.package-lock.json

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

typecheck: install-test node-deps
	$(BIN)/mypy
	npm run --prefix examples/convex --silent typecheck
	npm run --prefix emulator --silent typecheck

## The Prometheus alert rules operators load (deploy/prometheus), against their unit tests.
alert-rules: system-deps
	promtool check rules deploy/prometheus/relay-alerts.yml
	cd deploy/prometheus && promtool test rules relay-alerts.test.yml

pytest: install-test node-deps system-deps
	scripts/with-postgres.sh $(BIN)/python -m pytest -q $(PYTEST_ARGS)

## The README's test command: what CI runs.
test: lint typecheck alert-rules pytest

bench: install-test
	$(BIN)/python bench/ingest.py

## The README's configuration table, rendered from relay/settings.py's VARIABLES.
docs: install
	$(BIN)/python scripts/render-config-table.py

clean:
	rm -rf $(VENV) emulator/node_modules examples/convex/node_modules .pytest_cache .mypy_cache .ruff_cache
