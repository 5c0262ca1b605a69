# The two set-up commands of the README. Both are idempotent: they create or reuse .venv, install the Debian
# and Python packages the project needs (scripts/setup.sh), then do their job.
VENV ?= .venv
RUN_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: setup demo test lint typecheck bench stress mutate

setup:
	@bash scripts/setup.sh

# The demo runs the Prefect `demo` flow with an ephemeral local API (no server needed); Prefect's home (its SQLite
# database and the task result cache that makes a second run fast) lives beside the run directory; `python -m flows`
# sets the rest of its settings (laionet.core.runtime.PREFECT_DEFAULTS, as `laionet run` does).
PREFECT_HOME_DIR ?= $(abspath $(dir $(RUN_DIR)).prefect)

demo: setup
	@mkdir -p $(PREFECT_HOME_DIR)
	PREFECT_HOME=$(PREFECT_HOME_DIR) $(VENV)/bin/python -m flows demo --run-dir $(RUN_DIR)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy laionet

test: lint typecheck
	$(VENV)/bin/pytest $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python benchmarks/bench_matching.py

# the kill harness of tests/test_rerun.py with 100 kill points per stage on 20x larger inputs (minutes)
stress: setup
	LAIONET_STRESS=1 $(VENV)/bin/pytest -q tests/test_rerun.py

# mutation testing ([tool.mutmut] in pyproject.toml: the statistics, selection and 22k->1k label-map modules against a
# fixed list of their test files; scratch copy in mutants/); prints the killed share
mutate: setup
	$(VENV)/bin/pip install -q "mutmut>=3.3"
	$(VENV)/bin/mutmut run --max-children 2 || true
	$(VENV)/bin/python scripts/mutation_score.py
