# One command per check; CI (.ci/run) and the README call these same targets.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

LOCK   = requirements/dev.lock
LATEST = .venv-latest
# uv resolves the locks (universal: every platform and Python >= 3.11; hashes of every file); pip installs them.
UV_COMPILE = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
             --custom-compile-command "make lock" pyproject.toml requirements/build.in

.PHONY: install lock test-latest demo test pytest lint typecheck bench bench-fairness bench-cost deploy-check clean

install: $(VENV)/.installed   ## .venv with exactly the locked versions (hashes checked), the project editable

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

lock: install          ## resolve the newest versions pyproject.toml allows into the locks (then: make test)
	$(UV_COMPILE) --upgrade --extra monitor -o requirements/runtime.lock
	$(UV_COMPILE) --upgrade --extra dev -c requirements/runtime.lock -o $(LOCK)

test-latest:           ## the tests on the newest releases the ranges allow, not the lock: a breaking release fails here
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]"
	touch $(LATEST)/.installed
	$(MAKE) VENV=$(LATEST) lint typecheck pytest

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
	rm -rf $(VENV) $(LATEST) batchq-demo batchq-data .pytest_cache .mypy_cache .ruff_cache
