# ccdflow: the two commands of the README, and the pieces they are made of.
#   make demo   install (virtual env from envs/ pins), reduce a generated night, summarise
#   make test   install the dev tools too, lint, check formatting, run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export PYTHONPATH := $(CURDIR)/scripts
export PATH := $(CURDIR)/$(BIN):$(PATH)
LINT_DIR := .lint

.PHONY: demo test lint format check pytest install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: envs/requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r envs/requirements.txt
	touch $@

$(VENV)/.dev: envs/requirements-dev.txt $(VENV)/.runtime
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r envs/requirements-dev.txt
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

demo: install
	$(BIN)/python -m ccdflow demo --workdir demo

# snakemake --lint needs a parseable workflow, hence a tiny generated night.
lint: install-dev
	rm -rf $(LINT_DIR) && $(BIN)/python -m ccdflow.demo $(LINT_DIR)/night --preset test >/dev/null
	$(BIN)/snakemake --lint --directory $(LINT_DIR) --config raw_dir=$(CURDIR)/$(LINT_DIR)/night/raw
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf $(LINT_DIR)

format: install-dev
	$(BIN)/snakefmt Snakefile workflow/rules
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

pytest: install-dev
	$(BIN)/python -m pytest

test: lint pytest

clean:
	rm -rf $(VENV) $(LINT_DIR) demo .pytest_cache .ruff_cache
