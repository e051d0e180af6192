# Two entry points for a fresh machine: `make repro` and `make test`. Both set up .venv if missing.
# Everything make runs finds the project's environment first on PATH, so `dvc repro`'s stage
# commands (`python -m experiments.stages.<stage>`) run in .venv from any shell, activated or not.
VENV := $(CURDIR)/.venv
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
unexport PYTHONPATH PYTHONHOME

.PHONY: setup repro results results-ablation results-global results-onnx test lint bench gpu-check clean-venv

setup:
	@bash tools/setup_env.sh

repro: setup
	@dvc repro

# The CPU results profile (params.yaml `results`, profile cpu): 2 to 3.5 hours on 2 cores; run it
# again after an interruption to continue. Outputs in reports/cpu/.
results: setup
	@dvc repro prepare
	@python -m experiments.stages.results

# The S4M ablations on the same recipe, reports/cpu/ablation.md: the scales x d_state x S4/S4D
# grid (8 cells) and the global-layer axis (5 cells); run again after an interruption to continue
results-ablation: setup
	@dvc repro prepare
	@python -m experiments.stages.results --ablation grid

results-global: setup
	@dvc repro prepare
	@python -m experiments.stages.results --ablation global

# The results models (first seed each) exported to ONNX, with int8's SI-SDRi cost on weights
# that separate: reports/cpu/onnx.{csv,md}
results-onnx: setup
	@python -m experiments.stages.export --results

test: setup
	@python -m pytest -q -n 2 --durations=20

lint: setup
	@ruff check .

bench: setup
	@python -m experiments.stages.speed kernels

# On a GPU machine: every model trained (fp32, bf16/fp16 autocast), evaluated and timed on CUDA.
# Uses $(PYTHON) (default python3) and the wheels of tools/fetch_gpu_wheels.sh; see the README.
gpu-check:
	@bash tools/gpu_check.sh

clean-venv:
	rm -rf $(VENV)
