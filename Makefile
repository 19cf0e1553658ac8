# Two commands on a fresh machine:
#   make run    create .venv, install, run the whole pipeline on the embedded default
#   make test   install the dev extras and run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/kexue run

test: $(STAMP)
	$(BIN)/pytest -q

clean:
	rm -rf data .pytest_cache
