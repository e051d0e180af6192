# Two entry points for a fresh machine: `make repro` and `make test`. Both set up .venv if missing.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup repro test lint bench clean-venv

setup:
	@bash tools/setup_env.sh

repro: setup
	@$(BIN)/dvc repro

test: setup
	@$(BIN)/python -m pytest -q

lint: setup
	@$(BIN)/ruff check .

bench: setup
	@$(BIN)/python -m experiments.bench_s4m

clean-venv:
	rm -rf $(VENV)
