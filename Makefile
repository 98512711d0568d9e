# Development entry points. `make run` and `make test` are the whole set-up on a
# fresh machine: they create .venv, install the project, and do the rest.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
# Extra arguments for pytest, e.g. `make test PYTEST_ARGS='-k jwks -x'`.
PYTEST_ARGS ?=
# pytest-xdist processes, each file whole on one of them (its servers and fixtures are
# started once): the suite spends much of its time waiting on servers, browsers and
# subprocesses. TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2
# Set to 1 to treat pytest's "no tests collected" (exit 5) as success (CI uses it).
ALLOW_NO_TESTS ?=

.PHONY: help .venv run test lint openapi bench clean distclean

help:
	@echo "Targets:"
	@echo "  make run        create .venv, migrate, create keys and the dev client, serve on http://$(HOST):$(PORT)"
	@echo "  make test       create .venv, make sure Chromium, PgBouncer and Node.js are there, run the test suite (PYTEST_ARGS='...')"
	@echo "  make lint       ruff check + mypy --strict provider and resource/"
	@echo "  make openapi    regenerate the committed OpenAPI document"
	@echo "  make bench      run the benchmarks (bench/run.sh)"
	@echo "  make .venv      create/refresh the virtualenv (re-installs when pyproject.toml changes)"
	@echo "  make clean      remove caches and build artefacts (keeps .venv, provider.db and keys/)"
	@echo "  make distclean  clean, and remove .venv too"

# The virtualenv is (re)installed when pyproject.toml is newer than the stamp.
# `python3 -m venv` is only run when there is no usable interpreter in .venv, so an
# existing environment is never wiped.
# The resource-server verifier (resource/, a distribution of its own) is installed beside
# it, editable: its tests run in the main suite against a real provider process.
$(STAMP): pyproject.toml resource/pyproject.toml
	@test -x $(VENV)/bin/python || { echo "==> creating $(VENV) with $$(command -v $(PYTHON))"; $(PYTHON) -m venv $(VENV); }
	@echo "==> installing the project into $(VENV) (pip install -e '.[dev]' -e './resource[fastapi]')"
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-input -e '.[dev]' -e './resource[fastapi]'
	@touch $(STAMP)

.venv: $(STAMP)

run: .venv
	$(VENV)/bin/provider migrate
	$(VENV)/bin/provider keys generate --if-missing
	$(VENV)/bin/provider clients ensure-dev
	$(VENV)/bin/provider serve --host $(HOST) --port $(PORT)

test: .venv
	@bash scripts/ensure-chromium.sh
	@bash scripts/ensure-pgbouncer.sh
	@bash scripts/ensure-node.sh
	@rc=0; $(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS) \
		|| rc=$$?; \
	if [ $$rc -eq 5 ] && [ "$(ALLOW_NO_TESTS)" = 1 ]; then \
		echo "!!! pytest collected no tests (exit 5); ALLOW_NO_TESTS=1, so this counts as success"; \
		rc=0; \
	fi; \
	exit $$rc

lint: .venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --strict provider
	$(VENV)/bin/mypy --strict resource/src resource/examples

openapi: .venv
	$(VENV)/bin/provider openapi --write

bench: .venv
	bash bench/run.sh

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache bench/results
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
