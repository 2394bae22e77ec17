# wattmeter: the two commands are `make demo` and `make test`; each sets up what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench install broker-start broker-stop clean

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

## test: the whole suite against a real Kafka broker started by the suite itself
test: $(STAMP)
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
