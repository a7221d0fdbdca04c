# Two commands matter: `make run` (the gateway on its embedded demo) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed

.PHONY: run test check lint typecheck trial system-deps clean chaos fuzz

$(STAMP): setup.cfg setup.py pyproject.toml relaygate/smtp/_scan.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

## Start the gateway in the foreground on 127.0.0.1:2525 with the embedded demo backend.
run: $(STAMP)
	$(BIN)/twistd -n --pidfile= relaygate -c etc/demo.toml

## Install everything the tests need, then run the tests, the linter and the type checker.
test: $(STAMP) system-deps
	$(BIN)/trial --temp-directory=/tmp/relaygate-trial-$$$$ tests
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/twistd relaygate --help > /dev/null
	$(BIN)/twistd relaygate --check -c etc/relaygate.toml
	$(BIN)/twistd relaygate --check -c etc/seed-nginx.toml

trial: $(STAMP)
	$(BIN)/trial tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

## The fault-injection soak (docs/reliability.md): make chaos SEED=7 MESSAGES=2000 CONCURRENCY=20
SEED ?=
MESSAGES ?= 2000
CONCURRENCY ?= 20
DURATION ?= 600
MAX_SIZE ?= 1048576
FUZZ_SECONDS ?= 60
chaos: $(STAMP)
	$(BIN)/python bench/chaos.py $(if $(SEED),--seed $(SEED)) --messages $(MESSAGES) \
		--concurrency $(CONCURRENCY) --duration $(DURATION) --max-size $(MAX_SIZE)

## The fuzz run (docs/reliability.md): make fuzz SEED=7 FUZZ_SECONDS=300
fuzz: $(STAMP)
	$(BIN)/python bench/fuzz.py $(if $(SEED),--seed $(SEED)) --seconds $(FUZZ_SECONDS)

system-deps:
	scripts/install-system-deps

clean:
	rm -rf $(VENV) _trial_temp* *.egg-info build var
