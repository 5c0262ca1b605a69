# The two set-up commands of the README. Both are idempotent: they create or reuse .venv, install the Debian
# and Python packages the project needs (scripts/setup.sh), then do their job.
VENV ?= .venv
RUN_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: setup demo test lint typecheck bench

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/laionet demo --run-dir $(RUN_DIR)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy laionet

test: lint typecheck
	$(VENV)/bin/pytest $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python benchmarks/bench_matching.py
