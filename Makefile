# wattmeter: the two commands are `make demo` and `make test`; each sets up what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench install lint broker-start broker-stop clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found: install Python 3.10+"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## demo: local broker + simulated fleet + Faust worker + Parquet sink + invoices
demo: $(STAMP)
	$(PY) -m deploy.local.demo

## lint: ruff (format and lint) and mypy (strict on schemas/ and the pure cores)
lint: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m mypy

## test: lint, then the whole suite against real parts started by the suite itself
test: lint
	$(PY) -m pytest -q

## bench: every benchmark; writes bench/results.json and prints a table
bench: $(STAMP)
	$(PY) -m bench.run

broker-start: $(STAMP)
	$(PY) -m deploy.local.kafka_broker start

broker-stop: $(STAMP)
	$(PY) -m deploy.local.kafka_broker stop

clean:
	rm -rf $(VENV) .wattmeter demo-output .pytest_cache
