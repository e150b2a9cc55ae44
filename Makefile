# civiscore — two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOME_DIR ?= civiscore-data

.PHONY: demo test lint typecheck check clean examples

$(BIN)/civiscore: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.dev: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@ $(BIN)/civiscore

## demo: synthetic city → ingest → score → stats → a denied check and an explanation
demo: $(BIN)/civiscore
	$(BIN)/civiscore --home $(HOME_DIR) demo

## examples: the policy lab's example reports in docs/examples/ (a few minutes)
examples: $(BIN)/civiscore
	$(BIN)/civiscore simulate --rulebook demo --compare naive --residents 20000 --years 5 \
	    --seed 1 --threads 2 --out docs/examples/demo-vs-naive.html
	$(BIN)/civiscore simulate --rulebook demo --residents 20000 --years 5 --seed 1 --threads 2 \
	    --sweep 'listings[dishonest_judgment_debtor].duration=P6M,P1Y,P2Y,P3Y' \
	    --out docs/examples/sweep-debtor-listing.html

## test: the whole suite (lint and types first, they are cheap)
test: $(VENV)/.dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(VENV)/.dev
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(HOME_DIR) .pytest_cache .mypy_cache .ruff_cache
