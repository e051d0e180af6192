# Two entry points for a fresh machine: `make repro` and `make test`. Both set up .venv if missing.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup repro test lint bench gpu-check clean-venv

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

# On a GPU machine: every model trained (fp32, bf16/fp16 autocast), evaluated and timed on CUDA.
# Uses $(PYTHON) (default python3) and the wheels of tools/fetch_gpu_wheels.sh; see the README.
gpu-check:
	@bash tools/gpu_check.sh

clean-venv:
	rm -rf $(VENV)
