# Everything sets itself up: a local virtual environment with pinned installs (requirements.lock).
# On these CPU machines `torch==2.13.0` resolves to the CPU build; an unpinned torch pulls GBs of CUDA packages.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Small-model tests and demos run much faster single-threaded on a shared 2-core machine.
RUN := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: help setup test lint demo bench clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with the pinned dependencies

test: $(STAMP)  ## run the test-suite (offline, CPU, tiny models) and the linter
	$(RUN) $(BIN)/python -m pytest -q
	$(BIN)/ruff check hf_tokcomp tests benchmarks

lint: $(STAMP)  ## ruff check + format check
	$(BIN)/ruff check hf_tokcomp tests benchmarks
	$(BIN)/ruff format --check hf_tokcomp tests benchmarks

demo: $(STAMP)  ## one compressed generate call on a tiny Qwen2-VL built in code
	$(RUN) $(BIN)/python -m hf_tokcomp.demo

bench: $(STAMP)  ## speed, memory, FLOPs vs stock and FastV (scaled-down Qwen2-VL-2B, CPU, ~15 min)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/speed.py --batch8-visual-tokens 256

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
