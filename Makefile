# One command per check; CI (.ci/run) and the README call these same targets.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: install demo test pytest lint typecheck bench bench-fairness bench-cost deploy-check clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: install          ## a real batch, end to end, on this machine
	$(BIN)/batchq demo

test: lint typecheck pytest   ## everything CI runs

pytest: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check batchq workers tests bench
	$(BIN)/ruff format --check batchq workers tests bench

typecheck: install
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench.run

bench-fairness: install  ## small batches behind big ones, tenants sharing the workers
	$(BIN)/python -m bench.fairness

bench-cost: install  ## what a line costs Redis and the worker at 0 ms, and lines/s one Redis core carries
	$(BIN)/python -m bench.line_cost
	$(BIN)/python -m bench.ceiling

deploy-check:          ## build the image, run the compose stack with podman, one batch through it (root, ~4 min)
	bash deploy/check.sh

clean:
	rm -rf $(VENV) batchq-demo batchq-data .pytest_cache .mypy_cache .ruff_cache
