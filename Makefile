# Two commands on a fresh machine:
#   make run    create .venv, install, run the whole pipeline on the embedded default
#   make test   install the dev extras and run the test suite (what CI runs; prints the 25 slowest)
#   make test-fast   the same without the long integration tests (marked slow): a quick check
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/kexue run

test: $(STAMP)
	$(BIN)/pytest -q --durations=25

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow" --durations=10

clean:
	rm -rf data .pytest_cache
