# wattmeter: the two commands are `make demo` and `make test`; each sets up what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
CACHE_DIR ?= $(or $(WATTMETER_CACHE_DIR),$(HOME)/.cache/wattmeter)
WEED := $(CACHE_DIR)/bin/weed
LOCK := requirements.lock
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv

.PHONY: demo test bench install lock lint system-deps browser-deps stripe-mock seaweedfs broker-start broker-stop clean

## install: the virtualenv holds exactly the versions in requirements.lock (uv pip sync), then wattmeter itself
$(STAMP): pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found: install Python 3.10+"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) pip sync --quiet --python $(PY) $(LOCK)
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

## lock: resolve pyproject.toml's dependencies again (newest allowed versions) into requirements.lock, one
## universal lock for every CPython 3.10+ and platform; commit it, and every machine installs the same versions
lock:
	@test -x $(UV) || { $(PYTHON) -m venv $(VENV) && $(PY) -m pip install --quiet uv==$(UV_VERSION); }
	$(UV) pip compile pyproject.toml --extra dev --universal --python-version 3.10 --upgrade --quiet -o $(LOCK)

## system-deps: apt only for what is missing: the PostgreSQL server the tests start (deploy/local/postgres.py);
## WeasyPrint's libraries (pango, fonts) for the PDF statements
system-deps:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "make: installing the PostgreSQL server with apt-get"; \
		$(SUDO) apt-get update -qq && { $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 \
			|| $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }; \
	else echo "make: PostgreSQL 15+ server binaries (initdb) not found and there is no apt-get: install PostgreSQL 15+"; exit 2; fi
	@missing=""; \
	ls /usr/lib/*/libpango-1.0.so.0 /usr/lib64/libpango-1.0.so.0 /usr/lib/libpango-1.0.so.0 2>/dev/null | grep -q . || missing="$$missing libpango-1.0-0"; \
	ls /usr/lib/*/libpangoft2-1.0.so.0 /usr/lib64/libpangoft2-1.0.so.0 /usr/lib/libpangoft2-1.0.so.0 2>/dev/null | grep -q . || missing="$$missing libpangoft2-1.0-0"; \
	ls /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf >/dev/null 2>&1 || missing="$$missing fonts-dejavu-core"; \
	if [ -z "$$missing" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "make: installing with apt-get:$$missing (PDF statements: WeasyPrint)"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "make: missing$$missing and there is no apt-get: install pango 1.44+ and the DejaVu fonts"; exit 2; fi

## browser-deps: Debian's Chromium, only for the browser tests (Playwright drives /usr/bin/chromium with
## executable_path and never downloads a browser); `make demo` does not need it
browser-deps:
	@if test -x /usr/bin/chromium; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "make: installing Debian's chromium with apt-get (browser tests)"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "make: /usr/bin/chromium missing and there is no apt-get: install Chromium at /usr/bin/chromium"; exit 2; fi

## stripe-mock: Stripe's official mock (Go) at the version pinned in deploy/local/stripe_peers.py, built once
## into the cache with `go install` (like the Kafka jars); the tests start it
stripe-mock: $(STAMP)
	@command -v go >/dev/null || test -n "$$WATTMETER_STRIPE_MOCK" || { echo "make: go not found: install Go 1.22+ (https://go.dev/dl/) to build stripe-mock"; exit 2; }
	@$(PY) -m deploy.local.stripe_peers stripe-mock-path >/dev/null

## seaweedfs: the S3-compatible object store the tests and the bench start (deploy/local/s3_store.py), built once
## into the cache at the version pinned there; its go.mod has a replace directive, so `go install` refuses it and
## the build is `go mod download` + `go build` (deploy/local/s3_store.py ensure_weed, about 6 min the first time)
$(WEED):
	@command -v go >/dev/null || { echo "make: go not found: install Go 1.22+ (https://go.dev/dl/) to build SeaweedFS"; exit 2; }
	$(PY) -m deploy.local.s3_store path

seaweedfs: $(STAMP) $(WEED)

## demo: local broker + simulated fleet + Faust worker + Parquet sink + invoices
demo: $(STAMP) system-deps stripe-mock
	$(PY) -m deploy.local.demo

## lint: ruff (format and lint) and mypy (strict on schemas/ and the pure cores)
lint: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m mypy

## test: lint, then the whole suite against real parts started by the suite itself
test: lint system-deps browser-deps stripe-mock $(WEED)
	$(PY) -m pytest -q

## bench: every benchmark; writes bench/results.json and prints a table
bench: $(STAMP) system-deps stripe-mock $(WEED)
	$(PY) -m bench.run

broker-start: $(STAMP)
	$(PY) -m deploy.local.kafka_broker start

broker-stop: $(STAMP)
	$(PY) -m deploy.local.kafka_broker stop

clean:
	rm -rf $(VENV) .wattmeter demo-output .pytest_cache
